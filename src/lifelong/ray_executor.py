"""Runs on Ray: a local Ray instance (the default) or an existing cluster (``ray start --head``).

The same interface as the other executors (:mod:`lifelong.executor`): ``map(fn, items)`` yields
``fn(item)`` in the order of ``items``. Each item is one Ray task asking for ``cpus_per_run``
CPUs and ``gpus_per_run`` GPUs; at most ``workers`` tasks are in flight, and each result is
yielded as soon as it and every result before it are ready (so a caller's ``on_done`` fires as
runs finish). A task that raises is re-raised in the caller at its turn, as the process pool
does (``grid.run_one`` never raises: a sweep records a failed run and goes on).

- ``address=None``: starts a local Ray instance with ``workers * cpus_per_run`` CPUs (no
  dashboard, quiet logs) and shuts it down at the end (see below). Its workers use this Python
  environment.
- ``address="auto"`` or ``"HOST:PORT"``: connects to a running cluster and never shuts it down
  (only this driver disconnects when ``map`` ends).
  Every node must have the same environment (lifelong and its dependencies at the same paths)
  and see the same files: each run writes its run folder on the node that runs it, and tasks
  run in the driver's working directory (relative ``--out`` paths resolve there). docs/ray.md.

``map`` ends the Ray instance it started (or disconnects from the cluster it joined) when it
finishes. To map many times on one instance (no start-up each time), call
:meth:`RayExecutor.connect` first and :meth:`RayExecutor.close` at the end. A Ray already
initialised in this process (``ray.init`` by the caller) is used as it is and left running.

``ray`` is imported only here, and only when a :class:`RayExecutor` is used (extra ``tune``).
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
import socket
from typing import Callable, Iterable, Iterator, Optional

from .errors import ConfigError

INSTALL_HINT = "pip install -e '.[tune]'"


def _run_task(fn: Callable, item, threads: int, cwd: str):
    """The Ray task: one run with ``threads`` CPU threads, in the driver's working directory
    when this node has it."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - lifelong needs torch
        pass
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)
    return fn(item)


def _check_reachable(address: str) -> None:
    """Refuse at once an address nothing listens on (ray itself retries for minutes)."""
    target = address
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address("auto") or ""
        except Exception:  # no running cluster found on this machine
            target = ""
        if not target:
            raise ConfigError("--ray-address auto: no running Ray cluster found on this machine; start one with "
                              "'ray start --head' or give its HOST:PORT")
    host, _, port = target.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray-address must be 'auto' or HOST:PORT (the head's 'ray start --head --port'), "
                          f"got '{address}'")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); start one there with "
                          "'ray start --head --port PORT', or check the address") from None


