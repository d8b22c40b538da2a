import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture
def write_user_module(tmp_path, monkeypatch):
    """Write ``source`` as module ``name`` in a fresh folder on sys.path and import it, as a user's
    own network code would be; the module is forgotten again after the test."""
    import importlib
    import sys

    def write(name: str, source: str):
        folder = tmp_path / f"user-{name}"
        folder.mkdir()
        (folder / f"{name}.py").write_text(source)
        monkeypatch.syspath_prepend(str(folder))
        monkeypatch.delitem(sys.modules, name, raising=False)
        module = importlib.import_module(name)
        monkeypatch.setitem(sys.modules, name, module)  # removed again at teardown
        return module

    return write
