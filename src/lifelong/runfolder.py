"""A run folder on disk: what it holds, how a run resumes into it, and how its results are
never lost.

A folder is in one of four states:

- **new**: missing or empty; the run starts from the beginning.
- **in progress**: it holds ``.partial/`` (the run's config fingerprint, a lock while a process
  works in it, and ``resume.pt``, the latest checkpoint). Running the same config into it again
  (or ``lifelong run --resume FOLDER``) continues from that checkpoint; a checkpoint is written
  at every experience end and every few minutes of work (``checkpoint`` in the config).
- **finished**: it holds ``results.json`` (written last, atomically) of the same config; the
  stored results are reused, nothing is recomputed or rewritten.
- **foreign**: anything else (another config's run, a user's files): never touched.

"The same config" leaves out the execution keys and reads a stored config with today's schema
(:func:`same_run`): a key added to lifelong since a run was made, at its default, does not make
it another run.

At the end the files are written into ``.partial/final/`` and moved into place, ``results.json``
last; ``.partial`` is removed only once they are all there. If that fails (no permission, a
full disk), the results are written to a fallback folder named in the error message, and the
checkpoint is kept, so nothing computed is lost.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from . import faults
from .errors import ConfigError

PARTIAL = ".partial"
#: config keys that change how a run executes, not its numbers (not part of its fingerprint)
EXECUTION_KEYS = ("device", "threads", "tracking", "checkpoint")


class RunFolderError(ConfigError):
    """The run folder cannot be used or written; the message says where the results are."""


def fingerprint(config: dict) -> str:
    core = {k: v for k, v in config.items() if k not in EXECUTION_KEYS}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


def same_run(stored_config, stored_fp: str | None, fp: str) -> bool:
    """Whether a stored run (its config, and the fingerprint it was made with) is the run of
    fingerprint ``fp``. The stored config is also read with today's schema, so that a config key
    added to lifelong since the run was made, at its default, does not make it another run (its
    numbers are the same); a stored config today's schema refuses is compared as it is."""
    if stored_fp == fp or (isinstance(stored_config, dict) and fingerprint(stored_config) == fp):
        return True
    if not isinstance(stored_config, dict):
        return False
    try:
        from .config import parse_config

        return fingerprint(parse_config(stored_config).to_dict()) == fp
    except Exception:  # noqa: BLE001  (a config of another lifelong, another kind of run: not this run)
        return False


def state_of(out_dir: Path, fp: str) -> str:
    """'new', 'finished', 'in progress' or 'foreign' (see the module docstring)."""
    if not out_dir.exists():
        return "new"
    if not out_dir.is_dir():
        return "foreign"
    entries = {p.name for p in out_dir.iterdir()}
    if not entries:
        return "new"
    if "results.json" in entries:
        try:
            stored = json.loads((out_dir / "results.json").read_text())
            same = same_run(stored.get("config", {}), None, fp)
        except (OSError, ValueError, AttributeError):
            same = False
        return "finished" if same else "foreign"
    if PARTIAL in entries:
        run = _partial_run(out_dir)
        if run is not None and same_run(run.get("config"), run.get("fingerprint"), fp):
            return "in progress"
    return "foreign"


def _partial_run(out_dir: Path) -> dict | None:
    try:
        run = json.loads((out_dir / PARTIAL / "run.json").read_text())
        return run if isinstance(run, dict) else None
    except (OSError, ValueError):
        return None


def partial_fingerprint(out_dir: Path) -> str | None:
    """The fingerprint an in-progress run was started with (its checkpoint carries it)."""
    run = _partial_run(out_dir)
    return run.get("fingerprint") if run else None


def refuse_foreign(out_dir: Path) -> None:
    raise RunFolderError(f"run folder {out_dir} already exists and holds something else (another run's results, "
                         "or files of yours); nothing was overwritten. Choose another --out, or remove it yourself")


def load_finished(out_dir: Path) -> dict:
    return json.loads((out_dir / "results.json").read_text())


