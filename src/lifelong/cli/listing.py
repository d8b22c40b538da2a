"""``lifelong list``: benchmarks and strategies, with parameters, defaults and allowed values
from the same source as validation (the strategies' signatures, :func:`strategy_param_model`)."""
from __future__ import annotations

import click

from .console import console
from .tables import benchmarks_table, strategies_table


@click.command("list")
@click.argument("what", type=click.Choice(["all", "benchmarks", "strategies"]), default="all")
def list_cmd(what):
    """Show benchmarks and strategies with their parameters."""
    from ..config import strategy_param_model
    from ..strategies import STRATEGIES
    from ..streams.presets import COMMON_KEYS, presets

    if what in ("all", "benchmarks"):
        console.print(benchmarks_table(presets(), COMMON_KEYS))
    if what in ("all", "strategies"):
        console.print(strategies_table(STRATEGIES, strategy_param_model))
    _print_installed(what)


def _print_installed(what: str) -> None:
    """Names installed packages register (entry points), not loaded: a broken plugin cannot
    break the listing; it is checked when a config names it."""
    from ..registry import GROUPS, entry_point_names

    kinds = {"all": ("strategy", "model", "benchmark"), "benchmarks": ("benchmark",), "strategies": ("strategy",)}
    for kind in kinds[what]:
        names = entry_point_names(kind)
        if names:
            console.print(f"Installed {kind} plugins ({GROUPS[kind]}): {', '.join(names)}")
