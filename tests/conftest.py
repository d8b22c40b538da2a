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
