"""An on-disk cache of features: a dataset split under a frozen extractor, computed once.

Where: ``cache_dir`` if given, else ``$LIFELONG_CACHE_DIR``, else ``~/.cache/lifelong/features``.

Key: a JSON dict of the dataset (name, split, number of samples, input shape and a sha256
fingerprint of its raw tensors or texts and labels) and the extractor's ``identity()`` (backbone,
sha256 of its weights file, preprocessing such as the image size). The file name is made of the
dataset name, the split, the backbone and a hash of the key's *settings* (every field except the
content hashes), so the same settings always map to the same file; the full key, content hashes
included, is stored inside the file and compared on load.

File format (version 1)::

    8 bytes   magic b"LLFEAT01"
    8 bytes   header length, unsigned little-endian
    header    JSON: {"format": 1, "key": ..., "x": {"dtype", "shape"}, "y": {"dtype", "shape"},
                     "byteorder": "little", "payload_bytes": ..., "payload_sha256": ...}
    payload   x (float32, row-major) then y (int64)

On load, a file whose stored key differs from the expected one is *stale* (the dataset, the
weights or the code changed); a file with a wrong magic, an unreadable header, a short payload
(truncated) or a payload whose sha256 does not match is *corrupt*. Either way a
:class:`FeatureCacheWarning` names the file and the reason, and the features are recomputed and
the file replaced; a bad file is never used. Files are written to a temporary name in the cache
folder, flushed to disk and renamed over the final name (:func:`lifelong.io.atomic_open`), so
readers never see a half-written file and concurrent writers do not interfere. The cache writes
only inside its own folder, only files named ``*.lfeat`` (and their temporary siblings), and never
deletes anything else.

Features are stored as float32: the cached tensors are exactly those a run without the cache
would compute, so runs that read the cache give the same numbers as the run that wrote it
(float16 would halve the files but change the inputs of every method).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import LifelongError
from ..io import atomic_open

CACHE_ENV = "LIFELONG_CACHE_DIR"
MAGIC = b"LLFEAT01"
FORMAT = 1
SUFFIX = ".lfeat"
#: key fields that hold content hashes; the file name is derived from the other fields
CONTENT_FIELDS = frozenset({"fingerprint", "n", "weights_sha256", "source_sha256", "code"})


class FeatureCacheWarning(UserWarning):
    """A cache file was stale or corrupt; it was not used and the features were recomputed."""


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lifelong" / "features"


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _settings(obj):
    """The key without its content hashes (what the file name is derived from)."""
    if isinstance(obj, dict):
        return {k: _settings(v) for k, v in obj.items() if k not in CONTENT_FIELDS}
    return obj


def _slug(s: str, limit: int = 48) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", str(s))[:limit].strip(".") or "x"


class _Bad(Exception):
    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


class FeatureCache:
    """Features on disk, keyed by dataset and extractor; see the module docstring.

    ``get(key, compute)`` returns ``(x, y)``: from the file when it holds exactly ``key`` and is
    intact, else from ``compute()`` (which must return float32 (N, D) features and int64 (N,)
    labels), stored for next time. ``hits``, ``misses`` and ``rebuilt`` count what happened.
    """

    def __init__(self, cache_dir: str | Path | None = None, log: Callable[[str], None] | None = None):
        self.dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        if self.dir.exists() and not self.dir.is_dir():
            raise LifelongError(f"feature cache folder {self.dir} exists and is not a folder")
        self.log = log
        self.hits = self.misses = self.rebuilt = 0

    def path_for(self, key: dict) -> Path:
        ds, ex = key.get("dataset", {}), key.get("extractor", {})
        slot = hashlib.sha256(_canonical(_settings(key)).encode()).hexdigest()[:16]
        stem = "-".join(_slug(p) for p in (ds.get("name", "data"), ds.get("split", "all"),
                                             ex.get("backbone", "features")))
        return self.dir / f"{stem}-{slot}{SUFFIX}"

    # --- reading ------------------------------------------------------------------------------
    def _read(self, path: Path, key: dict) -> tuple[torch.Tensor, torch.Tensor]:
        with open(path, "rb") as f:
            head = f.read(16)
            if len(head) < 16 or head[:8] != MAGIC:
                raise _Bad("corrupt", "not a lifelong feature file or truncated (bad magic)")
            (hlen,) = struct.unpack("<Q", head[8:])
            size = path.stat().st_size
            if hlen > size - 16:
                raise _Bad("corrupt", "truncated header")
            try:
                header = json.loads(f.read(hlen).decode("utf-8"))
                stored_key, nbytes, digest = header["key"], int(header["payload_bytes"]), header["payload_sha256"]
                xs, ys = [int(v) for v in header["x"]["shape"]], [int(v) for v in header["y"]["shape"]]
                ok = (header.get("format") == FORMAT and header["x"]["dtype"] == "float32"
                      and header["y"]["dtype"] == "int64" and header.get("byteorder") == "little"
                      and len(xs) == 2 and ys == xs[:1] and nbytes == xs[0] * xs[1] * 4 + xs[0] * 8)
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
                raise _Bad("corrupt", f"unreadable header ({type(exc).__name__})") from None
            if not ok:
                raise _Bad("corrupt", "header describes an unknown format")
            if _canonical(stored_key) != _canonical(key):
                diff = _key_diff(stored_key, key)
                raise _Bad("stale", f"it was computed for another key ({diff})")
            if size - 16 - hlen != nbytes:
                raise _Bad("corrupt", f"payload is {size - 16 - hlen} bytes, expected {nbytes} (truncated?)")
            buf = bytearray(nbytes)
            if f.readinto(buf) != nbytes:
                raise _Bad("corrupt", "short read")
        if hashlib.sha256(buf).hexdigest() != digest:
            raise _Bad("corrupt", "payload sha256 does not match its checksum")
        n, d = xs
        x = torch.frombuffer(buf, dtype=torch.float32, count=n * d).reshape(n, d) if n * d else \
            torch.empty((n, d), dtype=torch.float32)
        y = torch.frombuffer(buf, dtype=torch.int64, count=n, offset=n * d * 4) if n else \
            torch.empty((0,), dtype=torch.int64)
        if sys.byteorder != "little":  # pragma: no cover - big-endian machines
            x, y = x.numpy().byteswap().view(np.float32), y.numpy().byteswap().view(np.int64)
            x, y = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
        return x, y

    # --- writing ------------------------------------------------------------------------------
    def _write(self, path: Path, key: dict, x: torch.Tensor, y: torch.Tensor) -> None:
        xa = np.ascontiguousarray(x.detach().cpu().numpy(), dtype="<f4")
        ya = np.ascontiguousarray(y.detach().cpu().numpy(), dtype="<i8")
        h = hashlib.sha256()
        h.update(memoryview(xa).cast("B"))
        h.update(memoryview(ya).cast("B"))
        header = json.dumps({"format": FORMAT, "key": key, "x": {"dtype": "float32", "shape": list(xa.shape)},
                             "y": {"dtype": "int64", "shape": list(ya.shape)}, "byteorder": "little",
                             "payload_bytes": xa.nbytes + ya.nbytes, "payload_sha256": h.hexdigest()},
                            sort_keys=True).encode("utf-8")
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as f:  # written in pieces: the payload is not copied into one buffer
            f.write(MAGIC + struct.pack("<Q", len(header)) + header)
            f.write(memoryview(xa).cast("B"))
            f.write(memoryview(ya).cast("B"))

    # --- the one entry point ------------------------------------------------------------------
    def get(self, key: dict, compute: Callable[[], tuple[torch.Tensor, torch.Tensor]]) \
            -> tuple[torch.Tensor, torch.Tensor]:
        key = json.loads(_canonical(key))  # what the file will hold (JSON types)
        path = self.path_for(key)
        if path.is_file():
            t0 = time.perf_counter()
            try:
                x, y = self._read(path, key)
            except _Bad as bad:
                warnings.warn(f"feature cache file {path} is {bad.kind}: {bad.reason}; it was not used, the "
                              "features are recomputed and the file replaced", FeatureCacheWarning, stacklevel=2)
                self.rebuilt += 1
            except OSError as exc:
                warnings.warn(f"feature cache file {path} could not be read ({exc}); the features are "
                              "recomputed", FeatureCacheWarning, stacklevel=2)
                self.rebuilt += 1
            else:
                self.hits += 1
                if self.log:
                    self.log(f"features {path.name}: from the cache ({time.perf_counter() - t0:.2f} s)")
                return x, y
        else:
            self.misses += 1
        x, y = compute()
        x = x.detach().cpu().to(torch.float32).contiguous()
        y = y.detach().cpu().to(torch.int64).contiguous()
        try:
            self._write(path, key, x, y)
            if self.log:
                self.log(f"features stored in {path}")
        except OSError as exc:
            warnings.warn(f"could not write the feature cache file {path} ({exc}); the features are used "
                          "without caching", FeatureCacheWarning, stacklevel=2)
        return x, y

    def files(self) -> list[Path]:
        return sorted(self.dir.glob(f"*{SUFFIX}")) if self.dir.is_dir() else []


def _key_diff(stored, expected, prefix: str = "") -> str:
    """The first field where two keys differ, e.g. ``extractor.weights_sha256: 5793... != 1a2b...``."""
    if isinstance(stored, dict) and isinstance(expected, dict):
        for k in sorted(set(stored) | set(expected)):
            if _canonical(stored.get(k)) != _canonical(expected.get(k)):
                return _key_diff(stored.get(k), expected.get(k), f"{prefix}{k}.")
    s, e = (_canonical(v) for v in (stored, expected))
    short = (lambda v: v if len(v) <= 24 else v[:21] + "...")
    return f"{prefix.rstrip('.')}: stored {short(s)}, expected {short(e)}"
