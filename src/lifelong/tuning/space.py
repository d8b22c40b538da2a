"""Search spaces: what ``lifelong tune`` may vary, read from YAML, sampled by Optuna.

A space maps dotted config keys to a distribution::

    space:
      train.lr: {low: 0.001, high: 0.3, log: true}     # float (log scale)
      train.batch_size: {choices: [32, 64, 128]}       # categorical
      strategy.mem_size: {low: 100, high: 1000, step: 100}   # int (both bounds integers)
    strategies:                                        # conditionals: only when tuning that strategy
      ewc: {strategy.ewc_lambda: {low: 1.0, high: 1.0e6, log: true}}

``strategy.name: {choices: [ewc, si]}`` puts the strategy itself in the search; the conditional
entries of the chosen one are then sampled in the same trial (define-by-run).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError


def _number(value, where: str):
    """YAML 1.1 reads ``1e-3`` as a string: accept it as the number it is."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None


@dataclass(frozen=True)
class Param:
    """One dimension: ``kind`` is float, int or categorical."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None

    @classmethod
    def parse(cls, key: str, spec: Any) -> "Param":
        where = f"search space key '{key}'"
        if not isinstance(key, str) or not key or "." not in key and key != "seed":
            raise ConfigError(f"{where}: a dotted config key is needed, e.g. train.lr or strategy.ewc_lambda")
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: give a mapping, e.g. {{low: 0.001, high: 0.1, log: true}} or "
                              f"{{choices: [32, 64]}}, not {spec!r}")
        allowed = {"low", "high", "log", "step", "choices"}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ConfigError(f"{where}: unknown field '{unknown[0]}'; allowed: {', '.join(sorted(allowed))}")
        if "choices" in spec:
            extra = sorted(set(spec) - {"choices"})
            if extra:
                raise ConfigError(f"{where}: 'choices' cannot be combined with '{extra[0]}'")
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{where}: 'choices' must be a non-empty list")
            if any(not isinstance(c, (str, int, float, bool)) and c is not None for c in choices):
                raise ConfigError(f"{where}: choices must be numbers, strings, booleans or null "
                                  "(Optuna stores only those)")
            if len(set(map(repr, choices))) != len(choices):
                raise ConfigError(f"{where}: a choice is listed twice")
            return cls(key, "categorical", choices=tuple(choices))
        if "low" not in spec or "high" not in spec:
            raise ConfigError(f"{where}: give 'low' and 'high' (a range) or 'choices' (a list)")
        low, high = _number(spec["low"], f"{where}, low"), _number(spec["high"], f"{where}, high")
        step = None if spec.get("step") is None else _number(spec["step"], f"{where}, step")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{where}: 'log' must be true or false, got {log!r}")
        if not all(math.isfinite(v) for v in (low, high)):
            raise ConfigError(f"{where}: low and high must be finite numbers")
        if not low < high:
            raise ConfigError(f"{where}: low ({low}) must be below high ({high})")
        if log and low <= 0:
            raise ConfigError(f"{where}: a log-scale range needs low > 0, got {low}")
        if step is not None and (step <= 0 or log):
            raise ConfigError(f"{where}: 'step' must be > 0 and cannot be combined with log: true")
        is_int = all(isinstance(v, int) for v in (low, high)) and (step is None or float(step).is_integer())
        if is_int:
            return cls(key, "int", int(low), int(high), log, None if step is None else int(step))
        return cls(key, "float", float(low), float(high), log, None if step is None else float(step))

    def suggest(self, trial):
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def grid_values(self) -> list:
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int" and not self.log:
            return list(range(self.low, self.high + 1, self.step or 1))
        raise ConfigError(f"the grid sampler needs every dimension to be a list: '{self.key}' is a "
                          f"{'log-scale ' if self.log else ''}{self.kind} range; give it as {{choices: [...]}}")

    def midpoint(self):
        """A value inside the space (for checking, before any trial, that the key is accepted)."""
        if self.kind == "categorical":
            return self.choices[0]
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        return int(round(mid)) if self.kind == "int" else mid


@dataclass
class SearchSpace:
    params: list[Param]
    conditional: dict[str, list[Param]]  # strategy name -> its own parameters

    @classmethod
    def parse(cls, space: dict | None, strategies: dict | None) -> "SearchSpace":
        space, strategies = space or {}, strategies or {}
        if not isinstance(space, dict):
            raise ConfigError("the tune spec's 'space' must be a mapping of config keys to ranges")
        if not isinstance(strategies, dict) or any(not isinstance(v, dict) for v in strategies.values()):
            raise ConfigError("the tune spec's 'strategies' must map strategy names to mappings of config keys "
                              "to ranges, e.g. strategies: {ewc: {strategy.ewc_lambda: {low: 1, high: 1e6, log: true}}}")
        params = [Param.parse(k, v) for k, v in space.items()]
        conditional = {name: [Param.parse(k, v) for k, v in entries.items()] for name, entries in strategies.items()}
        for name, ps in conditional.items():
            for p in ps:
                if p.key == "strategy.name":
                    raise ConfigError(f"strategies.{name}: 'strategy.name' belongs in 'space', not under a strategy")
                if not p.key.startswith("strategy."):
                    raise ConfigError(f"strategies.{name}: '{p.key}' is not a strategy parameter; put shared keys "
                                      "(train.*, model.*) under 'space'")
        return cls(params, conditional)

    @property
    def strategy_choice(self) -> Param | None:
        return next((p for p in self.params if p.key == "strategy.name"), None)

    def for_strategy(self, name: str) -> list[Param]:
        """The dimensions of a study of one strategy: the shared ones and that strategy's own."""
        return [p for p in self.params if p.key != "strategy.name"] + self.conditional.get(name, [])

    def sample(self, trial, strategy: str | None) -> dict[str, Any]:
        """Define-by-run: the shared dimensions, then the chosen strategy's conditionals."""
        values = {}
        choice = self.strategy_choice
        if choice is not None:
            strategy = values["strategy.name"] = choice.suggest(trial)
        for p in self.for_strategy(strategy):
            values[p.key] = p.suggest(trial)
        return values

    def grid(self, strategy: str | None) -> dict[str, list]:
        if self.strategy_choice is not None and self.conditional:
            raise ConfigError("the grid sampler cannot search conditional parameters together with "
                              "strategy.name; tune one strategy per study (--strategy a,b) or use tpe/random")
        ps = ([self.strategy_choice] if self.strategy_choice else []) + self.for_strategy(strategy)
        return {p.key: p.grid_values() for p in ps}

    def strategies_in_search(self) -> list[str]:
        choice = self.strategy_choice
        return [str(c) for c in choice.choices] if choice else []
