"""The result store: one JSON file per finished run, named after its config's cache key, so a
reproduction resumes where it stopped and a changed config is never mistaken for a finished one."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from ..io import atomic_write_json
from .grid import RunSpec, config_key


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
                atomic_write_json(path, entry, indent=1)
                other.unlink()
                break
    if entry is not None and run_folder(path).is_dir():  # killed after storing, before removing its run folder
        import shutil

        shutil.rmtree(run_folder(path), ignore_errors=True)
    return None if entry is None else entry["results"]


def run_folder(path: Path) -> Path:
    """Where a run of the cache entry ``path`` trains: a run folder (checkpointed, resumable;
    see :mod:`lifelong.runfolder`) beside it, removed once the entry is stored."""
    path = Path(path)
    return path.with_name(path.stem)


def run_and_store(item: tuple) -> dict:
    """Executor entry (top level, picklable): run one config in its run folder (an interrupted
    run resumes from its last checkpoint) and store it in its cache file. Returns
    ``{"results": ...}``, or ``{"error": ...}`` for a failed run (the others go on)."""
    import shutil

    from ..grid import run_one

    config, path, meta = item
    path = Path(path)
    t0 = time.time()
    out = run_one((config, run_folder(path)))
    if "results" not in out:
        return out
    res = dict(out["results"])
    atomic_write_json(path, {"key": meta["key"], "protocol": meta["protocol"], "scenario": meta["scenario"],
                             "method": meta["method"], "seed": meta["seed"], "config": config,
                             "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                             "elapsed_s": time.time() - t0, "results": res}, indent=1)
    shutil.rmtree(run_folder(path), ignore_errors=True)
    return {"results": res}
