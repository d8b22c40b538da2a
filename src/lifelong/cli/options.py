"""Options several commands share: the trust model for code a config names; how runs are executed."""
from __future__ import annotations

import click


def trust_options(command):
    """``--allow-module PREFIX`` (repeatable) and ``--trust-config``: which modules a config may
    name (``package.module:Name``) and so import. Nothing else is imported (README: "Your own
    strategy, model or benchmark")."""
    command = click.option("--trust-config", is_flag=True,
                           help="Trust the config file: any module it names may be imported (as '*').")(command)
    command = click.option("--allow-module", "allow_module", multiple=True, metavar="PREFIX",
                           help="Allow the config to name (and so import) modules under PREFIX, e.g. my_lab; "
                                "repeatable. Also: LIFELONG_ALLOW_MODULES=my_lab,other.")(command)
    return command


def apply_trust(allow_module, trust_config) -> None:
    from ..registry import allow_modules

    prefixes = list(allow_module) + (["*"] if trust_config else [])
    if prefixes:
        allow_modules(prefixes)


def executor_options(command):
    """``--executor``, ``--workers``, ``--ray-address``, ``--cpus-per-run``, ``--gpus-per-run``:
    how the runs of a sweep are executed (docs/ray.md). Pass the values to
    :func:`executor_from_options`."""
    command = click.option("--gpus-per-run", type=float, default=None, metavar="N",
                           help="GPUs each run asks of Ray (--executor ray; default 0; 0.5: two runs a GPU).")(command)
    command = click.option("--cpus-per-run", type=float, default=None, metavar="N",
                           help="CPUs each run asks of Ray and its torch threads (--executor ray; default 1).")(command)
    command = click.option("--ray-address", default=None, metavar="auto|HOST:PORT",
                           help="Run on an existing Ray cluster ('ray start --head'); default: a local Ray "
                                "instance for this command. Only with --executor ray.")(command)
    command = click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
                           help="Runs at the same time for --executor process or ray.")(command)
    command = click.option("--executor", type=click.Choice(["sequential", "process", "ray"]), default="sequential",
                           show_default=True, help="How several runs are executed: one after another, a local "
                                                   "process pool, or Ray (local or a cluster; docs/ray.md).")(command)
    return command


def executor_from_options(executor, workers, ray_address=None, cpus_per_run=None, gpus_per_run=None):
    """The executor the options ask for, checked before any run: ``'sequential'`` and
    ``'process'`` stay names (the grid treats sequential runs specially); ``ray`` becomes a
    :class:`~lifelong.ray_executor.RayExecutor` (Ray starts or is joined when it first runs)."""
    from ..errors import ConfigError
    from ..executor import get_executor

    if executor != "ray":
        given = [n for n, v in (("--ray-address", ray_address), ("--cpus-per-run", cpus_per_run),
                                ("--gpus-per-run", gpus_per_run)) if v is not None]
        if given:
            raise ConfigError(f"{given[0]} is for --executor ray (got --executor {executor})")
        return executor
    return get_executor("ray", workers, ray_address=ray_address,
                        cpus_per_run=1.0 if cpus_per_run is None else cpus_per_run,
                        gpus_per_run=0.0 if gpus_per_run is None else gpus_per_run)
