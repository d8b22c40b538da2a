"""Protocols: finding, loading and validating a protocol file, and the config of each cell.

:func:`load_protocol` refuses a file before anything runs when its structure is wrong (the
schema, :mod:`.schema`) or when one of its RunConfig fragments is (:func:`check_configs`, with
:func:`lifelong.config.parse_config`); either way one :class:`ConfigError` names the file and
the key.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml

from ..config import parse_config
from ..errors import ConfigError
from .schema import ProtocolFile, Tolerance, parse_protocol


def merge(a: dict, b: Optional[dict]) -> dict:
    """``b`` merged into a copy of ``a``, section by section (``b`` wins)."""
    out = copy.deepcopy(a)
    for k, v in (b or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


@dataclass
class Protocol:
    """A validated protocol. ``data`` is the file as written (its citation and published values
    are reported as they stand); ``spec`` is the same, validated, with every default filled in."""
    name: str
    data: dict
    path: Optional[Path] = None
    spec: ProtocolFile = field(default=None, repr=False)  # type: ignore[assignment]

    def __post_init__(self):
        if self.spec is None:
            self.spec = parse_protocol(self.data, str(self.path or self.name))

    @property
    def title(self) -> str:
        return self.spec.title or self.name

    @property
    def scenarios(self) -> list[str]:
        return list(self.spec.scenarios)

    @property
    def default_scenarios(self) -> list[str]:
        return list(self.spec.default_scenarios or self.scenarios)

    @property
    def methods(self) -> list[str]:
        return list(self.spec.methods)

    def label(self, method: str) -> str:
        return self.spec.methods[method].label or method

    @property
    def seeds(self) -> int:
        return self.spec.seeds

    @property
    def first_seed(self) -> int:
        """``seeds: N`` (and ``--seeds N``) run seeds first_seed .. first_seed + N - 1."""
        return self.spec.first_seed

    def seed_config(self, seed: int) -> dict:
        """The RunConfig fragment this seed adds (``seed_configs``), e.g. the paper's class order."""
        return copy.deepcopy((self.spec.seed_configs or {}).get(seed) or {})

    @property
    def metric(self) -> str:
        return self.spec.metric

    @property
    def tolerance(self) -> tuple[float, float]:
        tol = self.spec.tolerance or Tolerance()
        return float(tol.points), float(tol.se_multiplier)

    def method_scenarios(self, method: str) -> list[str]:
        return list(self.spec.methods[method].scenarios or self.scenarios)

    def cell_config(self, scenario: str, method: str) -> dict:
        """``base``, then the scenario's ``config``, the method's ``config`` and the scenario's
        ``method_params`` for the method (into ``strategy``); seeds and overrides come later."""
        sdef = self.spec.scenarios[scenario]
        cfg = merge(self.spec.base, (sdef.config if sdef else None) or {})
        cfg = merge(cfg, self.spec.methods[method].config)
        params = ((sdef.method_params if sdef else None) or {}).get(method) or {}
        return merge(cfg, {"strategy": params})

    # the file's own values, as written
    def published(self, scenario: str, method: str) -> dict:
        cell = ((self.data.get("published") or {}).get(scenario) or {}).get(method) or {}
        return {"mean": cell.get("mean"), "sem": cell.get("sem")}

    def reference(self, scenario: str, method: str) -> Optional[dict]:
        cell = ((self.data.get("reference") or {}).get(scenario) or {}).get(method)
        return dict(cell) if cell else None

    def note(self, scenario: str, method: str) -> Optional[str]:
        return (((self.data.get("notes") or {}).get("cells") or {}).get(scenario) or {}).get(method)


def protocol_dir():
    return resources.files("lifelong") / "protocols"


def available_protocols() -> list[str]:
    """Names of the protocols shipped with the package."""
    return sorted(p.name[: -len(".yaml")] for p in protocol_dir().iterdir() if p.name.endswith(".yaml"))


def load_protocol(name_or_path: str | Path) -> Protocol:
    """A shipped protocol by name, or a protocol file by path; validated (:func:`validate_protocol`)."""
    text = str(name_or_path)
    path = Path(text)
    if text.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise ConfigError(f"protocol file not found: {path}")
        raw, origin, where = path.read_text(), path, str(path)
    else:
        res = protocol_dir() / f"{text}.yaml"
        if not res.is_file():
            raise ConfigError(f"unknown protocol '{text}'; available: {', '.join(available_protocols())} "
                              "(or give a path to a .yaml file)")
        raw, origin, where = res.read_text(), None, f"{text} ({res})"
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"could not parse protocol {where}: {exc}") from None
    spec = validate_protocol(data, where)
    return Protocol(spec.name, data, origin, spec)


def validate_protocol(data: Any, where: str = "protocol") -> ProtocolFile:
    """The whole check: the schema and cross-references (:func:`.schema.parse_protocol`), then
    every RunConfig fragment and every cell's config (:func:`check_configs`)."""
    spec = parse_protocol(data, where)
    check_configs(spec, where)
    return spec


def _checked(cfg: dict, where: str, part: str) -> None:
    try:
        parse_config(cfg)
    except ConfigError as exc:
        raise ConfigError(f"protocol {where}, {part}: {exc}") from None


def _strategy_name_only(fragment: dict) -> dict:
    """``fragment`` with its strategy reduced to the name: strategy parameters are checked per
    cell, where the method's strategy is known."""
    out = copy.deepcopy(fragment)
    strategy = out.pop("strategy", None)
    if not isinstance(strategy, dict):
        if strategy is not None:
            out["strategy"] = strategy  # not a mapping: parse_config says so
    elif "name" in strategy:
        out["strategy"] = {"name": strategy["name"]}
    return out


def check_configs(spec: ProtocolFile, where: str = "protocol") -> None:
    """Validate the RunConfig fragments with the run config schema: each fragment on top of
    ``base`` (the error names the fragment's key in the file), then the config of every
    (scenario, method) cell with the first seed (the error names the scenario and the method)."""
    base = _strategy_name_only(spec.base)
    _checked(base, where, "base")
    fragments = [(f"scenarios.{s}.config", sd.config) for s, sd in spec.scenarios.items() if sd and sd.config]
    fragments += [(f"methods.{m}.config", md.config) for m, md in spec.methods.items()]
    fragments += [(f"seed_configs.{k}", v) for k, v in (spec.seed_configs or {}).items() if v]
    for key, fragment in fragments:
        _checked(merge(base, _strategy_name_only(fragment)), where, key)
    protocol = Protocol(spec.name, {}, spec=spec)
    seed = spec.first_seed
    for s in protocol.scenarios:
        for m in protocol.methods:
            if s in protocol.method_scenarios(m):
                cfg = merge(protocol.cell_config(s, m), protocol.seed_config(seed))
                cfg["seed"] = seed
                _checked(cfg, where, f"scenario '{s}', method '{m}'")
