"""The throw-away PostgreSQL server (`tests/pg_server.py`, fixture `postgres_url`) and which Optuna
storages keep every trial when two processes optimise one study at once."""
import multiprocessing
import os
import uuid
from pathlib import Path

import pytest

import pg_server

optuna = pytest.importorskip("optuna")

N_PROCS, N_TRIALS = 2, 20


def test_missing_binaries_skip_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("LIFELONG_PG_BIN", str(tmp_path))  # a folder without initdb
    with pytest.raises(pg_server.Unavailable, match="apt-get install postgresql"):
        pg_server.PostgresServer().start()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root must switch to another user")
def test_root_without_an_unprivileged_user_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(pg_server, "find_bin_dir", lambda: tmp_path)
    monkeypatch.setattr(pg_server, "RUN_AS", ("no-such-user-lifelong",))
    with pytest.raises(pg_server.Unavailable, match="refuses root.*no-such-user-lifelong"):
        pg_server.PostgresServer().start()


def _running(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def test_server_starts_as_non_root_and_leaves_nothing_behind():
    psycopg2 = pytest.importorskip("psycopg2")
    server = pg_server.PostgresServer()
    try:
        url = server.start()
    except pg_server.Unavailable as e:
        pytest.skip(str(e))
    folder, pid = server.folder, server._postmaster_pid()
    try:
        assert url.startswith("postgresql://lifelong@127.0.0.1:")
        assert pid is not None and _uid_of(pid) != 0  # PostgreSQL refuses root
        assert (server.socket_dir / f".s.PGSQL.{server.port}").exists()  # socket in our folder
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("select current_database(), current_user")
            assert cur.fetchone() == ("lifelong_test", "lifelong")
        conn.close()
    finally:
        server.stop()
    assert not folder.exists()
    assert not _running(pid)
    server.stop()  # twice is harmless


# --- two processes, one study ------------------------------------------------------------

def _storage(kind: str, where: str):
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(where))
    from lifelong.studystore import open_storage

    return open_storage(where, Path("."))


def _optimize(kind: str, where: str, study_name: str, queue) -> None:
    """One worker process: N_TRIALS trials of a trivial objective on the shared study."""
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=study_name, storage=_storage(kind, where))
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=N_TRIALS)
        queue.put("ok")
    except BaseException as e:  # report it to the parent: a child's traceback is easy to miss
        queue.put(f"{type(e).__name__}: {e} (cause: {e.__cause__!r})")


@pytest.fixture(params=["postgresql", "sqlite", "journal"])
def store(request, tmp_path):
    if request.param == "postgresql":
        return "rdb", request.getfixturevalue("postgres_url")
    if request.param == "sqlite":
        return "rdb", f"sqlite:///{tmp_path / 'studies.db'}"
    return "journal", str(tmp_path / "journal.log")


@pytest.mark.slow  # spawns Python processes: seconds
def test_two_processes_lose_no_trial(store):
    kind, where = store
    name = f"concurrent-{uuid.uuid4().hex}"  # unique also on a shared LIFELONG_TEST_POSTGRES_URL
    optuna.create_study(study_name=name, storage=_storage(kind, where))
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_optimize, args=(kind, where, name, queue)) for _ in range(N_PROCS)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == ["ok"] * N_PROCS
    trials = optuna.load_study(study_name=name, storage=_storage(kind, where)).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * (N_PROCS * N_TRIALS)
    assert sorted(t.number for t in trials) == list(range(N_PROCS * N_TRIALS))
