"""Running many runs: one small interface, sequential, a local process pool, or Ray.

An executor has one method, ``map(fn, items)``, yielding ``fn(item)`` in the order of
``items``. ``fn`` must be a picklable top-level function and each item a plain value (a config
dict), so a distributed backend can implement the same method: :mod:`lifelong.ray_executor`
does (``get_executor("ray", ...)``; ray is imported only when it is used).
"""
from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, Protocol


class Executor(Protocol):
    def map(self, fn: Callable, items: Iterable) -> Iterator: ...


class SequentialExecutor:
    def map(self, fn, items):
        for item in items:
            yield fn(item)


class ProcessExecutor:
    """A local pool of ``workers`` processes (spawned, so each starts clean). Between
    ``connect()`` and ``close()`` one pool serves every ``map`` (a tune's batches); otherwise
    each ``map`` has its own."""

    def __init__(self, workers: int = 2):
        self.workers = workers
        self.pool = None

    def connect(self) -> None:
        if self.pool is None:
            self.pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

    def map(self, fn, items):
        if self.pool is not None:
            yield from self.pool.map(fn, list(items))
            return
        with ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn")) as pool:
            yield from pool.map(fn, list(items))


EXECUTORS = ("sequential", "process", "ray")


def get_executor(name="sequential", workers: int = 2, *, ray_address: str | None = None,
                 cpus_per_run: float = 1.0, gpus_per_run: float = 0.0) -> Executor:
    """The executor called ``name`` (an executor object is returned as it is). ``ray``: a
    :class:`lifelong.ray_executor.RayExecutor` (ray is imported only then; docs/ray.md)."""
    from .errors import ConfigError

    if not isinstance(name, str) and hasattr(name, "map"):
        return name
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor '{name}'; allowed: {', '.join(EXECUTORS)}")
    if name != "ray" and ray_address:
        raise ConfigError(f"--ray-address is for --executor ray (got --executor {name})")
    if name == "sequential":
        return SequentialExecutor()
    if name == "process":
        return ProcessExecutor(workers)
    from .ray_executor import RayExecutor

    return RayExecutor(workers, ray_address, cpus_per_run, gpus_per_run)
