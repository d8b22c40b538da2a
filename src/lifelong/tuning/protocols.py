"""Protocols: which data a study selects on, and where the chosen config is reported.

- ``reality-check`` (Cha & Cho, "Hyperparameters in Continual Learning: A Reality Check"):
  phase 1 tunes on the scenario built from ``tune_on`` (its validation splits); phase 2 trains
  the chosen config, with each seed, on the same kind of scenario built from each ``report_on``
  dataset and reports only phase 2.
- ``current-task``: each ``report_on`` benchmark is tuned on the validation splits of the
  experiences seen so far (the accuracy matrix, and the pruner's intermediate values, on
  validation data; the test splits are removed from every trial's stream), then reported on its
  test splits.
- ``test``: each ``report_on`` benchmark is tuned on its own test splits, the common practice the
  reality check criticises; only with ``--allow-tune-on-test`` and marked ``TUNED ON TEST``
  wherever its numbers appear.

Every selection run of the first two protocols has ``eval.selection: true``: its stream has no
test data at all (:meth:`lifelong.streams.Stream.without_test`).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

from ..config import RunConfig, check_runnable, check_sections, parse_config, set_key
from ..errors import ConfigError
from .space import SearchSpace
from .spec import TuneSpec

TEST_MARK = "TUNED ON TEST"


@dataclass
class Target:
    """One study: the strategy it tunes (None: strategy.name is searched), the config every trial
    starts from, and the phase-2 configs (one per report benchmark, seeds applied later)."""

    strategy: str | None
    tune_label: str
    select_base: dict
    reports: list[tuple[str, dict]] = field(default_factory=list)
    on_test: bool = False


def _label(bench: dict) -> str:
    name = bench.get("name", "split-mnist")
    scen = bench.get("scenario")
    return f"{name}" + (f"-{scen}" if scen else "")


def _digest(bench: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(bench, sort_keys=True).encode()).hexdigest()[:6]


def _with_strategy(base: dict, strategy: str | None) -> dict:
    """``base`` with the strategy named and only the strategy parameters that strategy takes."""
    from ..cli.sweep import strategy_param_names

    d = copy.deepcopy(base)
    section = dict(d.get("strategy") or {})
    name = strategy or section.get("name", "finetune")
    taken = strategy_param_names(name)
    d["strategy"] = {"name": name, **{k: v for k, v in section.items() if k != "name" and k in taken}}
    return d


def _benchmark(base: dict, override: dict | None, val_fraction: float) -> dict:
    bench = {**(base.get("benchmark") or {}), **(override or {})}
    if not bench.get("val_fraction"):
        bench["val_fraction"] = val_fraction
    return bench


def plan(spec: TuneSpec, space: SearchSpace, strategies: list[str] | None, allow_tune_on_test: bool) -> list[Target]:
    """The studies a spec asks for, every config checked before anything runs."""
    p = spec.protocol
    if p.name == "test" and not allow_tune_on_test:
        raise ConfigError("protocol 'test' selects hyper-parameters on the test sets it reports, which inflates "
                          "the numbers (Cha & Cho's reality check); it runs only with --allow-tune-on-test, and its "
                          "results are marked TUNED ON TEST. Use reality-check or current-task for honest numbers")
    base = copy.deepcopy(spec.base)
    check_sections(base)
    if space.strategy_choice is not None:
        if strategies:
            raise ConfigError("strategy.name is in the search space; --strategy cannot also be given")
        names: list[str | None] = [None]
    else:
        names = list(strategies or [(base.get("strategy") or {}).get("name", "finetune")])
        twice = sorted({s for s in names if names.count(s) > 1})
        if twice:
            raise ConfigError(f"--strategy lists '{twice[0]}' twice")
    unknown = sorted(set(space.conditional) - set(n for n in names if n) - set(space.strategies_in_search()))
    if unknown and space.strategy_choice is not None:
        raise ConfigError(f"strategies.{unknown[0]}: not among the strategy.name choices "
                          f"{space.strategies_in_search()}")
    reports = p.report_on or [base.get("benchmark") or {}]
    labels = [_label(r) for r in reports]
    labels = [lab if labels.count(lab) == 1 else f"{lab}-{_digest(r)}" for lab, r in zip(labels, reports)]
    if len(set(labels)) != len(labels):
        raise ConfigError("protocol.report_on lists the same benchmark twice")
    targets = []
    for name in names:
        if p.name == "reality-check":
            targets.append(Target(name, _label(p.tune_on), _selection(base, name, p.tune_on, p.val_fraction, True),
                                  [(lab, _report(base, name, r, p.val_fraction)) for lab, r in zip(labels, reports)]))
        else:
            on_test = p.name == "test"
            for lab, r in zip(labels, reports):
                targets.append(Target(name, lab, _selection(base, name, r, p.val_fraction, not on_test),
                                      [(lab, _report(base, name, r, p.val_fraction))], on_test))
    checked = []
    for t in targets:
        for strategy in ([t.strategy] if t.strategy else space.strategies_in_search()):
            checked.append(_check(t.select_base, space, strategy))
            checked += [_check(cfg, space, strategy) for _, cfg in t.reports]
    from ..runner import preflight

    preflight(checked)  # what a run checks against its stream too (budgets per experience, ...), before any trial
    return targets


def _selection(base: dict, strategy, bench: dict | None, val_fraction: float, selection: bool) -> dict:
    d = _with_strategy(base, strategy)
    d["benchmark"] = _benchmark(base, bench, val_fraction)
    d.setdefault("eval", {})
    d["eval"]["selection"] = True if selection else None
    return d


def _report(base: dict, strategy, bench: dict | None, val_fraction: float) -> dict:
    """Phase 2 trains on the same training data as the trials (the validation part held out)."""
    d = _with_strategy(base, strategy)
    d["benchmark"] = _benchmark(base, bench, val_fraction)
    d.setdefault("eval", {})
    d["eval"]["selection"] = None
    return d


def apply(config: dict, values: dict) -> dict:
    """A trial's config: ``config`` with the sampled values set (``strategy.name`` first, keeping
    only the base strategy parameters the chosen strategy takes)."""
    d = copy.deepcopy(config)
    if "strategy.name" in values:
        d = _with_strategy({**d, "strategy": {**d.get("strategy", {}), "name": values["strategy.name"]}}, None)
    for k, v in values.items():
        if k != "strategy.name":
            set_key(d, k, v)
    return d


def _check(config: dict, space: SearchSpace, strategy: str) -> RunConfig:
    """Every key of the space is accepted by the run config (with a value inside the space): the
    config, with the space's midpoint, checked as a run checks it before any data loads."""
    values = {p.key: p.midpoint() for p in space.for_strategy(strategy)}
    if space.strategy_choice is not None:
        values["strategy.name"] = strategy
    try:
        cfg = parse_config(apply(config, values))
    except ConfigError as exc:
        raise ConfigError(f"the search space does not fit strategy '{strategy}': {exc}") from None
    check_runnable(cfg)
    return cfg


def fingerprint_spec(spec: TuneSpec) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