class Lock:
    """An exclusive lock on ``.partial/lock`` (released when the process dies, even by kill -9)."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = None

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise RunFolderError(f"run folder {self.path.parent.parent} is being written by another process "
                                 "right now; wait for it, or choose another --out") from None
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def prepare(out_dir: Path, config: dict, fp: str) -> Path:
    """Create ``.partial`` with the run's identity; a folder that cannot be written is refused
    now, before any training."""
    partial = out_dir / PARTIAL
    try:
        partial.mkdir(parents=True, exist_ok=True)
        if not (partial / "run.json").exists():
            from .io import atomic_write_json

            atomic_write_json(partial / "run.json", {"fingerprint": fp, "config": config,
                                                     "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    except OSError as exc:
        raise RunFolderError(f"cannot write into the run folder {out_dir}: {_reason(exc)}; nothing was run. "
                             "Choose another --out") from None
    return partial


@contextlib.contextmanager
def discard_on_user_error(out_dir: Path, created: bool):
    """A run stopped by a user error (a config that cannot run, a loss that diverged) leaves no
    ``.partial``: resuming the same config would fail the same way, and a corrected config
    must find the folder free. Any other interruption (a crash, Ctrl-C, kill) keeps it."""
    from .errors import DivergenceError

    try:
        yield
    except RunFolderError:  # the folder could not be written: the checkpoint is what is left, keep it
        raise
    except (ConfigError, DivergenceError):
        shutil.rmtree(out_dir / PARTIAL, ignore_errors=True)
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise


def remove_stale_temporaries(partial: Path) -> None:
    """Half-written temporary files of a killed process (we hold the lock: none is live)."""
    for p in partial.glob(".*.tmp-*"):
        p.unlink(missing_ok=True)


def clean_partial(out_dir: Path) -> None:
    """Remove the ``.partial`` a finished run left when killed just before removing it."""
    partial = out_dir / PARTIAL
    if partial.is_dir():
        try:
            with Lock(partial / "lock"):
                shutil.rmtree(partial / "final", ignore_errors=True)
                for p in partial.iterdir():
                    if p.name != "lock":
                        shutil.rmtree(p) if p.is_dir() else p.unlink()
            shutil.rmtree(partial, ignore_errors=True)
        except (RunFolderError, OSError):
            pass  # another process holds it, or it is not ours to clean: leave it


def finish(out_dir: Path, files: dict[str, bytes]) -> None:
    """Move the finished run's files into ``out_dir`` (``results.json`` last), then remove
    ``.partial``; on failure write them to a fallback folder and raise, naming it."""
    partial = out_dir / PARTIAL
    final = partial / "final"
    order = sorted(files, key=lambda n: n == "results.json")  # results.json last: it marks the run finished
    try:
        final.mkdir(parents=True, exist_ok=True)
        for name in order:
            _write_synced(final / name, files[name])
        for name in order:
            os.replace(final / name, out_dir / name)
            faults.point("final-move")  # fault-injection tests die here, between two moves
    except OSError as exc:
        where = rescue(out_dir, files)
        raise RunFolderError(f"the run finished but its folder {out_dir} could not be written ({_reason(exc)}). "
                             f"Its results were saved to {where}; the checkpoint in {partial} is kept") from None
    shutil.rmtree(partial, ignore_errors=True)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def rescue(out_dir: Path, files: dict[str, bytes]) -> str:
    """Write ``files`` to the first fallback folder that takes them: $LIFELONG_RESCUE_DIR,
    ~/.cache/lifelong/rescued, the system temp folder. Returns its path (or says none worked)."""
    import tempfile

    stamp = time.strftime("%Y%m%d-%H%M%S")
    bases = [os.environ.get("LIFELONG_RESCUE_DIR"), str(Path.home() / ".cache" / "lifelong" / "rescued"),
             tempfile.gettempdir()]
    tried = []
    for base in filter(None, bases):
        dest = Path(base) / f"{out_dir.name}-{stamp}-{os.getpid()}"
        try:
            dest.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                _write_synced(dest / name, data)
            return str(dest)
        except OSError as exc:
            tried.append(f"{dest}: {_reason(exc)}")
            shutil.rmtree(dest, ignore_errors=True)
    return "nowhere (" + "; ".join(tried) + "); the checkpoint is all that is left"


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the disk is full (no space left on device)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied ({exc.strerror})"
    return exc.strerror or str(exc)
