"""The run grid: a protocol (with ``--set`` overrides) expanded into one resolved run config
per (scenario, method, seed), each with the cache key that names its stored result."""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import yaml

from ..config import parse_config, set_key
from ..errors import ConfigError
# Keys that change how a run executes, not what it computes (device, threads, tracking,
# checkpoint): left out of the cache key, and overriding them does not make a protocol "modified".
from ..runfolder import EXECUTION_KEYS
from .protocol import Protocol, merge

CACHE_VERSION = 1


@dataclass
class RunSpec:
    scenario: str
    method: str
    seed: int
    config: dict              # resolved (every default filled in), ready for lifelong.runner.run
    key: str                  # hash of the resolved config without the execution keys

    @property
    def label(self) -> str:
        return f"{self.scenario}/{self.method}/seed {self.seed}"


def _without_nulls(obj):
    if isinstance(obj, dict):
        return {k: _without_nulls(v) for k, v in obj.items() if v is not None}
    return obj


def config_key(config: dict) -> str:
    """sha256 of the resolved config minus :data:`EXECUTION_KEYS` and minus unset (null) keys,
    with a cache format version. Dropping nulls keeps the key of every finished run when a new
    optional config key (default null) joins the schema, so such releases do not void caches."""
    core = {k: v for k, v in _without_nulls(config).items() if k not in EXECUTION_KEYS}
    blob = json.dumps({"v": CACHE_VERSION, "config": core}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Override:
    key: str
    value: Any
    method: Optional[str] = None   # None: every run

    @property
    def text(self) -> str:
        return f"{self.method + ':' if self.method else ''}{self.key}={json.dumps(self.value)}"

    @property
    def execution_only(self) -> bool:
        return self.key.split(".")[0] in EXECUTION_KEYS


def parse_override(text: str) -> Override:
    """``KEY=VALUE`` (every run) or ``METHOD:KEY=VALUE`` (that method's runs); VALUE is YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE or METHOD:KEY=VALUE, got '{text}'")
    left, value = text.split("=", 1)
    method = None
    if ":" in left:
        method, left = (s.strip() for s in left.split(":", 1))
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    return Override(left.strip(), parsed, method)


def _select(requested: Optional[Iterable[str]], allowed: list[str], default: list[str], what: str) -> list[str]:
    if not requested:
        return list(default)
    out = []
    for r in requested:
        if r not in allowed:
            raise ConfigError(f"unknown {what} '{r}' for this protocol; allowed: {', '.join(allowed)}")
        if r not in out:
            out.append(r)
    return out


def seed_list(protocol: Protocol, seeds: Optional[int | Iterable[int]] = None) -> list[int]:
    """A count N means the protocol's first N seeds (``first_seed`` ..); a list is taken as is."""
    if seeds is None:
        seeds = protocol.seeds
    if isinstance(seeds, int):
        if seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {seeds}")
        return list(range(protocol.first_seed, protocol.first_seed + seeds))
    return [int(s) for s in seeds]


def expand(protocol: Protocol, seeds: Optional[int | Iterable[int]] = None,
           scenarios: Optional[Iterable[str]] = None, methods: Optional[Iterable[str]] = None,
           overrides: Iterable[Override] = ()) -> list[RunSpec]:
    """One validated :class:`RunSpec` per (scenario, method, seed), in table order.

    A method runs only in the scenarios it lists (``methods.<m>.scenarios``). A run's config is
    :meth:`Protocol.cell_config`, then the seed's ``seed_configs`` entry, then the overrides,
    then the seed itself."""
    scen = _select(scenarios, protocol.scenarios, protocol.default_scenarios, "scenario")
    meth = _select(methods, protocol.methods, protocol.methods, "method")
    overrides = list(overrides)
    for ov in overrides:
        if ov.method is not None and ov.method not in protocol.methods:
            raise ConfigError(f"--set {ov.text}: unknown method '{ov.method}'; allowed: {', '.join(protocol.methods)}")
    specs = []
    for s in scen:
        for m in meth:
            if s not in protocol.method_scenarios(m):
                continue
            cfg = protocol.cell_config(s, m)
            for sd in seed_list(protocol, seeds):
                c = merge(cfg, protocol.seed_config(sd))
                for ov in overrides:
                    if ov.method in (None, m):
                        set_key(c, ov.key, copy.deepcopy(ov.value))
                c["seed"] = sd
                try:
                    resolved = parse_config(c).to_dict()
                except ConfigError as exc:
                    raise ConfigError(f"protocol {protocol.name}, scenario '{s}', method '{m}': {exc}") from None
                specs.append(RunSpec(s, m, sd, resolved, config_key(resolved)))
    if not specs:
        raise ConfigError("nothing to run: no method of the selection applies to the selected scenarios")
    return specs


def modified_by(protocol: Protocol, specs: list[RunSpec], seeds, scenarios, methods) -> bool:
    """Whether the overrides changed any run config (compared by cache key)."""
    plain = expand(protocol, seeds, scenarios, methods)
    return [s.key for s in plain] != [s.key for s in specs]
