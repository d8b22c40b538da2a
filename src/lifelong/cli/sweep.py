"""From a config file and flags to the list of runs, every one validated before the first
starts; seeds; and the summary of a sweep over seeds (mean ± std from :mod:`lifelong.stats`)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..config import RunConfig, check_runnable, check_sections, parse_config
from ..errors import ConfigError
from ..stats import mean_std

SUMMARY_KEYS = ("average_accuracy", "average_incremental_accuracy", "forgetting", "bwt", "wall_time_s")


def parse_value(text: str):
    """A ``--set`` value as YAML (``0.01``, ``[16, 16]``, ``true``, ``.inf``); else the plain string.
    A number YAML reads as a string (``1e-3``, ``-1e9``: YAML wants a dot) becomes a float."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except Exception:
        return text
    if isinstance(value, str):
        try:
            return float(value) if value.strip().lower().lstrip("+-") not in ("inf", "infinity", "nan") else value
        except ValueError:
            return value
    return value


def apply_flags(data: dict, flags, overrides) -> dict:
    """Set each ``(dotted key, value)`` of ``flags`` whose value was given, then each
    ``--set KEY=VALUE`` of ``overrides`` (values read by :func:`parse_value`), in ``data``."""
    from ..config import set_key

    for key, val in flags:
        if val is not None:
            set_key(data, key, val)
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"--set expects KEY=VALUE, got '{ov}'")
        k, v = ov.split("=", 1)
        set_key(data, k.strip(), parse_value(v))
    return data


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: ``"0,1,2"`` or an inclusive range ``"0-4"``; no seed twice, none negative."""
    try:
        if "-" in text and "," not in text:
            a, b = text.split("-")
            seeds = list(range(int(a), int(b) + 1))
            if not seeds:
                raise ConfigError(f"--seeds range '{text}' is empty: the first seed must not exceed the last "
                                  f"(e.g. '{b}-{a}')")
        else:
            seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds must look like '0,1,2' or '0-4' (seeds >= 0), got '{text}'") from None
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ConfigError(f"--seeds lists seed {twice[0]} twice, got '{text}'")
    if min(seeds) < 0:
        raise ConfigError(f"--seeds must be >= 0, got '{text}'")
    return seeds


def strategy_param_names(name: str) -> list[str]:
    """The parameters of a strategy, or of every member of ``"a+b"``."""
    from ..strategies import get_strategy_class

    return list(dict.fromkeys(p for n in name.split("+") for p in get_strategy_class(n.strip()).get_param_names()))


def expand(data: dict, strategies: list[str] | None, seeds: list[int] | None) -> list[RunConfig]:
    """One validated config per (strategy, seed), strategies outer. The config's strategy
    parameters go to each listed strategy that takes them; one that no listed strategy takes is
    an error. Everything is checked here, before any data loads: types and ranges, unknown keys,
    the benchmark's keys, and that each strategy supports the scenario."""
    check_sections(data)
    section = dict(data.get("strategy", {}))
    strategies = strategies or [section.get("name", "finetune")]
    twice = sorted({s for s in strategies if strategies.count(s) > 1})
    if twice:
        raise ConfigError(f"--strategy lists '{twice[0]}' twice")
    params = {k: v for k, v in section.items() if k != "name"}
    accepted = {s: strategy_param_names(s) for s in strategies}
    taken = {p for names in accepted.values() for p in names}
    unknown = [k for k in params if k not in taken]
    if unknown:
        allowed = ", ".join(dict.fromkeys(p for names in accepted.values() for p in names))
        allowed = f"their parameters: {allowed}" if allowed else "they take no parameters"
        raise ConfigError(f"strategy parameter 'strategy.{unknown[0]}' is taken by none of the strategies run "
                          f"({', '.join(strategies)}); {allowed} (see 'lifelong list strategies')")
    configs = []
    for s in strategies:
        for sd in seeds if seeds is not None else [data.get("seed", 0)]:
            d = json.loads(json.dumps(data))
            d["strategy"] = {"name": s, **{k: v for k, v in params.items() if k in accepted[s]}}
            d["seed"] = sd
            cfg = parse_config(d)
            check_runnable(cfg)
            configs.append(cfg)
    return configs


def run_paths(base: Path, configs: list[dict]) -> list[Path]:
    """Where each run of a sweep is written: ``base/<strategy>/seed-<seed>``."""
    return [base / c["strategy"]["name"] / f"seed-{c['seed']}" for c in configs]


def default_out(cfg: dict, many: bool) -> Path:
    name = "sweep" if many else f"{cfg['strategy']['name']}-s{cfg['seed']}"
    return Path("runs") / f"{cfg['benchmark']['name']}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def summary_rows(results: list[dict]) -> list[dict]:
    """One row per strategy: its seeds and, for each summary metric, mean and sample std."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(r["config"]["strategy"]["name"], []).append(r)
    rows = []
    for name, rs in groups.items():
        row = {"strategy": name, "seeds": [r["seed"] for r in rs]}
        for k in SUMMARY_KEYS:
            m, s = mean_std(r[k] for r in rs)
            row[k] = {"mean": m, "std": s}
        rows.append(row)
    return rows


def summary_markdown(rows: list[dict], title: str) -> str:
    lines = [f"## {title}", "", "| strategy | seeds | final avg acc (%) | avg incremental acc (%) | forgetting (%) "
             "| BWT (%) | time (s) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        f = lambda k, s=100: f"{s * r[k]['mean']:.2f} ± {s * r[k]['std']:.2f}"  # noqa: E731
        lines.append(f"| {r['strategy']} | {len(r['seeds'])} | {f('average_accuracy')} | "
                     f"{f('average_incremental_accuracy')} | {f('forgetting')} | {f('bwt')} | {f('wall_time_s', 1)} |")
    return "\n".join(lines) + "\n"
