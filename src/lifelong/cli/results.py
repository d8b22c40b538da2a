"""``lifelong results``: list and compare studies, trials and runs; export them as CSV (docs/results.md).

| given | shown (and with ``--csv``, one CSV row each) |
|---|---|
| ``--storage URL_OR_DB`` | the studies of a study store |
| tune folders | the studies each tune folder's ``tune.json`` names, read from its store |
| ``--study NAME`` (with a store or tune folders) | the trials of one study |
| ``--compare`` with two or more tune folders | phase-2 accuracy and rank per benchmark and strategy |
| run or sweep folders | the runs (every ``results.json`` in or below them) |
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import click

from ..errors import ConfigError
from .console import console


def _pct(objective: str) -> bool:
    return objective.endswith("accuracy")


def _num(v, pct: bool = False, nd: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{100 * v:.{nd}f}" if pct else f"{v:.4g}"


def _param(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


NO_WRAP = {"mark", "Kendall tau", "trial", "state", "value", "seed", "rank", "c/p/f", "best", "best %", "acc %",
           "forg %", "wall s"}  # short headers: these columns never wrap, the others fold


def _table(title: str, columns: list[str], rows: list[list[str]]):
    from rich.table import Table

    from rich import box

    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for c in columns:
        t.add_column(c, overflow="fold", no_wrap=c in NO_WRAP)
    for r in rows:
        t.add_row(*r)
    return t


def _studies_table(rows: list[dict], title: str, tune: bool = False):
    """Studies of a store (every column), or of one tune folder (protocol and mark in the title)."""
    labels = list(dict.fromkeys(k[len("phase2 "):-len(" accuracy")] for r in rows for k in r
                                if k.startswith("phase2 ") and k.endswith(" accuracy")))
    pct = all(_pct(r["objective"]) for r in rows)
    cols = ["study"] + ([] if tune else ["protocol"]) + ["strategy", "tuned on", "c/p/f",
                                                        "best %" if pct else "best", "trial"]
    for lab in labels:
        cols += [f"{lab} acc %", "rank"]
    cols += [] if tune else ["mark"]
    out = []
    for r in rows:
        cells = [r["study"]] + ([] if tune else [r["protocol"]]) + [
            r["strategy"], r["tuned_on"],
            f"{r['complete']}/{r['pruned']}/{r['failed']}" + (f" +{r['running']} running" if r["running"] else ""),
            _num(r["best_value"], pct), _num(r["best_trial"])]
        for lab in labels:
            acc = r.get(f"phase2 {lab} accuracy")
            cells += ["-" if acc is None else f"{100 * acc:.2f} ± {100 * (r.get(f'phase2 {lab} std') or 0):.2f}",
                      _num(r.get(f"phase2 {lab} rank"))]
        if not tune:
            cells.append(f"[bold red]{r['mark']}[/bold red]" if r["mark"] else "")
        out.append(cells)
    return _table(title, cols, out)


def _trials_table(rows: list[dict], study: str, pct: bool):
    return _table(f"trials of study {study}", ["trial", "state", "value", "duration (s)", "params"],
                  [[str(r["number"]), r["state"], _num(r["value"], pct, 2 if pct else 4),
                    _num(r["duration_s"]), ", ".join(f"{k}={_param(v)}" for k, v in r["params"].items())]
                   for r in rows])


def _runs_table(rows: list[dict]):
    return _table(f"{len(rows)} run(s) (folders: in the CSV)",
                  ["strategy", "benchmark", "scenario", "seed", "acc %", "forg %", "wall s", "evaluated on"],
                  [[str(r["strategy"]), str(r["benchmark"]), f"{r['scenario']}-IL" if r["scenario"] else "",
                    str(r["seed"]), _num(r["average_accuracy"], True), _num(r["forgetting"], True),
                    _num(r["wall_time_s"]), str(r["evaluated_on"])] for r in rows])


def _compare_tables(rows: list[dict], taus: list[dict], tunes):
    cols = ["benchmark", "strategy"]
    for k, t in enumerate(tunes):
        cols += [f"{t.label}: acc (%)", "rank"] + (["rank change"] if k else [])
    out = []
    for r in rows:
        cells = [r["benchmark"], str(r["strategy"])]
        for k, t in enumerate(tunes):
            acc = r[f"{t.label} accuracy"]
            cells += ["-" if acc is None else f"{100 * acc:.2f} ± {100 * (r[f'{t.label} std'] or 0):.2f}",
                      _num(r[f"{t.label} rank"])]
            if k:
                d = r[f"{t.label} rank change"]
                cells.append("-" if d is None else f"{d:+d}" if d else "0")
        out.append(cells)
    first = _table("phase-2 accuracy and rank per benchmark (rank change: against the first tune)", cols, out)
    second = _table("did the ranking change?", ["benchmark", "reference", "tune", "strategies", "Kendall tau",
                                                "ranking changed"],
                    [[x["benchmark"], x["reference"], x["tune"], str(x["strategies"]), _num(x["kendall_tau"]),
                      "[bold]yes[/bold]" if x["ranking_changed"] else "no"] for x in taus])
    return first, second


def _csv_value(v):
    return "" if v is None else v


def _check_csv(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise ConfigError(f"--csv {path} already exists; nothing was written. Use --force to replace it, or "
                          "name another file")
    if path.exists() and not path.is_file():
        raise ConfigError(f"--csv {path} is not a file; name a file")
    if not path.parent.is_dir():
        raise ConfigError(f"--csv {path}: folder {path.parent} does not exist")


def write_csv(path: Path, rows: list[dict], force: bool) -> None:
    """``rows`` as CSV (header: every key, first-seen order; ``params`` spread into
    ``param:KEY`` columns); an existing file is refused unless ``force``."""
    _check_csv(path, force)
    flat = []
    for r in rows:
        r = dict(r)
        params = r.pop("params", None)
        if params is not None:
            r.update({f"param:{k}": v for k, v in params.items()})
        flat.append(r)
    header = list(dict.fromkeys(k for r in flat for k in r))
    from ..io import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    w.writeheader()
    for r in flat:
        w.writerow({k: _csv_value(r.get(k)) for k in header})
    atomic_write_text(path, buf.getvalue())


@click.command("results")
@click.argument("folders", nargs=-1, type=click.Path(path_type=Path))
@click.option("--storage", help="A study store: a .db file, sqlite:/// or postgresql:// URL (with tune folders: "
                                "instead of the one their tune.json names).")
@click.option("--study", help="List this study's trials.")
@click.option("--compare", is_flag=True, help="Compare the phase-2 rankings of two or more tune folders.")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write what is shown as CSV (one row per study, trial, run or benchmark x strategy).")
@click.option("--force", is_flag=True, help="Replace an existing --csv file.")
def results_cmd(folders, storage, study, compare, csv_file, force):
    """List and compare tune studies, trials and runs; export them as CSV.

    FOLDERS are tune folders (lifelong tune --out) or run and sweep folders (lifelong run --out).
    Without FOLDERS, give --storage."""
    from .. import results as R

    folders = list(folders)
    if not folders and storage is None:
        raise ConfigError("give tune, run or sweep folders, or a study store with --storage")
    if csv_file is not None:
        _check_csv(csv_file, force)  # before any work
    if storage is not None:
        R.check_store_arg(storage, "results")
    tune_dirs = [f for f in folders if R.is_tune_folder(f)]
    run_dirs = [f for f in folders if not R.is_tune_folder(f)]
    if tune_dirs and run_dirs:
        raise ConfigError(f"give tune folders or run/sweep folders, not both ({run_dirs[0]} is not a tune folder; "
                          f"{tune_dirs[0]} is)")
    if run_dirs:
        if storage or study or compare:
            raise ConfigError("--storage, --study and --compare apply to study stores and tune folders, not to "
                              f"run folders such as {run_dirs[0]}")
        rows = R.run_rows(run_dirs)
        console.print(_runs_table(rows))
    else:
        tunes = [R.load_tune(f, storage) for f in tune_dirs]
        if compare:
            if study:
                raise ConfigError("--compare and --study cannot be combined")
            rows, taus = R.compare_tunes(tunes)
            for t in _compare_tables(rows, taus, tunes):
                console.print(t)
        elif study:
            store = R.find_study(tunes, study) if tunes else _open(storage)
            rows = R.trial_rows(store, study)
            objective = _objective(store, study)
            console.print(_trials_table(rows, study, _pct(objective)))
        else:
            if tunes:
                rows = R.tune_study_rows(tunes)
                for t in tunes:
                    mark = " · [bold red]TUNED ON TEST[/bold red]" if t.summary.get("tuned_on_test") else ""
                    console.print(_studies_table([r for r in rows if r["tune"] == str(t.path)],
                                                 f"tune {t.path} · protocol {t.summary.get('protocol')}{mark}",
                                                 tune=True))
            else:
                rows = R.study_rows(_open(storage))
                console.print(_studies_table(rows, f"studies in {_masked(storage)}"))
            if len(tunes) >= 2:
                console.print("compare their phase-2 rankings with --compare")
    if csv_file is not None:
        write_csv(csv_file, rows, force)
        console.print(f"wrote {len(rows)} row(s) to {csv_file}")


def _masked(url: str) -> str:
    from ..studystore import mask_password

    return mask_password(str(url))


def _open(storage: str):
    from ..studystore import open_storage

    return open_storage(storage, Path("."))


def _objective(store, study: str) -> str:
    for s in store.get_all_studies():
        if s.study_name == study:
            return str(s.user_attrs.get("objective", ""))
    return ""
