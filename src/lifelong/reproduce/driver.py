"""The driver: expand a protocol, run what the store does not hold yet (through an executor),
summarize, write ``results.md`` and ``results.json``."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

from . import store
from .grid import Override, RunSpec, expand, modified_by, parse_override, seed_list
from .protocol import Protocol, load_protocol
from .render import write_reports
from .verdicts import FAIL, summarize


@dataclass
class Reproduction:
    summary: dict
    out: Path
    computed: int = 0
    reused: int = 0
    files: tuple = ()
    errors: list = field(default_factory=list)  # (RunSpec, error message) of the runs that failed

    @property
    def failed(self) -> bool:
        return self.summary["status"] == FAIL


@dataclass
class _Hooks:
    start: Callable[[int, int, int], None] = lambda total, cached, todo: None
    running: Callable[[RunSpec], None] = lambda spec: None
    finished: Callable[[RunSpec, dict], None] = lambda spec, res: None
    failed: Callable[[RunSpec, str], None] = lambda spec, error: None
    extra: dict = field(default_factory=dict)


def default_out(protocol: Protocol, modified: bool) -> Path:
    return Path("runs") / "reproduce" / (protocol.name + ("-modified" if modified else ""))


def reproduce(protocol: Protocol | str, *, seeds=None, scenarios=None, methods=None, overrides: Iterable = (),
              out: Optional[str | Path] = None, executor="sequential", workers: int = 2,
              hooks: Optional[_Hooks] = None) -> Reproduction:
    """Expand, run what is not cached (through the executor), summarize, write results.md/.json."""
    from ..executor import SequentialExecutor, get_executor

    protocol = protocol if isinstance(protocol, Protocol) else load_protocol(protocol)
    overrides = [o if isinstance(o, Override) else parse_override(o) for o in overrides]
    if not any(o.key == "threads" for o in overrides):  # small models: one thread per run scales best
        n = max(1, (os.cpu_count() or 1) // max(workers, 1)) if executor == "process" else \
            getattr(executor, "threads_per_run", 1)  # a Ray executor: its --cpus-per-run
        overrides.append(Override("threads", n))
    specs = expand(protocol, seeds, scenarios, methods, overrides)
    modified = modified_by(protocol, specs, seeds, scenarios, methods)
    out = Path(out) if out else default_out(protocol, modified)
    hooks = hooks or _Hooks()
    results: dict[str, dict] = {}
    todo = []
    for spec in specs:
        res = store.load_cached(store.cache_path(out, spec), spec)
        if res is not None:
            results[spec.key] = res
        elif spec.key not in {t.key for t in todo}:
            todo.append(spec)
    reused = len(specs) - len(todo)
    hooks.start(len(specs), reused, len(todo))
    if todo:
        ex = get_executor(executor, workers)
        items = [(spec.config, str(store.cache_path(out, spec)),
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
        errors = []
        for spec, out_ in zip(todo, ex.map(store.run_and_store, stream)):
            if "results" in out_:
                results[spec.key] = out_["results"]
                hooks.finished(spec, out_["results"])
            else:  # recorded; the other runs go on
                errors.append((spec, out_["error"]))
                getattr(hooks, "failed", lambda *a: None)(spec, out_["error"])
    else:
        errors = []
    summary = summarize(protocol, specs, results, modified=modified,
                        overrides=[o for o in overrides if not o.execution_only],
                        seeds=seed_list(protocol, seeds))
    summary["out"] = str(out)
    summary["failed_runs"] = [{"scenario": sp.scenario, "method": sp.method, "seed": sp.seed, "error": e}
                              for sp, e in errors]
    files = write_reports(out, summary)
    return Reproduction(summary, out, computed=len(todo) - len(errors), reused=reused, files=files, errors=errors)