class RayExecutor:
    """Runs each item as a Ray task; see the module docstring."""

    def __init__(self, workers: int = 2, address: Optional[str] = None, cpus_per_run: float = 1.0,
                 gpus_per_run: float = 0.0):
        if not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"--workers must be an integer >= 1, got {workers}")
        if not cpus_per_run > 0:
            raise ConfigError(f"--cpus-per-run must be > 0, got {cpus_per_run}")
        if not gpus_per_run >= 0:
            raise ConfigError(f"--gpus-per-run must be >= 0, got {gpus_per_run}")
        if importlib.util.find_spec("ray") is None:
            raise ConfigError(f"--executor ray needs ray, which is not installed: {INSTALL_HINT}")
        self.workers = workers
        self.address = address or None
        self.cpus_per_run = float(cpus_per_run)
        self.gpus_per_run = float(gpus_per_run)
        self._started = False  # True when we started the Ray instance (and so shut it down)
        self._joined = False   # True when we connected to a cluster (and so disconnect, leaving it running)
        self._held = False     # True after connect(): Ray stays up across maps until close()

    @property
    def threads_per_run(self) -> int:
        return max(1, int(self.cpus_per_run))

    def connect(self) -> None:
        """Start or join Ray now and check the cluster can hold one run (a ConfigError if not).
        Ray then stays up across ``map`` calls until :meth:`close`."""
        self._connect()
        self._held = True

    def _connect(self) -> None:
        import ray

        if ray.is_initialized():
            self._check_resources(ray)
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        quiet = [logging.getLogger(n) for n in ("ray", "ray._private.authentication.authentication_token_setup")]
        levels = [lg.level for lg in quiet]
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        try:
            if self.address is None:
                import torch

                gpus = torch.cuda.device_count()  # the GPUs this machine lets us see (CUDA_VISIBLE_DEVICES)
                if gpus < self.gpus_per_run:  # refused before Ray starts
                    raise ConfigError(f"--gpus-per-run {self.gpus_per_run:g}: this machine (a local Ray instance) "
                                      f"has {gpus} GPUs; lower it, or give --ray-address of a cluster with GPUs")
                ray.init(address="local", num_cpus=max(1, math.ceil(self.workers * self.cpus_per_run)),
                         num_gpus=gpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                         configure_logging=False)
                self._started = True
            else:
                _check_reachable(self.address)
                _use_token_if_available()
                try:
                    ray.init(address=self.address, log_to_driver=False, logging_level=logging.ERROR,
                             configure_logging=False)
                    self._joined = True
                except ConnectionError as exc:
                    raise ConfigError(f"cannot connect to the Ray cluster at {self.address} ({exc}); is it running "
                                      "('ray start --head' on the head node)? A cluster with token authentication "
                                      "needs its token here (~/.ray/auth_token or RAY_AUTH_TOKEN)") from None
        finally:
            for lg, level in zip(quiet, levels):
                lg.setLevel(level)
        try:
            self._check_resources(ray)
        except ConfigError:
            self.close()
            raise

    def _check_resources(self, ray) -> None:
        have = ray.cluster_resources()
        if self.gpus_per_run > 0 and have.get("GPU", 0) < self.gpus_per_run:
            raise ConfigError(f"--gpus-per-run {self.gpus_per_run:g}: the Ray cluster has {have.get('GPU', 0):g} "
                              "GPUs; lower it or use a cluster with GPUs")
        if have.get("CPU", 0) < self.cpus_per_run:
            raise ConfigError(f"--cpus-per-run {self.cpus_per_run:g}: the Ray cluster has {have.get('CPU', 0):g} "
                              "CPUs; lower it")

    def close(self) -> None:
        """Shut Ray down if this executor started it (a cluster we joined is only left)."""
        import ray

        if self._started or self._joined:
            ray.shutdown()  # a joined cluster keeps running: only this driver disconnects
        self._started = self._joined = self._held = False

    def map(self, fn: Callable, items: Iterable) -> Iterator:
        items = list(items)
        if not items:
            return
        opened_here = not (self._held or self._started or self._joined)
        self._connect()
        import ray

        task = ray.remote(_run_task).options(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=0)
        cwd = os.getcwd()
        running: dict = {}  # ObjectRef -> item index
        ready: dict = {}    # index -> (ok, value)
        submitted = 0
        try:
            for turn in range(len(items)):
                while turn not in ready:
                    while submitted < len(items) and len(running) < self.workers:
                        running[task.remote(fn, items[submitted], self.threads_per_run, cwd)] = submitted
                        submitted += 1
                    done, _ = ray.wait(list(running), num_returns=1)
                    for ref in done:
                        idx = running.pop(ref)
                        try:
                            ready[idx] = (True, ray.get(ref))
                        except ray.exceptions.RayTaskError as exc:  # fn raised: its own exception
                            ready[idx] = (False, exc.as_instanceof_cause())
                        except ray.exceptions.RayError as exc:  # the worker died (memory, a signal)
                            ready[idx] = (False, exc)
                ok, value = ready.pop(turn)
                if not ok:
                    raise value
                yield value
        finally:
            for ref in running:
                ray.cancel(ref, force=True)
            if opened_here:
                self.close()


def _use_token_if_available() -> None:
    """Send this machine's Ray token (~/.ray/auth_token, RAY_AUTH_TOKEN) to a cluster given by
    address, as ray does for a cluster it finds itself; RAY_AUTH_MODE, when set, decides."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # another ray version: RAY_AUTH_MODE=token does the same
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
