"""lifelong.studystore: --storage values -> Optuna storages, and plain-dict listings of studies."""
import time
import uuid
from pathlib import Path

import pytest

from lifelong.errors import ConfigError

optuna = pytest.importorskip("optuna")
from lifelong import studystore  # noqa: E402
from lifelong.studystore import list_studies, mask_password, open_storage, trials_frame  # noqa: E402

FloatD = optuna.distributions.FloatDistribution
# study.ask() on a heartbeat storage warns that the heartbeat only runs inside Study.optimize
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


def test_default_is_a_sqlite_file_in_the_folder_with_lock_timeout_and_heartbeat(tmp_path):
    storage = open_storage(None, tmp_path / "new" / "folder")
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert storage.url == f"sqlite:///{(tmp_path / 'new' / 'folder' / 'studies.db').resolve()}"
    assert (tmp_path / "new" / "folder" / "studies.db").exists()
    assert storage.engine_kwargs == {"connect_args": {"timeout": 60}}
    assert (storage.heartbeat_interval, storage.grace_period) == (30, 120)


def test_a_db_path_and_a_sqlite_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_storage("mine.db", Path("unused")).url == f"sqlite:///{tmp_path / 'mine.db'}"
    assert open_storage("sqlite:///rel.db", Path("unused")).url == "sqlite:///rel.db"
    assert (tmp_path / "rel.db").exists() and not Path("unused").exists()
    same = open_storage(f"sqlite:///{tmp_path / 'mine.db'}", Path("unused"))
    optuna.create_study(study_name="s", storage=open_storage("mine.db", Path("unused")))
    assert [s["name"] for s in list_studies(same)] == ["s"]


@pytest.mark.parametrize("value, message", [
    ("studies.txt", "'studies.txt' is not a study store; use nothing"),
    ("mysql://u@h/db", "'mysql://u@h/db' is not a study store"),
    ("postgres://u:pw@h/db", r"'postgres://u:\*\*\*@h/db' is not a study store \(PostgreSQL URLs "
                             r"begin postgresql://\)"),
    ("sqlite://", "is not a study store"),
    ("{tmp}/no/such/folder/s.db", "folder .*/no/such/folder does not exist"),
    ("sqlite:///{tmp}/nope/s.db", "folder .*/nope does not exist"),
    ("{tmp}/afolder.db", "is a folder; name a SQLite file in it"),
    ("{tmp}/text.db", r"cannot open it as a SQLite study store \(file is not a database\)"),
])
def test_bad_values_are_one_config_error_naming_them(tmp_path, value, message):
    (tmp_path / "afolder.db").mkdir()
    (tmp_path / "text.db").write_text("not a database " * 100)
    value = value.format(tmp=tmp_path)
    with pytest.raises(ConfigError, match=message) as info:
        open_storage(value, tmp_path)
    assert "\n" not in str(info.value)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_postgres_is_one_line_with_password_masked(tmp_path):
    pytest.importorskip("psycopg2")
    url = f"postgresql://alice:s3cret@127.0.0.1:{_free_port()}/studies"
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        open_storage(url, tmp_path)
    msg = str(info.value)
    assert time.monotonic() - start < 10
    assert "\n" not in msg and "s3cret" not in msg and "Traceback" not in msg
    assert msg.startswith(f"--storage postgresql://alice:***@127.0.0.1:")
    assert "cannot connect to the PostgreSQL server" in msg and "Connection refused" in msg


def test_mask_password():
    assert mask_password("postgresql://u:p@ss@h:5/db") == "postgresql://u:***@h:5/db"  # raw '@'
    assert mask_password("postgresql://u:pw@h:5/db") == "postgresql://u:***@h:5/db"
    assert mask_password("postgresql://u@h:5/db") == "postgresql://u@h:5/db"
    assert mask_password("/some/path.db") == "/some/path.db"


def test_postgres_url_gets_the_installed_driver_and_works(postgres_url, tmp_path):
    storage = open_storage(postgres_url, tmp_path)
    assert storage.url.startswith("postgresql+psycopg2://")  # SQLAlchemy 2.1 would pick psycopg 3
    assert (storage.heartbeat_interval, storage.grace_period) == (30, 120)
    assert storage.engine_kwargs["connect_args"] == {"connect_timeout": 10}
    name = f"pg-{uuid.uuid4().hex}"  # unique also on a shared LIFELONG_TEST_POSTGRES_URL
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions={"x": FloatD(0, 1)},
                                              value=2.5))
    again = open_storage(postgres_url.replace("postgresql://", "postgresql+psycopg2://"), tmp_path)
    mine = [s for s in list_studies(again) if s["name"] == name]
    assert mine and mine[0]["best_value"] == 2.5 and mine[0]["direction"] == "maximize"
    assert [r["params"] for r in trials_frame(again, name)] == [{"x": 0.5}]


def _fill(storage):
    """Two studies with hand-picked trials."""
    d = {"lr": FloatD(1e-4, 1.0, log=True)}
    low = optuna.create_study(study_name="b-min", storage=storage)
    low.set_user_attr("strategy", "er")
    for lr, value in ((0.1, 0.40), (0.01, 0.25), (0.001, 0.30)):
        low.add_trial(optuna.trial.create_trial(params={"lr": lr}, distributions=d, value=value,
                                                user_attrs={"run": f"runs/{lr}"}))
    low.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                            params={"lr": 0.5}, distributions=d))
    low.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED,
                                            params={"lr": 0.2}, distributions=d))
    high = optuna.create_study(study_name="a-max", storage=storage, direction="maximize")
    high.add_trial(optuna.trial.create_trial(params={"lr": 0.1}, distributions=d, value=0.7))
    high.add_trial(optuna.trial.create_trial(params={"lr": 0.2}, distributions=d, value=0.9))
    running = high.ask()  # never told: RUNNING
    return running


