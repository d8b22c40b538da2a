import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture
def write_user_module(tmp_path, monkeypatch):
    """Write ``source`` as module ``name`` in a fresh folder on sys.path and import it, as a user's
    own network code would be; the module is forgotten again after the test. ``allow``: put it
    on the allow-list of modules a config may name (``LIFELONG_ALLOW_MODULES``, restored after
    the test), as its user would."""
    import importlib
    import os
    import sys

    from lifelong.registry import ENV

    def write(name: str, source: str, allow: bool = True):
        folder = tmp_path / f"user-{name}"
        folder.mkdir()
        (folder / f"{name}.py").write_text(source)
        monkeypatch.syspath_prepend(str(folder))
        monkeypatch.delitem(sys.modules, name, raising=False)
        if allow:
            monkeypatch.setenv(ENV, ",".join(filter(None, [os.environ.get(ENV, ""), name])))
        module = importlib.import_module(name)
        monkeypatch.setitem(sys.modules, name, module)  # removed again at teardown
        return module

    return write


@pytest.fixture(scope="session")
def postgres_url():
    """The URL of a real PostgreSQL database for this test session (`tests/pg_server.py`: the
    Debian package's server binaries in a temporary folder, as an unprivileged user when run
    as root), stopped and removed at the end; ``LIFELONG_TEST_POSTGRES_URL`` names an existing
    one instead (a CI service container). Skips, saying why and how to fix it, when no server
    can be started."""
    import os

    external = os.environ.get("LIFELONG_TEST_POSTGRES_URL")
    if external:
        yield external
        return
    from pg_server import PostgresServer, Unavailable

    server = PostgresServer()
    try:
        url = server.start()
    except Unavailable as e:
        pytest.skip(f"cannot start a PostgreSQL server for this test: {e}")
    try:
        yield url
    finally:
        server.stop()
