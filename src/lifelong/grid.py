"""The grid of runs (strategies x seeds x overrides) behind ``lifelong run`` sweeps and
``lifelong reproduce``: one place that decides what a sweep folder may hold, runs what is
missing, and records what failed.

- Each run goes through :func:`lifelong.runner.run_to_folder`: a finished run is reused, an
  interrupted one resumes from its last checkpoint, a new one starts.
- A run that fails (any error) is recorded with its error; the others go on; the outcome says
  which failed, and the caller exits non-zero.
- The sweep folder holds ``sweep.json`` (the grid: each run's folder and config fingerprint).
  Rerunning the same command into it continues the sweep; a grid that adds runs (more seeds,
  more strategies) extends it. A non-empty folder without ``sweep.json`` is never touched, and
  neither is a run folder holding another config's run.
"""
from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .errors import ConfigError
from .runfolder import fingerprint, same_run

MANIFEST = "sweep.json"


@dataclass
class GridRun:
    config: dict
    path: Path
    label: str = ""


@dataclass
class Outcome:
    run: GridRun
    results: dict | None = None
    error: str | None = None
    details: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class GridReport:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def results(self) -> list[dict]:
        return [o.results for o in self.outcomes if o.ok]


def open_grid(base: Path, runs: list[GridRun], kind: str = "sweep") -> None:
    """Claim ``base`` for this grid: create it with its manifest, or check that it is this
    grid's (or a grid it extends). Anything else is refused before any run starts."""
    from .io import atomic_write_json

    base = Path(base)
    entries = {r.path.relative_to(base).as_posix(): {"fingerprint": fingerprint(r.config), "label": r.label,
                                                      "config": r.config} for r in runs}
    manifest = base / MANIFEST
    if base.exists() and not base.is_dir():
        raise ConfigError(f"sweep folder {base} exists and is not a folder; choose another --out")
    if base.is_dir() and any(base.iterdir()):
        if not manifest.is_file():
            raise ConfigError(f"sweep folder {base} already exists and is not a sweep of lifelong's (no {MANIFEST}); "
                              "nothing was touched. Choose another --out, or remove it yourself")
        try:
            stored = json.loads(manifest.read_text())
            known = {r["path"]: r for r in stored["runs"]}
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError(f"{manifest} cannot be read; move it away or choose another --out") from None
        clash = [p for p, e in entries.items()
                 if p in known and not same_run(known[p].get("config"), known[p]["fingerprint"], e["fingerprint"])]
        if clash:
            raise ConfigError(f"sweep folder {base} holds a run '{clash[0]}' with another config (a changed option?); "
                              "nothing was touched. Rerun with the options it was started with, or choose another --out")
        entries = {**known, **entries}
    atomic_write_json(manifest, {"kind": kind, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                 "runs": [{"path": p, **e} for p, e in entries.items()]})


def load_grid(base: Path) -> list[GridRun]:
    """The runs a sweep folder's manifest lists (for ``lifelong run --resume``)."""
    base = Path(base)
    try:
        stored = json.loads((base / MANIFEST).read_text())
        return [GridRun(r["config"], base / r["path"], r.get("label", r["path"])) for r in stored["runs"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{base / MANIFEST} cannot be read; it is not a sweep folder of lifelong's") from None


def run_one(item: tuple) -> dict:
    """Executor entry (top level, picklable): ``(config, path)`` -> ``{"results": ...}`` or
    ``{"error": ..., "details": traceback}``; never raises for a failing run."""
    from .errors import LifelongError
    from .runner import run_to_folder

    config, path = item
    try:
        return {"results": run_to_folder(config, path)}
    except LifelongError as exc:
        return {"error": f"{exc}", "details": ""}
    except Exception as exc:  # a bug or a resource problem in one run must not stop the others
        return {"error": f"{type(exc).__name__}: {exc}", "details": traceback.format_exc()}


def execute(runs: Iterable[GridRun], executor="sequential", workers: int = 2,
            on_start: Callable | None = None, on_done: Callable | None = None,
            monitor_for: Callable | None = None) -> GridReport:
    """Run every run (finished ones are reused, interrupted ones resume); failures recorded.
    ``executor``: a name for :func:`lifelong.executor.get_executor`, or an executor object."""
    from .executor import get_executor

    runs = list(runs)
    report = GridReport()
    if executor == "sequential":
        from .errors import LifelongError
        from .runner import run_to_folder

        for r in runs:
            if on_start:
                on_start(r)
            try:
                out = {"results": run_to_folder(r.config, r.path, monitor_for(r) if monitor_for else None)}
            except LifelongError as exc:
                out = {"error": str(exc), "details": ""}
            except Exception as exc:
                out = {"error": f"{type(exc).__name__}: {exc}", "details": traceback.format_exc()}
            report.outcomes.append(_outcome(r, out, on_done))
    else:
        items = [(r.config, str(r.path)) for r in runs]
        ex = get_executor(executor, workers) if isinstance(executor, str) else executor
        for r, out in zip(runs, ex.map(run_one, items)):
            report.outcomes.append(_outcome(r, out, on_done))
    return report


def _outcome(r: GridRun, out: dict, on_done) -> Outcome:
    o = Outcome(r, out.get("results"), out.get("error"), out.get("details", ""))
    if on_done:
        on_done(o)
    return o


def failures_markdown(report: GridReport) -> str:
    if not report.failed:
        return ""
    lines = [f"**{len(report.failed)} of {len(report.outcomes)} runs failed** (rerun the same command to retry "
             "them; finished runs are reused):", ""]
    lines += [f"- {o.run.label or o.run.path}: {o.error}" for o in report.failed]
    return "\n".join(lines) + "\n"
