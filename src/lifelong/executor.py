"""Running many runs: one small interface, sequential or a local process pool.

An executor has one method, ``map(fn, items)``, yielding ``fn(item)`` in the order of
``items``. ``fn`` must be a picklable top-level function and each item a plain value (a config
dict), so a distributed backend (Ray, a cluster queue) can implement the same method.
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
    """A local pool of ``workers`` processes (spawned, so each starts clean)."""

    def __init__(self, workers: int = 2):
        self.workers = workers

    def map(self, fn, items):
        with ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn")) as pool:
            yield from pool.map(fn, list(items))


def get_executor(name: str = "sequential", workers: int = 2) -> Executor:
    from .errors import ConfigError

    if name == "sequential":
        return SequentialExecutor()
    if name == "process":
        return ProcessExecutor(workers)
    raise ConfigError(f"unknown executor '{name}'; allowed: sequential, process")
