"""``lifelong soup``: Sparse Model Soups (prune-retrain cycles whose retrains are averaged) of
one run config, against the best single retrain and IMP at the same sparsity (lifelong.soups)."""
from __future__ import annotations

import time
from pathlib import Path

import click

from ..errors import ConfigError
from .console import console
from .options import apply_trust, executor_from_options, executor_options, trust_options
from .sweep import apply_flags


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option} expects numbers separated by commas, got {text!r}") from None


@click.command("soup")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML, TOML or JSON run config.")
@click.option("--benchmark", help="Benchmark name (see 'lifelong list').")
@click.option("--scenario", type=click.Choice(["class", "task", "domain"]), help="Scenario.")
@click.option("--strategy", help="Strategy name ('a+b' composes two); one method per soup.")
@click.option("--seed", type=int, help="Seed (default 0).")
@click.option("--iterations", type=int, help="Training iterations per experience (every run: dense and retrains).")
@click.option("--epochs", type=int, help="Training epochs per experience (when no iterations).")
@click.option("--data-dir", help="Folder holding a dataset that does not ship.")
@click.option("--device", help="auto, cpu, cuda, cuda:N.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override any config key.")
@click.option("--cycles", type=click.IntRange(min=1), default=3, show_default=True,
              help="Prune-retrain cycles after the dense run.")
@click.option("--retrains", type=click.IntRange(min=1), default=3, show_default=True,
              help="Retrains averaged per cycle (m).")
@click.option("--sparsity", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.9,
              show_default=True, help="Sparsity after the last cycle, reached geometrically (the paper's schedule).")
@click.option("--sparsities", metavar="S1,S2,...", help="Sparsity after each cycle instead (e.g. 0.5,0.8,0.9); "
                                                         "replaces --cycles and --sparsity.")
@click.option("--vary", type=click.Choice(["seed", "weight_decay"]), default="seed", show_default=True,
              help="What differs between the retrains: batch order (train.seed) or weight decay.")
@click.option("--weight-decays", metavar="W1,W2,...", help="--vary weight_decay: one per retrain "
                                                           "(default 0, 1e-5, 1e-4, ...).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Output folder: new or empty, or this same soup's folder to resume it.")
@executor_options
@trust_options
def soup_cmd(config_file, benchmark, scenario, strategy, seed, iterations, epochs, data_dir, device, overrides,
             cycles, retrains, sparsity, sparsities, vary, weight_decays, out_dir, executor, workers, ray_address,
             cpus_per_run, gpus_per_run, allow_module, trust_config):
    """Sparse Model Soups (Zimmer, Spiegel & Pokutta, ICLR 2024) of a continual run: the dense run,
    then per cycle a global magnitude prune of the previous soup and --retrains runs from it with the
    mask fixed, averaged into the next soup. Prints, per cycle, the sparsity, the soup's accuracy,
    the best and mean single retrain's, IMP's (one retrain per cycle) and the nonzero parameters.
    The same command again into the same --out resumes an interrupted soup (finished runs reused)."""
    from ..config import load_config_file, parse_config
    from ..soups import sparse_model_soups, table_markdown

    apply_trust(allow_module, trust_config)
    executor = executor_from_options(executor, workers, ray_address, cpus_per_run, gpus_per_run)
    data = load_config_file(config_file) if config_file else {}
    apply_flags(data, (("benchmark.name", benchmark), ("benchmark.scenario", scenario), ("strategy.name", strategy),
                       ("seed", seed), ("train.iterations", iterations), ("train.epochs", epochs),
                       ("benchmark.data_dir", data_dir), ("device", device)), overrides)
    cfg = parse_config(data)
    out = Path(out_dir) if out_dir else Path("runs") / (f"{cfg.benchmark.name}-soup-{cfg.strategy.name}-s{cfg.seed}-"
                                                        f"{time.strftime('%Y%m%d-%H%M%S')}")

    def show(row):
        label = "dense" if row["cycle"] == 0 else f"cycle {row['cycle']}"
        extra = "" if row["cycle"] == 0 else (f", best retrain {100 * row['best']:.2f}, mean {100 * row['mean']:.2f}"
                                              f", IMP {100 * row['imp']:.2f}")
        console.print(f"{label}: sparsity {100 * row['sparsity']:.1f}%, accuracy {100 * row['soup']:.2f}{extra}")

    res = sparse_model_soups(cfg, out, cycles=cycles, retrains=retrains, sparsity=sparsity,
                             sparsities=_floats(sparsities, "--sparsities"), vary=vary,
                             weight_decays=_floats(weight_decays, "--weight-decays"), executor=executor,
                             workers=workers, on_cycle=show)
    console.print(table_markdown(res), soft_wrap=True)
    console.print(f"soup folder: {out}")
