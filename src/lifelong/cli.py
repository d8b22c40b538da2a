"""The ``lifelong`` command: run experiments, list what is available."""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from .errors import LifelongError

console = Console(stderr=False)
err_console = Console(stderr=True)


class RichMonitor:
    """Progress bar per experience: iteration, loss; accuracy row after the experience."""

    def __init__(self, n_experiences: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.n = n_experiences
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]}"), TextColumn("acc {task.fields[acc]}"),
                                 TimeElapsedColumn(), console=console,
                                 transient=False)
        self.task = None

    def start(self, exp, n_iters):
        if self.task is None:
            self.progress.start()
        self.every = max(1, n_iters // 50)
        self.task = self.progress.add_task(f"experience {exp.index + 1}/{self.n}", total=n_iters, loss="-", acc="-")

    def step(self, it, loss, continual_acc=None):
        if (it + 1) % self.every == 0:
            self.loss = float(loss.detach())
            acc = "-" if continual_acc is None else f"{100 * continual_acc:.1f}"
            self.progress.update(self.task, completed=it + 1, loss=f"{self.loss:.3f}", acc=acc)

    def end(self, exp, result):
        total = self.progress.tasks[-1].total
        self.progress.remove_task(self.task)
        row = result.accuracy_matrix[-1]
        self.progress.console.print(f"experience {exp.index + 1}/{self.n}: {total} iterations, final loss "
                                    f"{getattr(self, 'loss', float('nan')):.3f}; accuracy on seen: "
                                    + " ".join(f"{100 * a:.1f}" for a in row[: exp.index + 1]))
        if exp.index + 1 == self.n:
            self.progress.stop()


def results_table(res: dict) -> Table:
    R = res["accuracy_matrix"]
    view = "task-aware" if res["scenario"] == "task" else "task-agnostic"
    t = Table(title=f"{res['benchmark']} ({res['scenario']}-IL, {view}) - {res['strategy']} - seed {res['seed']}")
    t.add_column("after \\ on")
    for j in range(len(R)):
        t.add_column(f"exp {j + 1}", justify="right")
    for i, row in enumerate(R):
        t.add_row(f"exp {i + 1}", *[f"{100 * a:.1f}" for a in row])
    return t


def metrics_table(res: dict) -> Table:
    t = Table(show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k in ("average_accuracy", "average_incremental_accuracy", "forgetting", "bwt", "fwt",
              "task_aware_average_accuracy", "wall_time_s", "train_time_s", "eval_time_s"):
        if k in res:
            v = res[k]
            t.add_row(k, f"{v:.2f}" if k.endswith("_s") else f"{100 * v:.2f}")
    return t


def summary_rows(results: list[dict]) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(r["config"]["strategy"]["name"], []).append(r)
    rows = []
    for name, rs in groups.items():
        row = {"strategy": name, "seeds": [r["seed"] for r in rs]}
        for k in ("average_accuracy", "average_incremental_accuracy", "forgetting", "bwt", "wall_time_s"):
            vals = [r[k] for r in rs]
            row[k] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
        rows.append(row)
    return rows


def summary_markdown(rows: list[dict], title: str) -> str:
    lines = [f"## {title}", "", "| strategy | seeds | final avg acc (%) | avg incremental acc (%) | forgetting (%) "
             "| BWT (%) | time (s) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        f = lambda k, s=100: f"{s * r[k]['mean']:.2f} ± {s * r[k]['std']:.2f}"  # noqa: E731
        lines.append(f"| {r['strategy']} | {len(r['seeds'])} | {f('average_accuracy')} | "
                     f"{f('average_incremental_accuracy')} | {f('forgetting')} | {f('bwt')} | {f('wall_time_s', 1)} |")
    return "\n".join(lines) + "\n"


def _parse_value(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except Exception:
        return text


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lifelong")
def cli():
    """lifelong: continual learning on PyTorch."""


@cli.command("run")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML, TOML or JSON config file.")
@click.option("--benchmark", help="Benchmark name (see 'lifelong list').")
@click.option("--scenario", type=click.Choice(["class", "task", "domain"]), help="Scenario.")
@click.option("--strategy", help="Strategy name; several separated by commas run one after another; "
                                 "'a+b' composes two.")
@click.option("--seed", type=int, help="Seed (default 0).")
@click.option("--seeds", help="Several seeds, e.g. '0,1,2' or '0-4'.")
@click.option("--iterations", type=int, help="Training iterations per experience.")
@click.option("--epochs", type=int, help="Training epochs per experience (when no iterations).")
@click.option("--data-dir", help="Folder holding a dataset that does not ship (cifar10, cifar100, npz).")
@click.option("--device", help="auto, cpu, cuda, cuda:N.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config key, e.g. --set train.lr=0.01 --set strategy.ewc_lambda=1e5.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Run folder (must not exist or be empty).")
@click.option("--executor", type=click.Choice(["sequential", "process"]), default="sequential", show_default=True,
              help="How several runs (seeds x strategies) are executed.")
@click.option("--workers", type=int, default=2, show_default=True, help="Processes for --executor process.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def run_cmd(config_file, benchmark, scenario, strategy, seed, seeds, iterations, epochs, data_dir, device, overrides,
            out_dir, executor, workers, quiet):
    """Train a strategy on a benchmark and report its accuracy matrix and metrics."""
    from .config import load_config_file, parse_config, set_key
    from .executor import get_executor
    from .runner import check_out_dir, run_config_dict, run_to_folder

    data = load_config_file(config_file) if config_file else {}
    for key, val in (("benchmark.name", benchmark), ("benchmark.scenario", scenario), ("seed", seed),
                     ("train.iterations", iterations), ("train.epochs", epochs), ("benchmark.data_dir", data_dir),
                     ("device", device)):
        if val is not None:
            set_key(data, key, val)
    for ov in overrides:
        if "=" not in ov:
            raise LifelongError(f"--set expects KEY=VALUE, got '{ov}'")
        k, v = ov.split("=", 1)
        set_key(data, k.strip(), _parse_value(v))
    strategies = [s.strip() for s in strategy.split(",")] if strategy else [data.get("strategy", {}).get("name", "finetune")]
    seed_list = _parse_seeds(seeds) if seeds else [data.get("seed", 0)]
    configs = []
    params = {k: v for k, v in data.get("strategy", {}).items() if k != "name"}
    used = set()
    for s in strategies:
        # strategy parameters in the config apply to each listed strategy that takes them
        accepted = _strategy_param_names(s) if len(strategies) > 1 else set(params)
        used |= accepted
        for sd in seed_list:
            d = json.loads(json.dumps(data))
            d["strategy"] = {"name": s, **{k: v for k, v in params.items() if k in accepted}}
            d["seed"] = sd
            configs.append(parse_config(d).to_dict())  # validate everything before running anything
    unused = sorted(set(params) - used)
    if unused:
        raise LifelongError(f"strategy parameter '{unused[0]}' applies to none of the strategies {strategies}")
    base = Path(out_dir) if out_dir else _default_out(configs[0], len(configs) > 1)
    check_out_dir(base)
    if len(configs) == 1:
        cfg = configs[0]
        monitor = None if quiet else RichMonitor(_n_experiences(cfg))
        res = run_to_folder(cfg, base, monitor)
        console.print(results_table(res))
        console.print(metrics_table(res))
        console.print(f"run folder: {base}")
        return
    results = []
    paths = [base / c["strategy"]["name"] / f"seed-{c['seed']}" for c in configs]
    ex = get_executor(executor, workers)
    if executor == "sequential":
        for cfg, path in zip(configs, paths):
            console.print(f"[bold]{cfg['strategy']['name']}[/bold] seed {cfg['seed']}")
            results.append(run_to_folder(cfg, path, None if quiet else RichMonitor(_n_experiences(cfg))))
    else:
        for cfg, path, res in zip(configs, paths, ex.map(_run_into, list(zip(configs, map(str, paths))))):
            console.print(f"done: {cfg['strategy']['name']} seed {cfg['seed']}: "
                          f"average accuracy {100 * res['average_accuracy']:.2f}")
            results.append(res)
    rows = summary_rows(results)
    title = f"{configs[0]['benchmark']['name']} ({results[0]['scenario']}-IL), seeds {seed_list}"
    md = summary_markdown(rows, title)
    (base / "summary.json").write_text(json.dumps(rows, indent=2))
    (base / "summary.md").write_text(md)
    console.print(md)
    console.print(f"run folder: {base}")


def _strategy_param_names(name: str) -> set[str]:
    from .strategies import get_strategy_class

    return {p for n in name.split("+") for p in get_strategy_class(n.strip()).get_param_names()}


def _run_into(item):
    from .runner import run_to_folder

    cfg, path = item
    return run_to_folder(cfg, path)


def _n_experiences(cfg: dict) -> int:
    from .config import parse_config
    from .streams.presets import build_benchmark

    return len(build_benchmark(parse_config(cfg).benchmark, cfg["seed"]))


def _parse_seeds(text: str) -> list[int]:
    try:
        if "-" in text and "," not in text:
            a, b = text.split("-")
            return list(range(int(a), int(b) + 1))
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise LifelongError(f"--seeds must look like '0,1,2' or '0-4', got '{text}'") from None


def _default_out(cfg: dict, many: bool) -> Path:
    import time

    name = "sweep" if many else f"{cfg['strategy']['name']}-s{cfg['seed']}"
    return Path("runs") / f"{cfg['benchmark']['name']}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"


@cli.command("list")
@click.argument("what", type=click.Choice(["all", "benchmarks", "strategies"]), default="all")
def list_cmd(what):
    """Show benchmarks and strategies with their parameters."""
    from .config import strategy_param_model
    from .streams.presets import presets
    from .strategies import STRATEGIES

    if what in ("all", "benchmarks"):
        t = Table(title="benchmarks")
        for c in ("name", "default scenario", "keys", "description"):
            t.add_column(c)
        for name, p in presets().items():
            t.add_row(name, p.default_scenario, ", ".join(sorted(p.keys - {"name"})), p.description)
        console.print(t)
    if what in ("all", "strategies"):
        t = Table(title="strategies")
        for c in ("name", "scenarios", "parameters (default)", "paper"):
            t.add_column(c)
        for name, cls in STRATEGIES.items():
            fields = strategy_param_model(cls).model_fields
            params = ", ".join(f"{k}={f.default!r}" for k, f in fields.items())
            t.add_row(name, ",".join(cls.scenarios), params, cls.paper)
        console.print(t)


@cli.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Report folder (default: RUN_DIR/report for a single folder; required for several).")
@click.option("--force", is_flag=True, help="Replace report.html and its figures in an existing report folder.")
def report_cmd(run_dirs, out_dir, force):
    """Write a self-contained HTML report (with PNG figures) for run or sweep folders."""
    from .report import write_report

    click.echo(str(write_report(list(run_dirs), out_dir, force=force)))


def main(argv=None):
    try:
        cli.main(args=argv, standalone_mode=False)
    except LifelongError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted; the run folder was not written")
        sys.exit(130)


if __name__ == "__main__":
    main()