def test_list_studies(tmp_path):
    storage = open_storage(None, tmp_path)
    _fill(storage)
    optuna.create_study(study_name="c-empty", storage=storage)
    optuna.create_study(study_name="d-two", storage=storage, directions=["minimize", "maximize"])
    studies = list_studies(storage)
    assert [s["name"] for s in studies] == ["a-max", "b-min", "c-empty", "d-two"]
    a, b, c, d = studies
    zero = {s.name: 0 for s in optuna.trial.TrialState}
    assert b == {"name": "b-min", "direction": "minimize",
                 "n_trials": {**zero, "COMPLETE": 3, "FAIL": 1, "PRUNED": 1},
                 "best_value": 0.25, "best_trial": 1, "user_attrs": {"strategy": "er"}}
    assert a["direction"] == "maximize" and (a["best_value"], a["best_trial"]) == (0.9, 1)
    assert a["n_trials"] == {**zero, "COMPLETE": 2, "RUNNING": 1}
    assert (c["best_value"], c["best_trial"], c["n_trials"]) == (None, None, zero)
    assert d["direction"] == ["minimize", "maximize"] and d["best_value"] is None


def test_trials_frame(tmp_path):
    storage = open_storage(None, tmp_path)
    _fill(storage)
    rows = trials_frame(storage, "b-min")
    assert [(r["number"], r["state"], r["value"], r["params"]) for r in rows] == [
        (0, "COMPLETE", 0.40, {"lr": 0.1}), (1, "COMPLETE", 0.25, {"lr": 0.01}),
        (2, "COMPLETE", 0.30, {"lr": 0.001}), (3, "FAIL", None, {"lr": 0.5}),
        (4, "PRUNED", None, {"lr": 0.2})]
    assert rows[1]["user_attrs"] == {"run": "runs/0.01"}
    assert all(isinstance(r["duration_s"], float) and r["duration_s"] >= 0 for r in rows)
    a_rows = trials_frame(storage, "a-max")
    assert a_rows[-1]["state"] == "RUNNING" and a_rows[-1]["duration_s"] is None
    with pytest.raises(ConfigError, match="no study 'zzz' in this store; it has: a-max, b-min"):
        trials_frame(storage, "zzz")


def test_trials_frame_several_objectives(tmp_path):
    storage = open_storage(None, tmp_path)
    study = optuna.create_study(study_name="two", storage=storage,
                                directions=["minimize", "maximize"])
    study.add_trial(optuna.trial.create_trial(values=[1.0, 2.0]))
    assert trials_frame(storage, "two")[0]["value"] == [1.0, 2.0]


def test_heartbeat_fails_a_trial_whose_process_died(tmp_path, monkeypatch):
    """The heartbeat is what stops a crashed worker's trial from staying RUNNING for ever
    (shortened here from 30 s / 120 s)."""
    monkeypatch.setattr(studystore, "HEARTBEAT_INTERVAL_S", 1)
    monkeypatch.setattr(studystore, "GRACE_PERIOD_S", 1)
    storage = open_storage(None, tmp_path)
    study = optuna.create_study(study_name="hb", storage=storage)
    dead = study.ask()  # a worker asked for a trial ...
    storage.record_heartbeat(dead._trial_id)  # ... beat once, then died
    time.sleep(2.2)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert [r["state"] for r in trials_frame(storage, "hb")] == ["FAIL", "COMPLETE"]


# --- several processes opening a NEW store at the same moment ----------------------------

def _open_many(wheres: list[str], barrier, queue, retries: int) -> None:
    """One worker: open each store right when the others do (Optuna then creates its tables)."""
    studystore.INIT_RETRIES = retries
    for where in wheres:
        barrier.wait(timeout=60)
        try:
            open_storage(where, Path("."))
            queue.put("ok")
        except Exception as e:
            queue.put(f"{type(e).__name__}: {e}")


def open_new_stores_at_once(wheres: list[str], n_procs: int = 4, retries: int | None = None):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue, barrier = ctx.Queue(), ctx.Barrier(n_procs)
    retries = studystore.INIT_RETRIES if retries is None else retries
    procs = [ctx.Process(target=_open_many, args=(wheres, barrier, queue, retries))
             for _ in range(n_procs)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in range(n_procs * len(wheres))]
    for p in procs:
        p.join(timeout=60)
    return results


@pytest.mark.slow  # spawns Python processes: seconds
def test_processes_opening_a_new_sqlite_store_at_once_all_succeed(tmp_path):
    """Without the retry, 4 processes opening a new SQLite file failed in 7 of 10 tries here
    ("table studies already exists", "UNIQUE constraint failed: alembic_version.version_num")."""
    results = open_new_stores_at_once([str(tmp_path / f"new{i}.db") for i in range(3)])
    assert results == ["ok"] * len(results)


@pytest.mark.slow  # spawns Python processes: seconds
def test_processes_opening_a_new_postgres_store_at_once_all_succeed(postgres_url):
    """Without the retry this failed every time ("duplicate key value violates unique
    constraint pg_type_typname_nsp_index", "relation alembic_version already exists")."""
    psycopg2 = pytest.importorskip("psycopg2")
    base, wheres = postgres_url.rsplit("/", 1)[0], []
    conn = psycopg2.connect(postgres_url)
    conn.autocommit = True  # CREATE DATABASE refuses to run in a transaction
    with conn.cursor() as cur:
        for _ in range(3):
            name = f"fresh_{uuid.uuid4().hex}"
            cur.execute(f"CREATE DATABASE {name}")
            wheres.append(f"{base}/{name}")
    conn.close()
    results = open_new_stores_at_once(wheres)
    assert results == ["ok"] * len(results)
