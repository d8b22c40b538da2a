"""Datasets that cannot ship with the library, read from a folder the user gives.

| name       | folder (``data_dir``)                                                        |
|------------|------------------------------------------------------------------------------|
| ``cifar10``  | ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``, ``batches.meta``) |
| ``cifar100`` | ``cifar-100-python/`` (``train``, ``test``, ``meta``)                        |
| ``npz``      | ``train.npz`` and ``test.npz`` (arrays ``x``, ``y``), optional ``classes.txt``   |

Point to the folder with ``benchmark.data_dir`` in the config or ``--data-dir`` on the command
line. ``data_dir`` may be the folder that holds ``cifar-10-batches-py`` /
``cifar-100-python`` (where the official archive was extracted) or that folder itself.

CIFAR pickles are read with :func:`~lifelong.data.base.safe_unpickle` (numpy arrays and plain
containers only, never arbitrary objects). A file with the official name and size is checked
against the official md5; a mismatch means it is corrupted and nothing is loaded. Smaller files
(subsets, test fixtures) in the same format are read without a checksum. ``.npz`` files are read
with ``allow_pickle=False``; features (a float ``x``) must be finite: a file with NaN or infinite
values is refused at load, with its name and the count.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DatasetError
from .base import DatasetSplits, TensorDataset, as_uint8_images, safe_unpickle

HOW_TO_POINT = ("Point to the folder with the config key benchmark.data_dir (data_dir: /path/to/folder) "
                "or the CLI flag --data-dir /path/to/folder.")

# name -> (official size in bytes, official md5), from the archives at https://www.cs.toronto.edu/~kriz/cifar.html
CIFAR10_FILES = {
    "data_batch_1": (31035704, "c99cafc152244af753f735de768cd75f"),
    "data_batch_2": (31035320, "d4bba439e000b95fd0a9bffe97cbabec"),
    "data_batch_3": (31035999, "54ebc095f3ab1f0389bbae665268c751"),
    "data_batch_4": (31035696, "634d18415352ddfa80567beed471001a"),
    "data_batch_5": (31035623, "482c414d41f54cd18b22e5b47cb7c3cb"),
    "test_batch": (31035526, "40351d587109b95175f43aff81a1287e"),
    "batches.meta": (158, "5ff9c542aee3614f3951f8cda6e48888"),
}
CIFAR100_FILES = {
    "train": (155249918, "16019d7e3df5f24257cddd939b257f8d"),
    "test": (31049707, "f0ef6b0ae62326f3e7ffdfab6717acfc"),
    "meta": (1473, "7973b15100ade9c7d40fb424638fde48"),
}
CIFAR10_LAYOUT = ("<data_dir>/cifar-10-batches-py/ holding data_batch_1 ... data_batch_5, test_batch and "
                  "batches.meta (the extracted cifar-10-python.tar.gz from "
                  "https://www.cs.toronto.edu/~kriz/cifar.html; data_dir may also be the cifar-10-batches-py "
                  "folder itself)")
CIFAR100_LAYOUT = ("<data_dir>/cifar-100-python/ holding train, test and meta (the extracted "
                   "cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html; data_dir may also be "
                   "the cifar-100-python folder itself)")
NPZ_LAYOUT = ("<data_dir>/train.npz and <data_dir>/test.npz, each with an array 'x' (uint8 images (N, H, W) or "
              "(N, H, W, C), or features (N, D)) and an int array 'y' of labels 0..K-1; optionally "
              "<data_dir>/classes.txt with one class name per line")


def _data_dir(data_dir: str | Path | None, dataset: str, layout: str) -> Path:
    if data_dir is None:
        raise DatasetError(f"{dataset} does not ship with lifelong: download it yourself and give its folder. "
                           f"Expected layout: {layout}. {HOW_TO_POINT}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{dataset}: data_dir {root} does not exist or is not a folder. "
                           f"Expected layout: {layout}. {HOW_TO_POINT}")
    return root


def _files_in(data_dir, dataset: str, subfolder: str, names: list[str], layout: str, archive: str) -> Path:
    """The folder holding ``names``: ``data_dir/subfolder`` if it exists, else ``data_dir``."""
    given = _data_dir(data_dir, dataset, layout)
    root = given / subfolder if (given / subfolder).is_dir() else given
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        hint = ""
        if (given / archive).is_file():
            hint = f" {given / archive} is there but not extracted: run 'tar xzf {archive}' in {given}."
        raise DatasetError(f"{dataset}: missing {', '.join(missing)} in {root}.{hint} Expected layout: {layout}. "
                           f"{HOW_TO_POINT}")
    return root


def _read_official(path: Path, official: tuple[int, str]) -> bytes:
    """Read ``path``; a file of the official size must have the official md5."""
    data = path.read_bytes()
    size, md5 = official
    if len(data) == size:
        got = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if got != md5:
            raise DatasetError(f"{path} is corrupted: md5 {got} does not match the official {md5}; it was not loaded. "
                               "Download and extract the archive again.")
    return data


def _field(d: dict, key: str):
    """``d[key]`` where the key may be ``str`` (official Python 2 pickles) or ``bytes``."""
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    raise KeyError(key)


def _text(s) -> str:
    return s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s)


def _read_cifar_pickle(path: Path, official: tuple[int, str]) -> dict:
    data = _read_official(path, official)
    try:
        obj = safe_unpickle(data)
    except DatasetError as exc:
        raise DatasetError(f"{path}: {exc}; it was not loaded") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} is not in the CIFAR python format (expected a pickled dict, got "
                           f"{type(obj).__name__})")
    return obj


def _cifar_batch(path: Path, official: tuple[int, str], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    d = _read_cifar_pickle(path, official)
    try:
        x = np.asarray(_field(d, "data"))
        y = np.asarray(_field(d, label_key))
    except KeyError as exc:
        keys = ", ".join(sorted(_text(k) for k in d))
        raise DatasetError(f"{path} has no '{exc.args[0]}' entry (keys: {keys}); is it the right CIFAR file?") from None
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{path}: 'data' must be uint8 of shape (N, 3072), got {x.dtype} {x.shape}")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{path}: '{label_key}' must be {len(x)} integers, got {y.dtype} {y.shape}")
    return as_uint8_images(x.reshape(-1, 3, 32, 32)), torch.from_numpy(y.astype(np.int64))


def _class_names(path: Path, official: tuple[int, str], key: str) -> list[str]:
    d = _read_cifar_pickle(path, official)
    try:
        return [_text(s) for s in _field(d, key)]
    except KeyError:
        raise DatasetError(f"{path} has no '{key}' entry; is it the right CIFAR meta file?") from None


def _check_labels(name: str, y: torch.Tensor, n: int) -> None:
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= n):
        raise DatasetError(f"{name}: labels must lie in 0..{n - 1}, got {int(y.min())}..{int(y.max())}")


def cifar10(data_dir: str | Path | None = None) -> DatasetSplits:
    """CIFAR-10 (50000 / 10000 images, uint8 (N, 3, 32, 32), 10 classes) from its python version."""
    root = _files_in(data_dir, "CIFAR-10", "cifar-10-batches-py", list(CIFAR10_FILES), CIFAR10_LAYOUT,
                     "cifar-10-python.tar.gz")
    classes = _class_names(root / "batches.meta", CIFAR10_FILES["batches.meta"], "label_names")
    parts = [_cifar_batch(root / f"data_batch_{i}", CIFAR10_FILES[f"data_batch_{i}"], "labels") for i in range(1, 6)]
    xte, yte = _cifar_batch(root / "test_batch", CIFAR10_FILES["test_batch"], "labels")
    xtr, ytr = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    for y in (ytr, yte):
        _check_labels(f"CIFAR-10 in {root}", y, len(classes))
    return DatasetSplits(TensorDataset("cifar10", xtr, ytr, classes), TensorDataset("cifar10", xte, yte, classes))


def cifar100(data_dir: str | Path | None = None, label_type: str = "fine") -> DatasetSplits:
    """CIFAR-100 (50000 / 10000 images, uint8 (N, 3, 32, 32)) with its 100 fine or 20 coarse labels."""
    if label_type not in ("fine", "coarse"):
        raise ConfigError(f"CIFAR-100 label_type must be 'fine' or 'coarse', got {label_type!r}")
    root = _files_in(data_dir, "CIFAR-100", "cifar-100-python", list(CIFAR100_FILES), CIFAR100_LAYOUT,
                     "cifar-100-python.tar.gz")
    key = f"{label_type}_labels"
    classes = _class_names(root / "meta", CIFAR100_FILES["meta"], f"{label_type}_label_names")
    xtr, ytr = _cifar_batch(root / "train", CIFAR100_FILES["train"], key)
    xte, yte = _cifar_batch(root / "test", CIFAR100_FILES["test"], key)
    for y in (ytr, yte):
        _check_labels(f"CIFAR-100 in {root}", y, len(classes))
    name = "cifar100" if label_type == "fine" else "cifar100_coarse"
    return DatasetSplits(TensorDataset(name, xtr, ytr, classes), TensorDataset(name, xte, yte, classes))


def _load_npz(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise DatasetError(f"{path} is not an .npz archive (np.savez writes one). Expected layout: {NPZ_LAYOUT}")
        with f:
            if "x" not in f.files or "y" not in f.files:
                raise DatasetError(f"{path} must hold arrays 'x' and 'y', it holds: {', '.join(f.files) or 'nothing'}. "
                                   f"Expected layout: {NPZ_LAYOUT}")
            x, y = f["x"], f["y"]
    except DatasetError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:  # corrupted, or object arrays
        raise DatasetError(f"could not read {path} as an .npz of plain arrays ({exc}); it was not loaded") from None
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{path}: 'y' must be a 1-d int array of labels, got {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise DatasetError(f"{path}: {len(x)} inputs in 'x' but {len(y)} labels in 'y'")
    if len(y) and y.min() < 0:
        raise DatasetError(f"{path}: labels must be 0..K-1, found {y.min()}")
    if x.ndim == 2 and np.issubdtype(x.dtype, np.number):
        if np.issubdtype(x.dtype, np.inexact):  # NaN or inf features would train a NaN model
            bad = ~np.isfinite(x)
            if bad.any():
                rows = int(bad.any(axis=1).sum())
                raise DatasetError(f"{path}: 'x' holds {int(bad.sum())} NaN or infinite values (in {rows} of "
                                   f"{len(x)} samples); it was not loaded. Remove or impute them first")
        with np.errstate(over="ignore"):  # overflow is reported below, as a DatasetError
            xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if not torch.isfinite(xt).all():  # finite in float64 but beyond float32's range
            n = int((~torch.isfinite(xt)).sum())
            raise DatasetError(f"{path}: 'x' holds {n} values beyond float32's range (they become infinite); "
                               "it was not loaded. Rescale the features first")
    elif x.ndim in (3, 4) and x.dtype == np.uint8:
        xt = as_uint8_images(x, channels_last=True)
    else:
        raise DatasetError(f"{path}: 'x' must be uint8 images (N, H, W) / (N, H, W, C) or features (N, D), "
                           f"got {x.dtype} {x.shape}")
    return xt, torch.from_numpy(y.astype(np.int64))


def npz_folder(data_dir: str | Path | None = None) -> DatasetSplits:
    """A dataset from ``train.npz`` / ``test.npz`` (and optional ``classes.txt``) in ``data_dir``."""
    root = _data_dir(data_dir, "npz dataset", NPZ_LAYOUT)
    missing = [n for n in ("train.npz", "test.npz") if not (root / n).is_file()]
    if missing:
        raise DatasetError(f"npz dataset: missing {', '.join(missing)} in {root}. Expected layout: {NPZ_LAYOUT}. "
                           f"{HOW_TO_POINT}")
    xtr, ytr = _load_npz(root / "train.npz")
    xte, yte = _load_npz(root / "test.npz")
    if xtr.shape[1:] != xte.shape[1:] or xtr.dtype != xte.dtype:
        raise DatasetError(f"npz dataset in {root}: train x is {xtr.dtype} {tuple(xtr.shape[1:])} per sample but "
                           f"test x is {xte.dtype} {tuple(xte.shape[1:])}; they must match")
    n = int(max(ytr.max() if len(ytr) else -1, yte.max() if len(yte) else -1)) + 1
    classes_file = root / "classes.txt"
    if classes_file.is_file():
        classes = [line.strip() for line in classes_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(classes) < n:
            raise DatasetError(f"{classes_file} names {len(classes)} classes but the labels go up to {n - 1}")
    else:
        classes = [str(i) for i in range(n)]
    name = root.resolve().name or "npz"
    return DatasetSplits(TensorDataset(name, xtr, ytr, classes), TensorDataset(name, xte, yte, classes))
