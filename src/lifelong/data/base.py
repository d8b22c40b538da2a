"""In-memory datasets as tensors, and the safe readers every loader uses.

A :class:`TensorDataset` holds images as a ``uint8`` tensor of shape (N, C, H, W) (or features
as ``float32`` of shape (N, D)) and labels as ``int64``. Loaders check a file's sha256 before
they read it, and read pickles with an unpickler that accepts numpy arrays and nothing else.
"""
from __future__ import annotations

import hashlib
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError

_ALLOWED_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


def _latin1_encode(text: str = "", encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``: protocol-2 pickles written by Python 3 rebuild every
    ``bytes`` object (CIFAR keys such as ``b'data'``) as ``_codecs.encode(text, 'latin1')``.
    Only that exact call is allowed; any other codec is refused."""
    if not isinstance(text, str) or not isinstance(encoding, str) or \
            encoding.lower().replace("-", "").replace("_", "") != "latin1":
        raise DatasetError("refusing to unpickle _codecs.encode with anything but (str, 'latin1')")
    return text.encode("latin1")


def _empty_bytes(*args) -> bytes:
    """Stand-in for ``bytes``: protocol-2 pickles store ``b''`` as the call ``bytes()``."""
    if args:
        raise DatasetError("refusing to unpickle bytes(...) with arguments")
    return b""


# Globals that are replaced by a restricted stand-in rather than looked up.
_SAFE_PICKLE_STANDINS = {
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "bytes"): _empty_bytes,  # name as written by protocol < 3 (fix_imports)
    ("builtins", "bytes"): _empty_bytes,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_PICKLE_STANDINS:
            return _SAFE_PICKLE_STANDINS[(module, name)]
        if (module, name) not in _ALLOWED_PICKLE_GLOBALS:
            raise DatasetError(
                f"refusing to unpickle {module}.{name}: dataset pickles may only contain numpy "
                "arrays, lists, tuples, dicts, numbers, strings and bytes"
            )
        return super().find_class(module, name)


def safe_unpickle(data: bytes):
    """Unpickle ``data`` allowing only numpy arrays and plain Python containers, numbers,
    strings and bytes (Python 2 ``str`` comes back as latin-1 ``str``, as numpy expects)."""
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except DatasetError:
        raise
    except Exception as exc:  # truncated or garbled pickle
        raise DatasetError(f"could not read pickle: {exc}") from exc


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_verified(path: Path, sha256: str | None) -> bytes:
    """Read ``path`` after checking its sha256; a mismatch is an error and nothing is loaded."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}")
    data = path.read_bytes()
    if sha256 is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise DatasetError(
                f"{path} is corrupted: sha256 {got} does not match the expected {sha256}. "
                "Reinstall the package that provides it (or restore the file); it was not loaded."
            )
    return data


class Labelled:
    """What labelled datasets share (tensors here, texts in ``lifelong.data.text``): ``name``,
    int64 labels ``y`` aligned with the inputs, ``class_names``."""

    def _check_labels(self, n_inputs: int, what: str) -> None:
        if n_inputs != len(self.y):
            raise DatasetError(f"{self.name}: {n_inputs} {what} but {len(self.y)} labels")
        self.y = self.y.long()

    def __len__(self) -> int:
        return len(self.y)

    @property
    def n_classes(self) -> int:
        return len(self.class_names) if self.class_names else int(self.y.max()) + 1


@dataclass
class TensorDataset(Labelled):
    """A labelled dataset held in memory.

    ``x`` is uint8 (N, C, H, W) for images or float32 (N, D) for features; ``y`` is int64 (N,).
    """

    name: str
    x: torch.Tensor
    y: torch.Tensor
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._check_labels(len(self.x), "inputs")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, index: torch.Tensor) -> "TensorDataset":
        return TensorDataset(self.name, self.x[index], self.y[index], self.class_names)

    def to_float(self) -> torch.Tensor:
        """Inputs as float32; uint8 images are scaled to [0, 1] (done once per stream)."""
        if self.x.dtype == torch.uint8:
            return self.x.float().div_(255.0)
        return self.x.float()


class Splits:
    """What train/test split pairs share (tensor datasets here, texts in ``lifelong.data.text``)."""

    @property
    def name(self) -> str:
        return self.train.name

    @property
    def n_classes(self) -> int:
        return max(self.train.n_classes, self.test.n_classes)


@dataclass
class DatasetSplits(Splits):
    """A dataset's official train and test splits."""

    train: TensorDataset
    test: TensorDataset


def as_uint8_images(arr: np.ndarray, channels_last: bool = False) -> torch.Tensor:
    """(N, H, W) or (N, H, W, C)/(N, C, H, W) numpy array -> uint8 tensor (N, C, H, W)."""
    t = torch.from_numpy(np.array(arr, copy=True, order="C"))
    if t.dtype != torch.uint8:
        raise DatasetError(f"expected uint8 images, got {t.dtype}")
    if t.ndim == 3:
        t = t.unsqueeze(1)
    elif t.ndim == 4 and channels_last:
        t = t.permute(0, 3, 1, 2).contiguous()
    return t
