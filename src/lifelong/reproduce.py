"""Reproduce a paper's table from a declarative protocol file, and give a verdict per cell.

A protocol (``src/lifelong/protocols/<name>.yaml``, or any YAML file) holds: a citation; ``base``
settings in :class:`~lifelong.config.RunConfig` form; ``scenarios`` (config changes and per-method
hyper-parameters); ``methods``; ``published`` values (mean and s.e.m. per scenario x method);
a ``tolerance``; and ``notes``. See ``docs/protocols.md``.

:func:`expand` turns it into one run config per (scenario, method, seed). :func:`reproduce` runs
the configs that are not in the cache folder yet through an executor
(:func:`lifelong.executor.get_executor`), storing every finished run as one JSON file named after
a hash of its resolved config, so an interrupted reproduction resumes where it stopped and a
changed config is never mistaken for a finished one. Then :func:`summarize` computes, per cell,
our mean and standard error over seeds, the difference to the published value and the verdict:

    PASS  when |ours - published| <= max(points, se_multiplier * SE)   (default 3 points, 2 SE)

where SE is the standard error of *our* mean (sample standard deviation / sqrt(n)); with one seed
only the 3-point rule applies. A cell without a published value gets no verdict (``n/a``).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import yaml

from .config import parse_config, set_key
from .errors import ConfigError

SCENARIOS = ("task", "domain", "class")
# Keys that change how a run executes, not what it computes: left out of the cache key, and
# overriding them does not make a protocol "modified".
EXECUTION_KEYS = ("device", "threads", "tracking")
CACHE_VERSION = 1
PASS, FAIL, NA, MISSING = "PASS", "FAIL", "n/a", "missing"


# ----------------------------------------------------------------------------- protocols
@dataclass
class Protocol:
    name: str
    data: dict
    path: Optional[Path] = None

    @property
    def title(self) -> str:
        return self.data.get("title", self.name)

    @property
    def scenarios(self) -> list[str]:
        return list(self.data["scenarios"])

    @property
    def default_scenarios(self) -> list[str]:
        return list(self.data.get("default_scenarios") or self.scenarios)

    @property
    def methods(self) -> list[str]:
        return list(self.data["methods"])

    @property
    def seeds(self) -> int:
        return int(self.data.get("seeds", 5))

    @property
    def first_seed(self) -> int:
        """``seeds: N`` (and ``--seeds N``) run seeds first_seed .. first_seed + N - 1."""
        return int(self.data.get("first_seed", 0))

    def seed_config(self, seed: int) -> dict:
        """The RunConfig fragment this seed adds (``seed_configs``), e.g. the paper's class order."""
        return copy.deepcopy((self.data.get("seed_configs") or {}).get(seed) or {})

    @property
    def metric(self) -> str:
        return self.data.get("metric", "average_accuracy")

    @property
    def tolerance(self) -> tuple[float, float]:
        tol = self.data.get("tolerance") or {}
        return float(tol.get("points", 3.0)), float(tol.get("se_multiplier", 2.0))

    def method_scenarios(self, method: str) -> list[str]:
        return list(self.data["methods"][method].get("scenarios") or self.scenarios)

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
    """A shipped protocol by name, or a protocol file by path; validated."""
    text = str(name_or_path)
    path = Path(text)
    if text.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise ConfigError(f"protocol file not found: {path}")
        raw, origin = path.read_text(), path
    else:
        res = protocol_dir() / f"{text}.yaml"
        if not res.is_file():
            raise ConfigError(f"unknown protocol '{text}'; available: {', '.join(available_protocols())} "
                              "(or give a path to a .yaml file)")
        raw, origin = res.read_text(), None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"could not parse protocol {origin or text}: {exc}") from None
    validate_protocol(data, str(origin or text))
    return Protocol(data["name"], data, origin)


def _check(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"protocol {where}: {msg}")


