"""``lifelong reproduce``: run a paper's protocol and print a verdict per table cell."""
from __future__ import annotations

import sys

import click

from .options import apply_trust, executor_from_options, executor_options, trust_options

from ..errors import ConfigError
from .console import ReproduceProgress, console, err_console
from .sweep import parse_seeds
from .tables import protocols_table, verdict_tables


@click.command("reproduce")
@click.argument("protocol", required=False)
@click.option("--list", "list_only", is_flag=True, help="List the protocols shipped with lifelong and exit.")
@click.option("--seeds", help="Number of seeds (N: the protocol's first N seeds, from its first_seed, usually 0), "
                              "or a list '0,1,2' / range '0-4'. Default: the protocol's.")
@click.option("--scenarios", help="Comma-separated subset of task,domain,class (default: the protocol's).")
@click.option("--methods", help="Comma-separated subset of the protocol's methods (default: all).")
@click.option("--set", "overrides", multiple=True, metavar="[METHOD:]KEY=VALUE",
              help="Override a config key in every run (or only METHOD's runs), e.g. --set train.iterations=50. "
                   "Anything but device/threads/tracking marks the protocol as modified.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Cache and report folder (default runs/reproduce/<protocol>, or <protocol>-modified). "
                   "Finished runs in it are reused.")
@executor_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
@trust_options
def reproduce_cmd(protocol, list_only, seeds, scenarios, methods, overrides, out_dir, executor, workers, ray_address,
                  cpus_per_run, gpus_per_run, quiet, allow_module, trust_config):
    """Reproduce a paper's table from a protocol (a shipped NAME or a .yaml PATH) and give a verdict per cell.

    A cell passes when our mean is within 3 accuracy points of the published value, or within two
    standard errors of our mean, whichever is larger. Exits with status 1 when any cell fails."""
    apply_trust(allow_module, trust_config)
    executor = executor_from_options(executor, workers, ray_address, cpus_per_run, gpus_per_run)
    from ..reproduce import FAIL, MODIFIED_BANNER, PASS, available_protocols, load_protocol, reproduce

    if list_only:
        names = available_protocols()
        console.print(protocols_table([(name, load_protocol(name)) for name in names]))
        for name in names:
            console.print(f"[bold]{name}[/bold]: {load_protocol(name).title}")
        return
    if not protocol:
        raise ConfigError("give a protocol NAME or PATH (see 'lifelong reproduce --list')")
    seed_arg = None
    if seeds:
        seed_arg = parse_seeds(seeds) if ("," in seeds or "-" in seeds) else _parse_seed_count(seeds)
    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    hooks = None if quiet else ReproduceProgress()
    try:
        rep = reproduce(protocol, seeds=seed_arg, scenarios=split(scenarios), methods=split(methods),
                        overrides=list(overrides), out=out_dir, executor=executor, workers=workers, hooks=hooks)
    except KeyboardInterrupt:
        if hooks:
            hooks.stop()
        err_console.print("interrupted; every finished run is kept in the cache folder and the runs in progress "
                          "keep their checkpoints: run the same command again to resume")
        sys.exit(130)
    finally:
        if hooks:
            hooks.stop()
    S = rep.summary
    if S["modified"]:
        console.print(f"[bold yellow]{MODIFIED_BANNER.upper()}[/bold yellow] (overrides: {', '.join(S['overrides'])})")
    for table in verdict_tables(S, {PASS: "green", FAIL: "red"}):
        console.print(table)
    c = S["counts"]
    console.print(f"overall: [bold]{S['status']}[/bold] ({c[PASS]} pass, {c[FAIL]} fail, {c['n/a']} without published "
                  f"value, {c['missing']} without runs); {rep.computed} runs computed, "
                  f"{rep.reused} reused from the cache"
                  + (f"; [yellow]{MODIFIED_BANNER}[/yellow]" if S["modified"] else ""))
    console.print(f"results: {rep.files[0]} and {rep.files[1]}")
    if rep.errors:
        err_console.print(f"[red]{len(rep.errors)} runs failed[/red] (rerun the same command to retry them):")
        for spec, error in rep.errors:
            err_console.print(f"- {spec.label}: {error}")
    if rep.failed or rep.errors:
        sys.exit(1)


def _parse_seed_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise ConfigError(f"--seeds must be a count like '5', or '0,1,2' / '0-4', got '{text}'") from None
    if n < 1:
        raise ConfigError(f"--seeds must be >= 1, got {n}")
    return n
