"""``lifelong run``: one run, or a sweep of strategies x seeds with a summary over seeds."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import ConfigError
from .console import RichMonitor, console, err_console
from .options import apply_trust, executor_from_options, executor_options, trust_options
from .sweep import apply_flags, default_out, expand, parse_seeds, run_paths, summary_markdown, summary_rows
from .tables import metrics_table, results_table


@click.command("run")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML, TOML or JSON config file.")
@click.option("--benchmark", help="Benchmark name (see 'lifelong list').")
@click.option("--scenario", type=click.Choice(["class", "task", "domain"]), help="Scenario.")
@click.option("--strategy", help="Strategy name; several separated by commas run one after another; "
                                 "'a+b' composes two.")
@click.option("--seed", type=int, help="Seed (default 0).")
@click.option("--seeds", help="Several seeds, e.g. '0,1,2' or '0-4' (not with --seed).")
@click.option("--iterations", type=int, help="Training iterations per experience.")
@click.option("--epochs", type=int, help="Training epochs per experience (when no iterations).")
@click.option("--data-dir", help="Folder holding a dataset that does not ship (cifar10, cifar100, npz, "
                                 "fashion_mnist); an error for a dataset that ships.")
@click.option("--device", help="auto, cpu, cuda, cuda:N.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config key, e.g. --set train.lr=0.01 --set strategy.ewc_lambda=1e5.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Run folder (must not exist or be empty).")
@executor_options
@click.option("--quiet", is_flag=True, help="No progress bars.")
@trust_options
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Continue the run or sweep in this folder from its last checkpoints (a plain rerun of the "
                   "same command does the same).")
def run_cmd(config_file, benchmark, scenario, strategy, seed, seeds, iterations, epochs, data_dir, device, overrides,
            out_dir, executor, workers, ray_address, cpus_per_run, gpus_per_run, quiet, resume_dir, allow_module,
            trust_config):
    """Train a strategy on a benchmark and report its accuracy matrix and metrics.

    A run saves checkpoints as it goes; rerunning the same command (or --resume FOLDER) after an
    interruption continues from the last one, and a sweep rerun into its folder reuses its
    finished runs."""
    from ..config import load_config_file
    from ..runner import run_to_folder

    apply_trust(allow_module, trust_config)
    executor = executor_from_options(executor, workers, ray_address, cpus_per_run, gpus_per_run)
    if resume_dir:
        given = [n for n, v in (("--config", config_file), ("--benchmark", benchmark), ("--scenario", scenario),
                                ("--strategy", strategy), ("--seed", seed), ("--seeds", seeds),
                                ("--iterations", iterations), ("--epochs", epochs), ("--data-dir", data_dir),
                                ("--device", device), ("--set", overrides), ("--out", out_dir)) if v]
        if given:
            raise ConfigError(f"--resume continues a folder with the options it was started with; {given[0]} cannot "
                              "be given with it")
        return _resume(Path(resume_dir), executor, workers, quiet)
    if seed is not None and seeds:
        raise ConfigError(f"give --seed or --seeds, not both (got --seed {seed} and --seeds {seeds})")
    data = load_config_file(config_file) if config_file else {}
    apply_flags(data, (("benchmark.name", benchmark), ("benchmark.scenario", scenario), ("seed", seed),
                       ("train.iterations", iterations), ("train.epochs", epochs), ("benchmark.data_dir", data_dir),
                       ("device", device)), overrides)
    strategies = [s.strip() for s in strategy.split(",")] if strategy else None
    # every run is validated (keys, ranges, benchmark keys, scenario support) before the first starts
    checked = expand(data, strategies, parse_seeds(seeds) if seeds else None)
    configs = [c.to_dict() for c in checked]
    base = Path(out_dir) if out_dir else default_out(configs[0], len(configs) > 1)
    if len(configs) == 1:  # a new folder starts, this run's unfinished folder resumes, its finished one is shown
        cfg = configs[0]
        monitor = None if quiet else RichMonitor(_n_experiences(cfg))
        res = run_to_folder(cfg, base, monitor)
        console.print(results_table(res))
        console.print(metrics_table(res))
        console.print(f"run folder: {base}")
        return
    from ..grid import GridRun, open_grid
    from ..runner import preflight

    preflight(checked)  # what a run checks against its stream too, for every run, before the first starts

    runs = [GridRun(c, p, f"{c['strategy']['name']} seed {c['seed']}") for c, p in zip(configs, run_paths(base, configs))]
    getattr(executor, "connect", lambda: None)()  # Ray starts (or a bad address is refused) before any folder
    try:
        open_grid(base, runs)  # this sweep's folder (continued) or a new one; anything else is refused
        _sweep(base, runs, executor, workers, quiet)
    finally:
        getattr(executor, "close", lambda: None)()


def _sweep(base, runs, executor, workers, quiet):
    from ..grid import execute, failures_markdown
    from ..io import atomic_write_json, atomic_write_text

    configs = [r.config for r in runs]

    def done(o):
        if o.ok:
            console.print(f"done: {o.run.label}: average accuracy {100 * o.results['average_accuracy']:.2f}")
        else:
            err_console.print(f"[red]failed:[/red] {o.run.label}: {o.error}")

    report = execute(runs, executor, workers, on_start=(lambda r: console.print(f"[bold]{r.label}[/bold]"))
                     if executor == "sequential" else None, on_done=done,
                     monitor_for=None if quiet else (lambda r: RichMonitor(_n_experiences(r.config))))
    results = report.results
    md = ""
    if results:
        rows = summary_rows(results)
        seed_list = list(dict.fromkeys(c["seed"] for c in configs))
        md = summary_markdown(rows, f"{configs[0]['benchmark']['name']} ({results[0]['scenario']}-IL), seeds {seed_list}")
    else:
        rows = []
    md += ("\n" + failures_markdown(report)) if report.failed else ""
    failed = [{"run": o.run.label, "path": str(o.run.path), "error": o.error} for o in report.failed]
    atomic_write_json(base / "summary.json", {"rows": rows, "failed": failed} if failed else rows)
    atomic_write_text(base / "summary.md", md)
    console.print(md)
    console.print(f"run folder: {base}")
    if failed:
        raise SystemExit(1)


def _resume(folder: Path, executor, workers, quiet):
    import json

    from ..grid import MANIFEST, load_grid
    from ..runfolder import PARTIAL

    if (folder / MANIFEST).is_file():
        return _sweep(folder, load_grid(folder), executor, workers, quiet)
    for name in (f"{PARTIAL}/run.json", "results.json"):
        if (folder / name).is_file():
            cfg = json.loads((folder / name).read_text())["config"]
            from ..runner import run_to_folder

            res = run_to_folder(cfg, folder, None if quiet else RichMonitor(_n_experiences(cfg)))
            console.print(results_table(res))
            console.print(metrics_table(res))
            console.print(f"run folder: {folder}")
            return
    raise ConfigError(f"--resume {folder}: not a run or sweep folder of lifelong's (no {MANIFEST}, "
                      f"{PARTIAL}/run.json or results.json)")


def _n_experiences(cfg: dict) -> int:
    from ..config import parse_config
    from ..streams.presets import build_benchmark

    return len(build_benchmark(parse_config(cfg).benchmark, cfg["seed"]))
