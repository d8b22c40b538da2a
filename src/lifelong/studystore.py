"""Where Optuna studies live: open a study store from what the user typed, and read it back.

`open_storage(url_or_path, folder)` turns a ``--storage`` value into an Optuna storage:

| value | storage |
|---|---|
| ``None`` | SQLite file ``folder/studies.db`` (folder created) |
| a path ending ``.db`` | SQLite file there (its folder must exist) |
| ``sqlite:///relative.db``, ``sqlite:////absolute.db`` | SQLite, as written |
| ``postgresql://user[:password]@host[:port]/db`` (or ``+psycopg2``) | PostgreSQL, shared by machines |

All are `optuna.storages.RDBStorage` with a heartbeat (``heartbeat_interval=30`` s,
``grace_period=120`` s): a trial whose process died is marked FAIL by the next trial that
starts, instead of staying RUNNING for ever. Optuna beats only inside `Study.optimize`: a trial
taken with `study.ask()` gets no heartbeat (and Optuna warns).

SQLite is safe for several processes on ONE machine (not over a network file system): each
connection waits up to ``SQLITE_LOCK_TIMEOUT_S`` for the database lock
(``engine_kwargs={"connect_args": {"timeout": 60}}``, the sqlite3 module's busy timeout)
instead of failing. Measured with Optuna 5.0.0 on 2 CPUs: 2 processes x 20 trials
(tests/test_pg_server.py) and 8 x 100 lose nothing; with a 1 ms timeout 8 x 60 fails with
``StorageInternalError`` caused by ``sqlite3.OperationalError: database is locked`` and leaves
trials FAIL and RUNNING.

PostgreSQL: SQLAlchemy 2.1 maps a plain ``postgresql://`` URL to the psycopg 3 driver, while the
``tune`` extra installs psycopg2; a plain URL is therefore given the driver that is installed
(psycopg2 first). Connections time out after ``PG_CONNECT_TIMEOUT_S`` and are checked before use
(``pool_pre_ping``: a trial may run for hours while a firewall drops idle connections). A server
that cannot be reached is a one-line `ConfigError` naming the URL, password masked.

Optuna creates its tables, without a lock, when a store is first opened: processes opening a new
store at the same moment collide (SQLite: "table studies already exists", "UNIQUE constraint
failed: alembic_version.version_num"; PostgreSQL: "duplicate key value violates unique constraint
pg_type_typname_nsp_index"). Such an error is retried (``INIT_RETRIES``), which then succeeds.

`list_studies` and `trials_frame` return plain dicts (no pandas needed) for ``lifelong tune``'s
listings and reports.
"""

from __future__ import annotations

import importlib.util
import re
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from .errors import ConfigError, LifelongError

OPTUNA_PIN = "optuna==5.0.0"
DEFAULT_FILE = "studies.db"
SQLITE_LOCK_TIMEOUT_S = 60
PG_CONNECT_TIMEOUT_S = 10
HEARTBEAT_INTERVAL_S = 30
GRACE_PERIOD_S = 120
# Errors of processes creating a new store's tables at once (module docstring): opened again.
INIT_RACE = ("already exists", "duplicate key", "UNIQUE constraint failed")
INIT_RETRIES = 10
PG_SCHEMES = ("postgresql", "postgresql+psycopg2", "postgresql+psycopg")
ALLOWED = ("nothing (SQLite file <folder>/studies.db), a path ending in .db, "
           "sqlite:///path.db, or postgresql://user[:password]@host[:port]/database "
           "(also postgresql+psycopg2://)")


def _import_optuna():
    try:
        import optuna
    except ImportError as exc:
        raise LifelongError(f"study storage needs Optuna: pip install 'lifelong[tune]' "
                            f"({OPTUNA_PIN}; import failed: {exc})") from exc
    return optuna


def mask_password(url: str) -> str:
    """``scheme://user:secret@host/db`` -> ``scheme://user:***@host/db``; other text unchanged."""
    return re.sub(r"(://[^/@:]*:)[^/]*@", r"\1***@", url)  # to the last '@' before the path


def _pg_url(url: str) -> str:
    """Give a plain ``postgresql://`` URL the installed driver (see the module docstring)."""
    scheme, rest = url.split("://", 1)
    if scheme.lower() != "postgresql":
        return url
    for module, driver in (("psycopg2", "psycopg2"), ("psycopg", "psycopg")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{driver}://{rest}"
    raise ConfigError(f"--storage {mask_password(url)}: no PostgreSQL driver is installed: "
                      f"pip install 'lifelong[tune]' (psycopg2-binary)")


def _sqlite_path(value: str, path: Path) -> Path:
    if path.is_dir():
        raise ConfigError(f"--storage {value}: {path} is a folder; name a SQLite file in it, "
                          f"e.g. {path / DEFAULT_FILE}")
    if not path.parent.is_dir():
        raise ConfigError(f"--storage {value}: folder {path.parent} does not exist; create it "
                          f"or name a file in an existing folder")
    return path


def _rdb(optuna, url: str, shown: str, engine_kwargs: dict[str, Any]):
    import sqlalchemy.exc

    for attempt in range(1, INIT_RETRIES + 1):
        try:
            with warnings.catch_warnings():  # heartbeat_interval is "experimental" in Optuna 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                  heartbeat_interval=HEARTBEAT_INTERVAL_S,
                                                  grace_period=GRACE_PERIOD_S)
        except sqlalchemy.exc.DBAPIError as exc:
            reason = mask_password(str(exc.orig or exc).strip().splitlines()[0])
            if attempt < INIT_RETRIES and any(s in reason for s in INIT_RACE):
                time.sleep(0.1 * attempt)  # another process is creating the tables: let it finish
                continue
            if url.startswith("sqlite"):
                raise ConfigError(f"--storage {shown}: cannot open it as a SQLite study store "
                                  f"({reason}); name a new file or one lifelong tune wrote") from None
            if isinstance(exc, sqlalchemy.exc.OperationalError):
                raise ConfigError(f"--storage {shown}: cannot connect to the PostgreSQL server "
                                  f"({reason}); check that it runs and accepts this host, user, "
                                  f"password and database, or leave --storage out to use a "
                                  f"local SQLite file") from None
            raise ConfigError(f"--storage {shown}: the PostgreSQL study store failed to open "
                              f"({reason})") from None
        except ImportError as exc:
            raise ConfigError(f"--storage {shown}: its database driver is not installed ({exc}): "
                              f"pip install 'lifelong[tune]'") from None


