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
    cont = res.get("continual") or {}
    for k in ("min_acc", "wc_acc", "wf_10", "wf_100"):  # the stability gap (continual evaluation)
        if isinstance(cont.get(k), float) and cont[k] == cont[k]:
            t.add_row(f"continual {k}", f"{100 * cont[k]:.2f}")
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
    from .runner import check_out_dir, run_to_folder

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
        accepted = _strategy_param_names(s) if strategy else set(params)
        used |= accepted
        for sd in seed_list:
            d = json.loads(json.dumps(data))
            d["strategy"] = {"name": s, **{k: v for k, v in params.items() if k in accepted}}
            d["seed"] = sd
            configs.append(parse_config(d).to_dict())  # validate everything before running anything
    from .strategies import STRATEGIES

    known = {p for cls in STRATEGIES.values() for p in cls.get_param_names()}
    unknown = sorted(set(params) - used - known)
    if unknown:  # a typo, not a parameter meant for another strategy
        raise LifelongError(f"strategy parameter '{unknown[0]}' belongs to no strategy; see 'lifelong list strategies'")
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
        from .streams.presets import COMMON_KEYS

        t = Table(title="benchmarks", caption=f"every benchmark also takes: {', '.join(sorted(COMMON_KEYS - {'name'}))}")
        for c in ("name", "default scenario", "keys", "description"):
            t.add_column(c)
        for name, p in presets().items():
            t.add_row(name, p.default_scenario, ", ".join(sorted(p.keys - COMMON_KEYS)), p.description)
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


@cli.command("reproduce")
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
@click.option("--executor", type=click.Choice(["sequential", "process"]), default="sequential", show_default=True)
@click.option("--workers", type=int, default=2, show_default=True, help="Processes for --executor process.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def reproduce_cmd(protocol, list_only, seeds, scenarios, methods, overrides, out_dir, executor, workers, quiet):
    """Reproduce a paper's table from a protocol (a shipped NAME or a .yaml PATH) and give a verdict per cell.

    A cell passes when our mean is within 3 accuracy points of the published value, or within two
    standard errors of our mean, whichever is larger. Exits with status 1 when any cell fails."""
    from .reproduce import MODIFIED_BANNER, PASS, FAIL, available_protocols, load_protocol, reproduce

    if list_only:
        t = Table(title="protocols (lifelong reproduce NAME)")
        t.add_column("name", no_wrap=True)
        for c in ("scenarios", "methods", "seeds", "published"):
            t.add_column(c)
        for name in available_protocols():
            p = load_protocol(name)
            n_pub = sum(1 for s in p.scenarios for m in p.methods
                        if s in p.method_scenarios(m) and p.published(s, m)["mean"] is not None)
            n_cells = sum(1 for s in p.scenarios for m in p.methods if s in p.method_scenarios(m))
            scen = ",".join(f"[bold]{s}[/bold]" if s in p.default_scenarios and p.default_scenarios != p.scenarios
                            else s for s in p.scenarios)
            seeds_txt = f"{p.seeds} ({p.first_seed}-{p.first_seed + p.seeds - 1})"
            t.add_row(name, scen, ", ".join(p.methods), seeds_txt, f"{n_pub}/{n_cells} cells")
        console.print(t)
        for name in available_protocols():
            console.print(f"[bold]{name}[/bold]: {load_protocol(name).title}")
        return
    if not protocol:
        raise LifelongError("give a protocol NAME or PATH (see 'lifelong reproduce --list')")
    seed_arg = None
    if seeds:
        seed_arg = _parse_seeds(seeds) if ("," in seeds or "-" in seeds) else _parse_seed_count(seeds)
    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    hooks = None if quiet else _ReproduceProgress()
    try:
        rep = reproduce(protocol, seeds=seed_arg, scenarios=split(scenarios), methods=split(methods),
                        overrides=list(overrides), out=out_dir, executor=executor, workers=workers, hooks=hooks)
    except KeyboardInterrupt:
        if hooks:
            hooks.stop()
        err_console.print("interrupted; every finished run is kept in the cache folder: "
                          "run the same command again to resume")
        sys.exit(130)
    finally:
        if hooks:
            hooks.stop()
    S = rep.summary
    colors = {PASS: "green", FAIL: "red"}
    if S["modified"]:
        console.print(f"[bold yellow]{MODIFIED_BANNER.upper()}[/bold yellow] (overrides: {', '.join(S['overrides'])})")
    for scen in dict.fromkeys(r["scenario"] for r in S["cells"]):
        t = Table(title=f"{S['protocol']}: {scen}-incremental ({S['metric']}, %)")
        for c in ("method", "n", "ours ± SE", "published ± SEM", "diff", "tolerance", "verdict"):
            t.add_column(c, justify="left" if c in ("method", "verdict") else "right")
        for r in (r for r in S["cells"] if r["scenario"] == scen):
            fmt = lambda m, s: "-" if m is None else (f"{m:.2f}" + ("" if s is None else f" ± {s:.2f}"))  # noqa: E731
            v = r["verdict"]
            pub = r["published"]
            t.add_row(r["label"], str(r["n"]), fmt(r["mean"], r["se"]), fmt(pub["mean"], pub["sem"]),
                      "-" if r["diff"] is None else f"{r['diff']:+.2f}",
                      "-" if r["tolerance"] is None else f"±{r['tolerance']:.2f}",
                      f"[{colors[v]}]{v}[/{colors[v]}]" if v in colors else v)
        console.print(t)
    c = S["counts"]
    console.print(f"overall: [bold]{S['status']}[/bold] ({c[PASS]} pass, {c[FAIL]} fail, {c['n/a']} without published "
                  f"value, {c['missing']} without runs); {rep.computed} runs computed, "
                  f"{rep.reused} reused from the cache"
                  + (f"; [yellow]{MODIFIED_BANNER}[/yellow]" if S["modified"] else ""))
    console.print(f"results: {rep.files[0]} and {rep.files[1]}")
    if rep.failed:
        sys.exit(1)


def _parse_seed_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise LifelongError(f"--seeds must be a count like '5', or '0,1,2' / '0-4', got '{text}'") from None
    if n < 1:
        raise LifelongError(f"--seeds must be >= 1, got {n}")
    return n


class _ReproduceProgress:
    """Hooks for lifelong.reproduce: one bar over the runs, a line per finished run."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=False)
        self.task = None
        self.t0 = None

    def start(self, total, cached, todo):
        console.print(f"{total} runs: {cached} in the cache, {todo} to compute")
        if todo:
            self.progress.start()
            self.task = self.progress.add_task("runs", total=todo)

    def running(self, spec):
        import time

        self.t0 = time.perf_counter()
        if self.task is not None:
            self.progress.update(self.task, description=f"running {spec.label}")

    def finished(self, spec, res):
        wall = res.get("wall_time_s")
        self.progress.console.print(f"done: {spec.label}: {100 * res['average_accuracy']:.2f}%"
                                    + (f" ({wall:.0f} s)" if wall is not None else ""))
        if self.task is not None:
            self.progress.advance(self.task)

    def stop(self):
        if self.task is not None:
            self.progress.update(self.task, description="runs")
            self.progress.stop()
            self.task = None


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
