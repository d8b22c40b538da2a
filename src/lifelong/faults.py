"""Failpoints for fault-injection tests: ``LIFELONG_FAILPOINT=NAME:N`` makes this process kill
itself with SIGKILL the N-th time it reaches the point ``NAME`` (1-based), exactly as a
preemption or ``kill -9`` would, at places a random kill rarely hits: halfway through writing
a file atomically (``atomic-write``) and between moving a finished run's files into place
(``final-move``). Unset (always, outside tests), a point costs one dictionary lookup."""
from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get("LIFELONG_FAILPOINT")
    if not spec:
        return
    want, _, nth = spec.partition(":")
    if want != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