def open_storage(url_or_path: str | None, folder: Path):
    """The Optuna storage for a ``--storage`` value (table in the module docstring); ``folder``
    holds the default SQLite file. Raises `ConfigError` for anything else or a store that
    cannot be opened or reached."""
    optuna = _import_optuna()
    sqlite_kwargs = {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}}
    if url_or_path is None:
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the study folder {folder}: {exc.strerror}") from None
        path = folder / DEFAULT_FILE
        return _rdb(optuna, f"sqlite:///{path.resolve()}", str(path), sqlite_kwargs)
    value = str(url_or_path).strip()
    shown = mask_password(value)
    scheme = value.split("://", 1)[0].lower() if "://" in value else None
    if scheme is None and value.endswith(".db"):
        path = _sqlite_path(value, Path(value).expanduser().resolve())
        return _rdb(optuna, f"sqlite:///{path}", value, sqlite_kwargs)
    if scheme == "sqlite" and value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
        target = value[len("sqlite:///"):].split("?", 1)[0]
        if target != ":memory:":
            _sqlite_path(value, Path(target))
        return _rdb(optuna, value, value, sqlite_kwargs)
    if scheme in PG_SCHEMES:
        import sqlalchemy.exc
        from sqlalchemy.engine import make_url

        try:
            make_url(value)
        except sqlalchemy.exc.ArgumentError:
            raise ConfigError(f"--storage {shown!r} is not a valid URL; use {ALLOWED}") from None
        timeout = {} if "connect_timeout=" in value else {"connect_timeout": PG_CONNECT_TIMEOUT_S}
        return _rdb(optuna, _pg_url(value), shown,
                    {"pool_pre_ping": True, "connect_args": timeout})
    hint = " (PostgreSQL URLs begin postgresql://)" if scheme == "postgres" else ""
    raise ConfigError(f"--storage {shown!r} is not a study store{hint}; use {ALLOWED}")


def _directions(study) -> list[str]:
    return [d.name.lower() for d in study.directions]


def _best(directions: list[str], trials) -> tuple[float | None, int | None]:
    """Best value and its trial number among COMPLETE trials (single objective only)."""
    if len(directions) != 1:
        return None, None
    done = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    if not done:
        return None, None
    pick = max if directions[0] == "maximize" else min
    best = pick(done, key=lambda t: t.value)
    return best.value, best.number


def list_studies(storage) -> list[dict]:
    """One dict per study, by name: ``name``, ``direction`` (``"minimize"``/``"maximize"``, a list
    for several objectives), ``n_trials`` (count per trial state, every state present),
    ``best_value`` and ``best_trial`` (None without a complete trial or with several
    objectives), ``user_attrs``."""
    optuna = _import_optuna()
    out = []
    for study in storage.get_all_studies():
        trials = storage.get_all_trials(study._study_id, deepcopy=False)
        counts = Counter(t.state.name for t in trials)
        directions = _directions(study)
        best_value, best_trial = _best(directions, trials)
        out.append({
            "name": study.study_name,
            "direction": directions[0] if len(directions) == 1 else directions,
            "n_trials": {s.name: counts.get(s.name, 0) for s in optuna.trial.TrialState},
            "best_value": best_value,
            "best_trial": best_trial,
            "user_attrs": dict(study.user_attrs),
        })
    return sorted(out, key=lambda s: s["name"])


def trials_frame(storage, study_name: str) -> list[dict]:
    """One dict per trial of ``study_name``, by number: ``number``, ``state``, ``value`` (a list
    for several objectives; None unless complete), ``params``, ``user_attrs``, ``duration_s``
    (None while running). Unknown study: `ConfigError` naming the studies there are."""
    _import_optuna()
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        names = sorted(s.study_name for s in storage.get_all_studies())
        raise ConfigError(f"no study {study_name!r} in this store; it has: "
                          f"{', '.join(names) if names else 'no studies'}") from None
    rows = []
    for t in storage.get_all_trials(study_id, deepcopy=False):
        values = t.values
        duration = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_start and t.datetime_complete else None
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "value": None if values is None else values[0] if len(values) == 1 else list(values),
            "params": dict(t.params),
            "user_attrs": dict(t.user_attrs),
            "duration_s": duration,
        })
    return sorted(rows, key=lambda r: r["number"])
