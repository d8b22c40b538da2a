"""``lifelong adapt``: test-time adaptation of a source model on a long corrupted stream."""
from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from ..errors import ConfigError
from .console import console


@click.command("adapt")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML, TOML or JSON TTA config (sections stream, model, train, strategy; see docs).")
@click.option("--strategy", help="The adapting strategy: tent, cotta, or finetune (= the source model, no adaptation).")
@click.option("--seed", type=int, help="Seed (default 0).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set stream.cycles=3 --set strategy.tent_lr=1e-4.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Run folder (default runs/adapt-...).")
def adapt_cmd(config_file, strategy, seed, overrides, out_dir):
    """Train a source model on clean MNIST, then let a strategy adapt on a long stream of
    corrupted, unlabelled test batches; each batch is scored on the predictions made before
    adapting on it (docs/test-time-adaptation.md)."""
    import time

    from ..config import load_config_file, set_key
    from ..tta import parse_tta_config, run_tta_to_folder
    from .sweep import parse_value

    data = load_config_file(config_file) if config_file else {}
    if strategy is not None:
        set_key(data, "strategy.name", strategy)
    if seed is not None:
        data["seed"] = seed
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"--set expects KEY=VALUE, got '{ov}'")
        k, v = ov.split("=", 1)
        set_key(data, k.strip(), parse_value(v))
    cfg = parse_tta_config(data)  # every key and value checked before any data loads
    out = Path(out_dir) if out_dir else Path("runs") / f"adapt-{cfg.strategy.name}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    res = run_tta_to_folder(cfg, out)
    t = Table(title=f"test-time adaptation: {res['strategy']} - seed {res['seed']} "
                    f"(source model: {100 * res['source']['clean_accuracy']:.1f} % on clean test)")
    for c in ("corruption", "error, cycle 1 (%)", f"error, cycle {res['stream']['cycles']} (%)", "error, all (%)"):
        t.add_column(c, justify="left" if c == "corruption" else "right")
    for c, per_cycle in res["error_per_corruption_per_cycle"].items():
        t.add_row(c, f"{100 * per_cycle[0]:.1f}", f"{100 * per_cycle[-1]:.1f}",
                  f"{100 * res['error_per_corruption'][c]:.1f}")
    t.add_row("all", f"{100 * res['error_first_cycle']:.1f}", f"{100 * res['error_last_cycle']:.1f}",
              f"{100 * res['error']:.1f}", style="bold")
    console.print(t)
    console.print(f"run folder: {out}")