def _number_or_none(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def validate_protocol(data: Any, where: str = "protocol") -> None:
    """Check the structure (configs themselves are validated by :func:`expand`)."""
    _check(isinstance(data, dict), where, "must be a mapping")
    for key in ("name", "base", "scenarios", "methods"):
        _check(key in data, where, f"missing key '{key}'")
    _check(isinstance(data["base"], dict), where, "'base' must be a mapping of RunConfig sections")
    scen, meth = data["scenarios"], data["methods"]
    _check(isinstance(scen, dict) and scen, where, "'scenarios' must be a non-empty mapping")
    _check(isinstance(meth, dict) and meth, where, "'methods' must be a non-empty mapping")
    for s, spec in scen.items():
        _check(s in SCENARIOS, where, f"unknown scenario '{s}'; allowed: {', '.join(SCENARIOS)}")
        spec = spec or {}
        _check(isinstance(spec, dict), where, f"scenario '{s}' must be a mapping")
        for m in (spec.get("method_params") or {}):
            _check(m in meth, where, f"scenarios.{s}.method_params names unknown method '{m}'")
    for m, spec in meth.items():
        _check(isinstance(spec, dict) and isinstance(spec.get("config"), dict), where,
               f"method '{m}' needs a 'config' mapping (at least strategy.name)")
        for s in spec.get("scenarios") or []:
            _check(s in scen, where, f"method '{m}' lists scenario '{s}' that the protocol does not define")
    for s in data.get("default_scenarios") or []:
        _check(s in scen, where, f"default_scenarios names unknown scenario '{s}'")
    _check(isinstance(data.get("seeds", 5), int) and data.get("seeds", 5) >= 1, where, "'seeds' must be an int >= 1")
    _check(isinstance(data.get("first_seed", 0), int) and data.get("first_seed", 0) >= 0, where,
           "'first_seed' must be an int >= 0")
    seed_configs = data.get("seed_configs") or {}
    _check(isinstance(seed_configs, dict), where, "'seed_configs' must map seeds to RunConfig fragments")
    for sd, frag in seed_configs.items():
        _check(isinstance(sd, int) and not isinstance(sd, bool) and sd >= 0, where,
               f"seed_configs: key {sd!r} is not a seed (an int >= 0)")
        _check(isinstance(frag, dict), where, f"seed_configs.{sd} must be a mapping of RunConfig sections")
    tol = data.get("tolerance") or {}
    _check(isinstance(tol, dict), where, "'tolerance' must be a mapping (points, se_multiplier)")
    for k in ("points", "se_multiplier"):
        _check(_number_or_none(tol.get(k)) and (tol.get(k) is None or tol[k] >= 0), where,
               f"tolerance.{k} must be a number >= 0")
    for section in ("published", "reference"):
        table = data.get(section) or {}
        _check(isinstance(table, dict), where, f"'{section}' must be a mapping")
        for s, cells in table.items():
            if s in ("source", "provenance"):
                continue
            _check(s in scen, where, f"{section} names unknown scenario '{s}'")
            _check(isinstance(cells, dict), where, f"{section}.{s} must map methods to values")
            for m, cell in cells.items():
                _check(m in meth, where, f"{section}.{s} names unknown method '{m}'")
                _check(isinstance(cell, dict) and set(cell) <= {"mean", "sem", "source"}, where,
                       f"{section}.{s}.{m} must be {{mean: .., sem: ..}}")
                _check(_number_or_none(cell.get("mean")) and _number_or_none(cell.get("sem")), where,
                       f"{section}.{s}.{m}: mean and sem must be numbers or null")


# ----------------------------------------------------------------------------- expansion
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


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in (b or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


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

    A method runs only in the scenarios it lists (``methods.<m>.scenarios``)."""
    d = protocol.data
    scen = _select(scenarios, protocol.scenarios, protocol.default_scenarios, "scenario")
    meth = _select(methods, protocol.methods, protocol.methods, "method")
    overrides = list(overrides)
    for ov in overrides:
        if ov.method is not None and ov.method not in protocol.methods:
            raise ConfigError(f"--set {ov.text}: unknown method '{ov.method}'; allowed: {', '.join(protocol.methods)}")
    specs = []
    for s in scen:
        sdef = d["scenarios"][s] or {}
        for m in meth:
            if s not in protocol.method_scenarios(m):
                continue
            mdef = d["methods"][m]
            cfg = _merge(d["base"], sdef.get("config") or {})
            cfg = _merge(cfg, mdef["config"])
            params = (sdef.get("method_params") or {}).get(m) or {}
            cfg = _merge(cfg, {"strategy": params})
            for sd in seed_list(protocol, seeds):
                c = _merge(cfg, protocol.seed_config(sd))
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


# ----------------------------------------------------------------------------- cache
def cache_path(out: Path, spec: RunSpec) -> Path:
    return Path(out) / "runs" / spec.scenario / spec.method / f"seed{spec.seed}-{spec.key[:16]}.json"


def _read_entry(path: Path, spec: RunSpec) -> Optional[dict]:
    """The cache entry in ``path`` if it is a finished run of exactly ``spec``'s config (its
    stored config is re-hashed, so a file named under an older key function still matches)."""
    try:
        entry = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("results"), dict):
        return None
    stored = entry.get("config")
    if not isinstance(stored, dict) or config_key(stored) != spec.key:
        return None
    return entry


def load_cached(path: Path, spec: RunSpec) -> Optional[dict]:
    """The stored results when ``path`` holds this exact config's finished run, else None. A
    run of the same config stored under another name (a cache written before the key function
    changed) is found among the seed's files, renamed to ``path`` and reused."""
    path = Path(path)
    entry = _read_entry(path, spec)
    if entry is None and not path.exists():
        for other in sorted(path.parent.glob(f"seed{spec.seed}-*.json")):
            entry = _read_entry(other, spec)
            if entry is not None:
                entry["key"] = spec.key
                _write_json_atomic(path, entry)
                other.unlink()
                break
    return None if entry is None else entry["results"]


def _write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def run_and_store(item: tuple) -> dict:
    """Executor entry (top level, picklable): run one config and store it in its cache file."""
    from .runner import run_config_dict

    config, path, meta = item
    t0 = time.time()
    res = run_config_dict(config)
    _write_json_atomic(Path(path), {"key": meta["key"], "protocol": meta["protocol"], "scenario": meta["scenario"],
                                    "method": meta["method"], "seed": meta["seed"], "config": config,
                                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                    "elapsed_s": time.time() - t0, "results": res})
    return res


# ----------------------------------------------------------------------------- verdicts
def standard_error(values: list[float]) -> Optional[float]:
    """Sample standard deviation / sqrt(n) (as the paper's s.e.m.); None for fewer than 2 values."""
    if len(values) < 2:
        return None
    return statistics.stdev(values) / math.sqrt(len(values))


def verdict(mean: Optional[float], se: Optional[float], published: Optional[float], points: float = 3.0,
            se_multiplier: float = 2.0) -> tuple[str, Optional[float]]:
    """(verdict, tolerance): PASS when |mean - published| <= max(points, se_multiplier * se)."""
    if mean is None:
        return MISSING, None
    if published is None:
        return NA, None
    tol = max(points, se_multiplier * se) if se is not None else points
    return (PASS if abs(mean - published) <= tol + 1e-9 else FAIL), tol


def summarize(protocol: Protocol, specs: list[RunSpec], results: dict[str, dict], *, modified: bool = False,
              overrides: Iterable[Override] = (), seeds: Optional[list[int]] = None) -> dict:
    """Per (scenario, method) cell: values over seeds, mean, SE, published, difference, verdict."""
    points, mult = protocol.tolerance
    metric = protocol.metric
    cells, order = {}, []
    for spec in specs:
        k = (spec.scenario, spec.method)
        if k not in cells:
            cells[k] = []
            order.append(k)
        res = results.get(spec.key)
        if res is not None:
            cells[k].append((spec.seed, 100.0 * float(res[metric])))
    rows = []
    for s, m in order:
        vals = cells[(s, m)]
        values = [v for _, v in vals]
        mean = statistics.fmean(values) if values else None
        se = standard_error(values)
        pub = protocol.published(s, m)
        v, tol = verdict(mean, se, pub["mean"], points, mult)
        rows.append({
            "scenario": s, "method": m, "label": protocol.data["methods"][m].get("label", m),
            "n": len(values), "seeds": [sd for sd, _ in vals], "values": values, "mean": mean, "se": se,
            "published": pub, "diff": (mean - pub["mean"]) if (mean is not None and pub["mean"] is not None) else None,
            "tolerance": tol, "verdict": v, "reference": protocol.reference(s, m), "note": protocol.note(s, m),
        })
    counts = {k: sum(r["verdict"] == k for r in rows) for k in (PASS, FAIL, NA, MISSING)}
    status = FAIL if counts[FAIL] else (PASS if counts[PASS] else "NO VERDICT")
    pub = protocol.data.get("published") or {}
    rule = f"PASS when |ours - published| <= max({points:g}, {mult:g} x SE of our mean)"
    return {
        "protocol": protocol.name, "title": protocol.title, "citation": protocol.data.get("citation"),
        "metric": metric, "tolerance": {"points": points, "se_multiplier": mult, "rule": rule},
        "published_source": pub.get("source"), "published_provenance": pub.get("provenance", "primary"),
        "reference_source": (protocol.data.get("reference") or {}).get("source"),
        "modified": modified, "overrides": [o.text for o in overrides],
        "seeds": seeds if seeds is not None else sorted({s.seed for s in specs}), "protocol_seeds": protocol.seeds,
        "paper_seeds": (protocol.data.get("citation") or {}).get("paper_seeds"),
        "status": status, "counts": counts, "cells": rows,
        "notes": (protocol.data.get("notes") or {}).get("general") or [],
    }


# ----------------------------------------------------------------------------- reports
MODIFIED_BANNER = "modified protocol: verdicts are not comparable"


def _fmt(x: Optional[float], pm: Optional[float] = None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}" + (f" ± {pm:.2f}" if pm is not None else "")


def render_markdown(summary: dict) -> str:
    S = summary
    lines = [f"# Reproduction: {S['title']}", ""]
    if S["modified"]:
        lines += [f"> **{MODIFIED_BANNER.upper()}.** Overrides: " + ", ".join(f"`{o}`" for o in S["overrides"]), ""]
    cit = S.get("citation") or {}
    for k in ("paper", "table", "arxiv", "code"):
        if cit.get(k):
            lines.append(f"- **{k}**: {' '.join(str(cit[k]).split())}")
    prov = S.get("published_provenance", "primary")
    pub_source = " ".join(str(S["published_source"] or "none found (cells without a value get n/a)").split())
    lines += [
        f"- **protocol**: `{S['protocol']}`; metric `{S['metric']}` (final average accuracy, %, in the scenario's "
        "protocol: task-aware for task-IL)",
        f"- **seeds**: {len(S['seeds'])} ({', '.join(map(str, S['seeds']))}); protocol default {S['protocol_seeds']}"
        + (f", paper {S['paper_seeds']}" if S.get("paper_seeds") else ""),
        f"- **verdict rule**: {S['tolerance']['rule']}; SE = sample standard deviation / sqrt(n) over our seeds",
        f"- **published values**: {pub_source}"
        + (" (**secondary transcription**: check against the paper)" if prov == "secondary" else ""),
        "", f"**Overall: {S['status']}** ({S['counts'][PASS]} pass, {S['counts'][FAIL]} fail, "
        f"{S['counts'][NA]} without published value, {S['counts'][MISSING]} without runs)"
        + (f" - {MODIFIED_BANNER}" if S["modified"] else ""), "",
    ]
    has_ref = any(r["reference"] for r in S["cells"])
    by_scen: dict[str, list[dict]] = {}
    for r in S["cells"]:
        by_scen.setdefault(r["scenario"], []).append(r)
    for scen, rows in by_scen.items():
        lines += [f"## {scen}-incremental", "",
                  "| method | n | ours (mean ± SE) | published (mean ± SEM) | diff | tolerance | verdict |"
                  + (" context* |" if has_ref else ""),
                  "|---|---|---|---|---|---|---|" + ("---|" if has_ref else "")]
        for r in rows:
            p, ref = r["published"], r["reference"]
            diff = "-" if r["diff"] is None else f"{r['diff']:+.2f}"
            tol = "-" if r["tolerance"] is None else f"±{r['tolerance']:.2f}"
            context = (_fmt(ref.get("mean"), ref.get("sem")) if ref else "-")
            lines.append(f"| {r['label']} | {r['n']} | {_fmt(r['mean'], r['se'])} | {_fmt(p['mean'], p['sem'])} | "
                         f"{diff} | {tol} | **{r['verdict']}** |" + (f" {context} |" if has_ref else ""))
        lines.append("")
    if has_ref:
        lines += [f"\\* context only, never used for a verdict: {' '.join(str(S['reference_source']).split())}", ""]
    notes = [(r["scenario"], r["label"], r["note"]) for r in S["cells"] if r["note"]]
    if S["notes"] or notes:
        lines += ["## Notes (where paper, reference code and this library differ)", ""]
        lines += [f"- {' '.join(str(n).split())}" for n in S["notes"]]
        lines += [f"- *{s}-IL, {label}*: {' '.join(str(n).split())}" for s, label, n in notes]
        lines.append("")
    return "\n".join(lines)


def write_reports(out: Path, summary: dict) -> tuple[Path, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "results.md", out / "results.json"
    md.write_text(render_markdown(summary))
    _write_json_atomic(js, summary)
    return md, js


# ----------------------------------------------------------------------------- the driver
@dataclass
class Reproduction:
    summary: dict
    out: Path
    computed: int = 0
    reused: int = 0
    files: tuple = ()

    @property
    def failed(self) -> bool:
        return self.summary["status"] == FAIL


@dataclass
class _Hooks:
    start: Callable[[int, int, int], None] = lambda total, cached, todo: None
    running: Callable[[RunSpec], None] = lambda spec: None
    finished: Callable[[RunSpec, dict], None] = lambda spec, res: None
    extra: dict = field(default_factory=dict)


def default_out(protocol: Protocol, modified: bool) -> Path:
    return Path("runs") / "reproduce" / (protocol.name + ("-modified" if modified else ""))


def reproduce(protocol: Protocol | str, *, seeds=None, scenarios=None, methods=None, overrides: Iterable = (),
              out: Optional[str | Path] = None, executor: str = "sequential", workers: int = 2,
              hooks: Optional[_Hooks] = None) -> Reproduction:
    """Expand, run what is not cached (through the executor), summarize, write results.md/.json."""
    from .executor import SequentialExecutor, get_executor

    protocol = protocol if isinstance(protocol, Protocol) else load_protocol(protocol)
    overrides = [o if isinstance(o, Override) else parse_override(o) for o in overrides]
    if not any(o.key == "threads" for o in overrides):  # small models: one thread per run scales best
        n = max(1, (os.cpu_count() or 1) // max(workers, 1)) if executor == "process" else 1
        overrides.append(Override("threads", n))
    specs = expand(protocol, seeds, scenarios, methods, overrides)
    modified = modified_by(protocol, specs, seeds, scenarios, methods)
    out = Path(out) if out else default_out(protocol, modified)
    hooks = hooks or _Hooks()
    results: dict[str, dict] = {}
    todo = []
    for spec in specs:
        res = load_cached(cache_path(out, spec), spec)
        if res is not None:
            results[spec.key] = res
        elif spec.key not in {t.key for t in todo}:
            todo.append(spec)
    reused = len(specs) - len(todo)
    hooks.start(len(specs), reused, len(todo))
    if todo:
        ex = get_executor(executor, workers)
        items = [(spec.config, str(cache_path(out, spec)),
                  {"key": spec.key, "protocol": protocol.name, "scenario": spec.scenario, "method": spec.method,
                   "seed": spec.seed}) for spec in todo]
        if isinstance(ex, SequentialExecutor):
            def announce():
                for spec, item in zip(todo, items):
                    hooks.running(spec)
                    yield item
            stream = announce()
        else:
            stream = items
        for spec, res in zip(todo, ex.map(run_and_store, stream)):
            results[spec.key] = res
            hooks.finished(spec, res)
    summary = summarize(protocol, specs, results, modified=modified,
                        overrides=[o for o in overrides if not o.execution_only],
                        seeds=seed_list(protocol, seeds))
    summary["out"] = str(out)
    files = write_reports(out, summary)
    return Reproduction(summary, out, computed=len(todo), reused=reused, files=files)
