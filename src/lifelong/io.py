"""Atomic file writes, in one place: write a temporary sibling, flush it to disk, rename it over
the target. A reader sees the old file or the new one, never half of one; a crash leaves at
most a hidden ``.NAME.tmp-*`` file, never a truncated target."""
from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from . import faults


@contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` in pieces (large payloads need not be joined in memory
    first): it is a hidden temporary sibling, flushed to disk and renamed over ``path`` when the
    ``with`` block ends; if the block raises, ``path`` is left as it was and the sibling removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "xb") as f:  # "x": never write into a file that exists
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path) as f:
        half = len(data) // 2
        f.write(data[:half])
        faults.point("atomic-write")  # fault-injection tests die here, with half a file written
        f.write(data[half:])


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Strict JSON (non-finite numbers as null: see :func:`to_strict_json`), written atomically."""
    atomic_write_text(path, strict_json_dumps(obj, indent))


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    import io as _io

    import torch

    buf = _io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def to_strict_json(obj: Any, path: str = "") -> tuple[Any, list[str]]:
    """``obj`` with every NaN or infinite float replaced by None (strict JSON has neither), and
    the dotted paths of the values replaced."""
    import math

    if isinstance(obj, float) and not math.isfinite(obj):
        return None, [path or "."]
    if isinstance(obj, dict):
        out, nulled = {}, []
        for k, v in obj.items():
            out[k], n = to_strict_json(v, f"{path}.{k}" if path else str(k))
            nulled += n
        return out, nulled
    if isinstance(obj, (list, tuple)):
        out, nulled = [], []
        for i, v in enumerate(obj):
            value, n = to_strict_json(v, f"{path}[{i}]")
            out.append(value)
            nulled += n
        return out, nulled
    return obj, []


def strict_json_dumps(obj: Any, indent: int | None = 2) -> str:
    """JSON that any strict parser reads: non-finite numbers become null."""
    return json.dumps(to_strict_json(obj)[0], indent=indent, allow_nan=False)
