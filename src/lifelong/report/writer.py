"""The entry point: read every run, draw every figure and render the page before anything is
written (a bad input leaves no half report), then write ``report.html`` and the PNG files, each
atomically. An existing non-empty output folder is only written to with ``force=True``.

A tune folder among the inputs adds its tuning section (:mod:`.tuning`) and brings its phase-2
runs as runs of the report; its trials' run folders appear only in the trials tables."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, LifelongError
from ..results import check_store_arg
from ..io import atomic_write_bytes
from .data import _label as relabel, group_runs, load_runs
from .figures import _png, fig_compare, fig_curves, fig_forgetting, fig_matrix
from .page import render_html
from .tuning import fig_ranks, fig_trials, is_tune_folder, load_tuning, phase2_run_dirs, rank_columns

REPORT_NAME = "report.html"


def default_out(run_dirs: list[Path]) -> Path:
    if len(run_dirs) != 1:
        raise LifelongError("several run folders given: say where to write the report with --out DIR")
    return Path(run_dirs[0]) / "report"


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise LifelongError(f"report folder {out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise LifelongError(f"report folder {out} already exists and is not empty; nothing was overwritten. "
                            "Use --force to replace its report.html and figures, or choose another --out")


def write_report(run_dirs: list[Path], out: Path | None = None, *, force: bool = False,
                 storage: str | None = None) -> Path:
    """Write ``out/report.html`` and its figures as PNG files; returns the path of report.html.

    ``out`` defaults to ``<run dir>/report`` when a single folder is given. An existing non-empty
    ``out`` is refused unless ``force`` (then only report.html and this report's PNGs are replaced).
    ``storage``: the study store of the tune folders given, instead of the one their ``tune.json``
    names (a PostgreSQL URL with its password, a moved database).
    """
    run_dirs = [Path(p) for p in run_dirs]
    out = Path(out) if out is not None else default_out(run_dirs)
    if storage is not None:
        if not any(is_tune_folder(p) for p in run_dirs):
            raise ConfigError("--storage applies to tune folders (lifelong tune --out), and none was given")
        check_store_arg(storage, "report")
    _check_out(out, force)
    tunes = [load_tuning(p, storage) for p in run_dirs if is_tune_folder(p)]
    others = [p for p in run_dirs if not is_tune_folder(p)]
    phase2 = {d: t.tune.path.name for t in tunes for d in phase2_run_dirs(t.tune)}  # a tune's runs, not its trials
    runs = load_runs(others + list(phase2)) if others or phase2 or not tunes else []
    if len(tunes) > 1 or (tunes and others):
        where = {d.resolve(): name for d, name in phase2.items()}
        for r in runs:  # "ewc (tune-a)", "ewc (tune-b)": the same strategy from two tunes
            r.tag = where.get(r.path.resolve(), "")
        relabel(runs)
    files: dict[str, bytes] = {}

    def draw(fig, name):
        data, size = _png(fig)
        files[name] = data
        return name, data, size

    for r in runs:
        r.figures["matrix"] = draw(fig_matrix(r), f"{r.slug}-matrix.png")
        r.figures["curves"] = draw(fig_curves(r), f"{r.slug}-curves.png")
        r.figures["forgetting"] = draw(fig_forgetting(r), f"{r.slug}-forgetting.png")
    for k, t in enumerate(tunes, start=1):
        t.slug = f"tune{k:02d}"
        for j, sv in enumerate(t.studies, start=1):
            if sv.trials:
                sv.figure = draw(fig_trials(sv.trials, str(t.tune.summary.get("direction")),
                                            str(t.tune.summary.get("objective", "")), sv.entry["name"]),
                                 f"{t.slug}-study{j:02d}-trials.png")
        cols = rank_columns(t.tune.summary)
        if cols and len({s for _, _, r in cols for s in r}) >= 2:
            t.ranks_figure = draw(fig_ranks(t.tune.summary), f"{t.slug}-ranks.png")
    groups = group_runs(runs)
    compare = draw(fig_compare(groups), "comparison-average-accuracy.png") if len(runs) > 1 else None
    page = render_html(runs, compare, groups, tunes)
    _check_out(out, force)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        atomic_write_bytes(out / name, data)
    atomic_write_bytes(out / REPORT_NAME, page.encode("utf-8"))
    return out / REPORT_NAME
