"""A self-contained HTML report for one or several run folders.

``write_report(run_dirs, out)`` reads every ``results.json`` found in or below the given
folders (a run folder or a sweep folder), draws the figures with matplotlib (Agg, no
pyplot state) and writes ``out/report.html`` plus the same figures as PNG files in ``out``.
The HTML embeds its figures as base64 ``data:`` URIs and its CSS inline; it references
nothing outside itself (a Content-Security-Policy forbids it), so it opens with no network.

Per run: header (benchmark, scenario, strategy, seed) and metrics; the accuracy matrix as an
annotated heatmap; accuracy per experience over training iterations with the experience
boundaries (from ``curves.csv`` and ``boundaries``; without curves, the end-of-experience
accuracies against the experience index); forgetting per experience. With several runs: a
comparison table (mean ± std over seeds when a configuration ran with several seeds) and the
average-accuracy curves overlaid.

Everything is read and drawn before anything is written, so a bad input leaves no half
report. An existing non-empty output folder is only written to with ``force=True``, and then
only ``report.html`` and the PNG files of this report are replaced.
"""
from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import json
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .errors import LifelongError

DPI = 100
REPORT_NAME = "report.html"

# (key, label, kind) kind: "pct" -> shown as percent, "s" -> seconds, "int" -> integer
METRICS = [
    ("average_accuracy", "final average accuracy", "pct"),
    ("average_incremental_accuracy", "average incremental accuracy", "pct"),
    ("forgetting", "forgetting", "pct"),
    ("bwt", "backward transfer (BWT)", "pct"),
    ("fwt", "forward transfer (FWT)", "pct"),
    ("task_aware_average_accuracy", "task-aware average accuracy", "pct"),
    ("wall_time_s", "wall time", "s"),
    ("train_time_s", "train time", "s"),
    ("eval_time_s", "eval time", "s"),
]
CONTINUAL = {  # key in results["continual"] -> (label, short label for the comparison table, kind)
    "curve_average_accuracy": ("average accuracy over the curve", "curve avg acc (%)", "pct"),
    "min_acc": ("min-ACC (worst accuracy on a seen experience)", "min-ACC (%)", "pct"),
    "wc_acc": ("WC-ACC (worst-case accuracy)", "WC-ACC (%)", "pct"),
    "wf_10": ("WF-10 (windowed forgetting, 10 evaluations)", "WF-10 (%)", "pct"),
    "wp_10": ("WP-10 (windowed plasticity, 10 evaluations)", "WP-10 (%)", "pct"),
    "eval_every": ("evaluated every (iterations)", None, "int"),
    "subsample": ("test samples per evaluation", None, "int"),
}


def _continual_info(key: str, value) -> tuple[str, str | None, str]:
    if key in CONTINUAL:
        return CONTINUAL[key]
    m = re.fullmatch(r"(wf|wp)_(\d+)", key)
    if m:
        what = "forgetting" if m.group(1) == "wf" else "plasticity"
        return f"{m.group(1).upper()}-{m.group(2)} (windowed {what}, {m.group(2)} evaluations)", None, "pct"
    if key.endswith("_s"):
        return key.replace("_", " ")[:-2] + " (continual evaluation)", None, "s"
    if "acc" in key:
        return key.replace("_", " "), None, "pct"
    return key.replace("_", " "), None, "int" if isinstance(value, int) else "num"


COMPARE = [("average_accuracy", "final avg acc (%)"), ("average_incremental_accuracy", "avg incr. acc (%)"),
           ("forgetting", "forgetting (%)"), ("bwt", "BWT (%)"), ("fwt", "FWT (%)")]


# ----------------------------------------------------------------------------------------------
# reading run folders


@dataclass
class Run:
    path: Path                      # the run folder (holds results.json)
    res: dict
    R: list[list[float]]            # accuracy matrix
    curves: list[tuple[int, int, int, float]] | None = None  # (step, experience, eval_experience, accuracy)
    boundaries: list[int] | None = None
    label: str = ""
    slug: str = ""
    figures: dict[str, tuple[str, bytes, tuple[int, int]]] = field(default_factory=dict)

    @property
    def T(self) -> int:
        return len(self.R)

    @property
    def strategy_name(self) -> str:
        cfg = self.res.get("config")
        if isinstance(cfg, dict) and isinstance(cfg.get("strategy"), dict) and cfg["strategy"].get("name"):
            return str(cfg["strategy"]["name"])
        return str(self.res.get("strategy", "?"))

    @property
    def group_key(self) -> str:
        """Runs of the same strategy (with the same parameters) on the same benchmark and scenario."""
        cfg = self.res.get("config")
        strat = cfg.get("strategy") if isinstance(cfg, dict) else None
        return json.dumps([self.res.get("benchmark"), self.res.get("scenario"),
                           strat if isinstance(strat, dict) else self.res.get("strategy")],
                          sort_keys=True, default=str)


def find_run_dirs(path: Path) -> list[Path]:
    """The run folders in ``path``: itself when it holds results.json, else those below it (a sweep)."""
    path = Path(path)
    if not path.exists():
        raise LifelongError(f"{path} does not exist; expected a run folder (with results.json) "
                            "or a sweep folder, as written by 'lifelong run --out DIR'")
    if path.is_file():
        if path.name == "results.json":
            return [path.parent]
        raise LifelongError(f"{path} is a file, not a run folder; expected a folder holding results.json "
                            "(or a sweep folder), as written by 'lifelong run --out DIR'")
    if (path / "results.json").is_file():
        return [path]
    found = sorted(p.parent for p in path.rglob("results.json")
                   if p.is_file() and not any(".tmp-" in part for part in p.relative_to(path).parts))
    if not found:
        raise LifelongError(f"{path} is not a run folder: no results.json in it or below it; expected a run "
                            "or sweep folder, as written by 'lifelong run --out DIR'")
    return found


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def load_run(run_dir: Path) -> Run:
    f = Path(run_dir) / "results.json"
    try:
        res = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LifelongError(f"{f} is corrupt: it is not valid JSON ({exc}); re-run that experiment, "
                            "or leave its folder out of the report") from None
    except OSError as exc:
        raise LifelongError(f"cannot read {f}: {exc.strerror or exc}") from None
    R = res.get("accuracy_matrix") if isinstance(res, dict) else None
    if not (isinstance(R, list) and R and all(isinstance(r, list) and len(r) == len(R) for r in R)
            and all(_is_num(a) for r in R for a in r)):
        raise LifelongError(f"{f} is corrupt: it does not hold a lifelong results object with an "
                            "'accuracy_matrix' (a T x T list of accuracies); re-run that experiment, "
                            "or leave its folder out of the report")
    run = Run(path=Path(run_dir), res=res, R=[[float(a) for a in r] for r in R])
    b = res.get("boundaries")
    if isinstance(b, list) and b and all(_is_num(x) for x in b):
        run.boundaries = [int(x) for x in b]
    cf = Path(run_dir) / "curves.csv"
    if cf.is_file():
        run.curves = _load_curves(cf, run.T)
        if run.boundaries is None and run.curves:
            last: dict[int, int] = {}
            for step, e, _, _ in run.curves:
                last[e] = max(step, last.get(e, step))
            run.boundaries = [last[e] for e in sorted(last)]
    return run


def _load_curves(f: Path, T: int) -> list[tuple[int, int, int, float]] | None:
    need = ("step", "experience", "eval_experience", "accuracy")
    rows = []
    try:
        with f.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in need if c not in (reader.fieldnames or [])]
            if missing:
                raise LifelongError(f"{f} is corrupt: it lacks the column(s) {', '.join(missing)} "
                                    f"(expected {','.join(need)})")
            for n, row in enumerate(reader, start=2):
                try:
                    rows.append((int(float(row["step"])), int(float(row["experience"])),
                                 int(float(row["eval_experience"])), float(row["accuracy"])))
                except (TypeError, ValueError):
                    raise LifelongError(f"{f} is corrupt: line {n} is not 'step,experience,eval_experience,"
                                        f"accuracy' numbers: {row}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise LifelongError(f"{f} is corrupt: {exc}") from None
    if not rows:
        return None
    # experience indices are 0-based like everywhere in lifelong; accept a 1-based file too
    idx = {r[1] for r in rows} | {r[2] for r in rows}
    if 0 not in idx and max(idx) == T:
        rows = [(s, e - 1, j - 1, a) for s, e, j, a in rows]
    rows.sort()
    return rows


def load_runs(paths: list[Path]) -> list[Run]:
    if not paths:
        raise LifelongError("no run folder given; expected one or more run or sweep folders")
    dirs: list[Path] = []
    seen = set()
    for p in paths:
        for d in find_run_dirs(Path(p)):
            key = d.resolve()
            if key not in seen:
                seen.add(key)
                dirs.append(d)
    runs = [load_run(d) for d in dirs]
    _label(runs)
    return runs


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "run"


def _label(runs: list[Run]) -> None:
    labels = [f"{r.strategy_name} seed {r.res.get('seed', '?')}" for r in runs]
    if len(set(labels)) < len(labels):  # same strategy and seed: tell them apart by benchmark, then folder
        labels = [f"{r.res.get('benchmark', '?')} {lab}" for r, lab in zip(runs, labels)]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} ({_show_path(r.path)})" for r, lab in zip(runs, labels)]
    for i, (r, lab) in enumerate(zip(runs, labels), start=1):
        r.label = lab
        r.slug = f"run{i:02d}-{_slug(r.strategy_name)}-s{_slug(str(r.res.get('seed', 'x')))}"


def _show_path(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(Path(p).resolve())


# ----------------------------------------------------------------------------------------------
# derived numbers


def forgetting_per_experience(R: list[list[float]]) -> list[float]:
    """max_{l<T-1} R[l][j] - R[T-1][j] for j < T-1 (Chaudhry et al.; their mean is 'forgetting')."""
    T = len(R)
    return [max(R[l][j] for l in range(T - 1)) - R[T - 1][j] for j in range(T - 1)]


def end_average_curve(R: list[list[float]]) -> list[float]:
    """Average accuracy on the experiences seen so far, after each experience."""
    return [statistics.fmean(R[i][: i + 1]) for i in range(len(R))]


def curve_average(curves) -> tuple[list[int], list[float]]:
    """Average accuracy over the experiences seen so far, at each evaluated step."""
    by_step: dict[int, list[float]] = {}
    for step, e, j, a in curves:
        if j <= e:
            by_step.setdefault(step, []).append(a)
    steps = sorted(by_step)
    return steps, [statistics.fmean(by_step[s]) for s in steps]


# ----------------------------------------------------------------------------------------------
# figures


def _mpl():
    try:
        import matplotlib
    except ImportError:
        raise LifelongError("the report needs matplotlib: pip install 'lifelong[report]'") from None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return matplotlib, Figure, FigureCanvasAgg


def _new_fig(w: float, h: float):
    _, Figure, FigureCanvasAgg = _mpl()
    fig = Figure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> tuple[bytes, tuple[int, int]]:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    data = buf.getvalue()
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return data, (w, h)


def _colors(n: int) -> list:
    matplotlib, _, _ = _mpl()
    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(i / max(1, n - 1)) for i in range(n)]


def fig_matrix(run: Run):
    T = run.T
    side = min(7.0, 2.6 + 0.3 * T)
    fig = _new_fig(side + 0.9, side)
    ax = fig.add_subplot()
    im = ax.imshow([[100 * a for a in r] for r in run.R], cmap="viridis", vmin=0, vmax=100, aspect="equal")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="accuracy (%)")
    if T <= 20:
        fs = 9 if T <= 6 else 8 if T <= 10 else 6 if T <= 14 else 5
        fmt = "{:.1f}" if T <= 6 else "{:.0f}"
        for i, row in enumerate(run.R):
            for j, a in enumerate(row):
                ax.text(j, i, fmt.format(100 * a), ha="center", va="center", fontsize=fs,
                        color="white" if a < 0.55 else "black")
    ticks = list(range(T)) if T <= 20 else list(range(0, T, max(1, T // 10)))
    ax.set_xticks(ticks, [str(t + 1) for t in ticks], fontsize=8)
    ax.set_yticks(ticks, [str(t + 1) for t in ticks], fontsize=8)
    ax.set_xlabel("evaluated on experience")
    ax.set_ylabel("after training experience")
    ax.set_title("accuracy matrix (%)", fontsize=10)
    fig.tight_layout()
    return fig


def _legend(ax, n: int, **kw):
    if n <= 21:
        ax.legend(fontsize=7, ncol=1 if n <= 11 else 2, frameon=False, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), **kw)


def fig_curves(run: Run):
    T = run.T
    fig = _new_fig(7.2, 3.6)
    ax = fig.add_subplot()
    colors = _colors(T)
    if run.curves:
        per: dict[int, list[tuple[int, int, float]]] = {}
        for step, e, j, a in run.curves:
            per.setdefault(j, []).append((step, e, a))
        for j in sorted(per):
            pts = per[j]
            c = colors[j % len(colors)] if 0 <= j < T else "grey"
            seen = [(s, 100 * a) for s, e, a in pts if j <= e]
            unseen = [(s, 100 * a) for s, e, a in pts if j > e]
            if unseen:
                ax.plot(*zip(*unseen), color=c, lw=0.8, ls=":", alpha=0.5)
            if seen:
                ax.plot(*zip(*seen), color=c, lw=1.2, label=f"exp {j + 1}")
        steps, avg = curve_average(run.curves)
        if steps:
            ax.plot(steps, [100 * a for a in avg], color="black", lw=2.0, label="average (seen)")
        for b in run.boundaries or []:
            ax.axvline(b, color="0.4", lw=0.8, ls="--", zorder=0)
        right = max([s for s, _, _, _ in run.curves] + list(run.boundaries or []))
        ax.set_xlim(0, right * 1.02 if right > 0 else 1)
        b = [0] + list(run.boundaries or [])
        if len(b) >= 2 and len(b) - 1 <= 12:
            tr = ax.get_xaxis_transform()
            for k in range(len(b) - 1):
                ax.text((b[k] + b[k + 1]) / 2, 1.01, f"E{k + 1}", transform=tr, ha="center", va="bottom",
                        fontsize=7, color="0.3")
        ax.set_xlabel("training iteration (dashed: end of an experience)")
        ax.set_title("accuracy on each experience during training", fontsize=10, pad=14)
    else:
        xs = list(range(1, T + 1))
        for j in range(T):
            ax.plot(xs[j:], [100 * run.R[i][j] for i in range(j, T)], marker="o", ms=3, lw=1.2,
                    color=colors[j], label=f"exp {j + 1}")
        ax.plot(xs, [100 * a for a in end_average_curve(run.R)], color="black", lw=2.0, marker="s", ms=3,
                label="average (seen)")
        ax.set_xticks(xs if T <= 20 else xs[:: max(1, T // 10)])
        ax.set_xlabel("after training experience")
        ax.set_title("accuracy on each experience after each experience (no curves.csv)", fontsize=10)
    ax.set_ylim(-2, 102)
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.25)
    _legend(ax, T + 1)
    fig.tight_layout()
    return fig


def fig_forgetting(run: Run):
    T = run.T
    fig = _new_fig(max(3.6, min(9.0, 2.2 + 0.35 * T)), 3.2)
    ax = fig.add_subplot()
    f = forgetting_per_experience(run.R)
    if f:
        xs = list(range(1, T))
        ax.bar(xs, [100 * v for v in f], color=_colors(T)[: T - 1], edgecolor="black", lw=0.4)
        mean = 100 * statistics.fmean(f)
        ax.axhline(mean, color="black", ls="--", lw=1)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(xs if T <= 20 else xs[:: max(1, T // 10)])
        title = f"forgetting per experience (mean {mean:.1f})"
    else:
        ax.text(0.5, 0.5, "one experience: no forgetting", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        title = "forgetting per experience"
    ax.set_xlabel("experience")
    ax.set_ylabel("best earlier - final acc. (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.25, axis="y")
    fig.tight_layout()
    return fig


def fig_compare(groups: list[tuple[str, list[Run]]]):
    fig = _new_fig(7.2, 3.8)
    ax = fig.add_subplot()
    colors = _colors(len(groups))
    runs = [r for _, rs in groups for r in rs]
    use_curves = all(r.curves for r in runs)
    for (label, rs), c in zip(groups, colors):
        if use_curves:
            xy = [curve_average(r.curves) for r in rs]
        else:
            xy = [(list(range(1, r.T + 1)), end_average_curve(r.R)) for r in rs]
        if len(rs) > 1 and all(x == xy[0][0] for x, _ in xy):
            x = xy[0][0]
            ys = list(zip(*[y for _, y in xy]))
            mean = [100 * statistics.fmean(v) for v in ys]
            std = [100 * statistics.stdev(v) for v in ys]
            ax.plot(x, mean, color=c, lw=1.8, marker=None if use_curves else "o", ms=3,
                    label=f"{label} (mean of {len(rs)})")
            ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=c, alpha=0.18, lw=0)
        else:
            for k, (x, y) in enumerate(xy):
                ax.plot(x, [100 * v for v in y], color=c, lw=1.4, marker=None if use_curves else "o", ms=3,
                        label=label if k == 0 else None)
    if use_curves:
        bs = {tuple(r.boundaries or ()) for r in runs}
        if len(bs) == 1:
            for b in next(iter(bs)):
                ax.axvline(b, color="0.4", lw=0.8, ls="--", zorder=0)
        ax.set_xlabel("training iteration")
    else:
        ax.set_xlabel("after training experience")
        T = max(r.T for r in runs)
        ax.set_xticks(list(range(1, T + 1)) if T <= 20 else list(range(1, T + 1, max(1, T // 10))))
    ax.set_ylim(-2, 102)
    ax.set_ylabel("average accuracy on seen (%)")
    ax.set_title("average accuracy on the experiences seen so far", fontsize=10)
    ax.grid(alpha=0.25)
    _legend(ax, len(groups))
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# HTML

CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 0 auto; max-width: 1400px; padding: 1rem 1.5rem 3rem; color: #1d2330; background: #fff;
       line-height: 1.4; }
h1 { font-size: 1.6rem; margin: .4rem 0; }
h2 { font-size: 1.25rem; margin: 0 0 .3rem; }
.meta, .path { color: #5b6475; font-size: .85rem; }
.path code { font-size: .8rem; }
section { border-top: 1px solid #d9dde5; padding-top: 1rem; margin-top: 1.5rem; }
nav ol { columns: 2; font-size: .9rem; }
table { border-collapse: collapse; font-size: .85rem; margin: .5rem 0; }
th, td { border: 1px solid #d9dde5; padding: .25rem .55rem; text-align: right; }
td { white-space: nowrap; }
.scroll { overflow-x: auto; max-width: 100%; }
th { background: #f1f3f7; }
td.l, th.l { text-align: left; }
.row { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
figure { margin: .5rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eceff4; }
figcaption { font-size: .8rem; color: #5b6475; max-width: 720px; }
details { margin-top: .5rem; font-size: .85rem; }
.tag { display: inline-block; background: #eef2fb; border-radius: 4px; padding: 0 .4rem; margin-right: .3rem;
       font-size: .85rem; }
"""

SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, n = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { n++; }
  }
  document.body.dataset.figuresLoaded = String(n);
});
"""

CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v, kind: str) -> str:
    if not _is_num(v) or (isinstance(v, float) and math.isnan(v)):
        return "–" if v is None or _is_num(v) else _e(v)
    if kind == "pct":
        return f"{100 * v:.2f}"
    if kind == "s":
        return f"{v:.2f}"
    if kind == "int":
        return str(int(v))
    return f"{v:.4g}"


def _img(name: str, data: bytes, size: tuple[int, int], alt: str, caption: str) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return (f'<figure style="width: {size[0] + 2}px; max-width: 100%"><img class="fig" data-name="{_e(name)}" alt="{_e(alt)}" width="{size[0]}" '
            f'height="{size[1]}" src="data:image/png;base64,{b64}"><figcaption>{caption}</figcaption></figure>')


def _metrics_table(run: Run) -> str:
    res = run.res
    rows = [(label, _fmt(res[k], kind) + ("" if _fmt(res[k], kind) == "–" else " s" if kind == "s" else " %"))
            for k, label, kind in METRICS if k in res]
    cont = res.get("continual")
    if isinstance(cont, dict):
        for k, v in cont.items():
            label, _, kind = _continual_info(k, v)
            unit = " %" if kind == "pct" else " s" if kind == "s" else ""
            if isinstance(v, list) and all(_is_num(x) for x in v):
                rows.append((label, ", ".join(_fmt(x, kind) for x in v) + (unit if v else "")))
            elif _is_num(v):
                rows.append((label, _fmt(v, kind) + ("" if _fmt(v, kind) == "–" else unit)))
            else:
                rows.append((label, _e(json.dumps(v, default=str))))
    body = "".join(f'<tr><td class="l">{_e(a)}</td><td>{b}</td></tr>' for a, b in rows)
    return f'<table class="metrics"><tr><th class="l">metric</th><th>value</th></tr>{body}</table>'


def _matrix_table(run: Run) -> str:
    head = "".join(f"<th>exp {j + 1}</th>" for j in range(run.T))
    body = "".join(f'<tr><th class="l">after exp {i + 1}</th>' + "".join(f"<td>{100 * a:.1f}</td>" for a in r)
                   + "</tr>" for i, r in enumerate(run.R))
    return f'<table class="matrix"><tr><th class="l">after \\ on</th>{head}</tr>{body}</table>'


def _run_section(i: int, run: Run) -> str:
    res = run.res
    scen = res.get("scenario", "?")
    tags = "".join(f'<span class="tag">{_e(k)}: {_e(v)}</span>' for k, v in
                   (("benchmark", res.get("benchmark", "?")), ("scenario", f"{scen}-IL"),
                    ("strategy", run.strategy_name), ("seed", res.get("seed", "?")),
                    ("experiences", run.T), ("device", res.get("device", "?"))))
    figs = run.figures
    m_name, m_data, m_size = figs["matrix"]
    c_name, c_data, c_size = figs["curves"]
    f_name, f_data, f_size = figs["forgetting"]
    curve_cap = ("Accuracy on each experience's test subsample during training; solid once the experience has "
                 "been trained on, dotted before; black: average over the experiences seen so far; dashed "
                 "lines: end of each experience." if run.curves else
                 "No curves.csv in this run folder: accuracy on each experience after training each "
                 "experience (rows of the accuracy matrix); black: average over the experiences seen so far.")
    return f"""
<section class="run" id="run-{i}">
  <h2>{i}. {_e(res.get('benchmark', '?'))} · {_e(scen)}-IL · {_e(run.strategy_name)} · seed {_e(res.get('seed', '?'))}</h2>
  <p>{tags}</p>
  <p class="path">folder <code>{_e(_show_path(run.path))}</code> · strategy <code>{_e(res.get('strategy', '?'))}</code></p>
  <div class="row">
    {_metrics_table(run)}
    {_img(m_name, m_data, m_size, f"accuracy matrix of run {i}",
          "R[i][j]: accuracy (%) on experience j after training experience i."
          + (" Too many experiences to print the values here: see the table below." if run.T > 20 else ""))}
  </div>
  <div class="row">
    {_img(c_name, c_data, c_size, f"accuracy curves of run {i}", curve_cap)}
    {_img(f_name, f_data, f_size, f"forgetting per experience of run {i}",
          "Per experience (all but the last): best accuracy after any earlier experience minus the final "
          "accuracy; dashed: their mean, the run's forgetting.")}
  </div>
  <details><summary>accuracy matrix as numbers (%)</summary><div class="scroll">{_matrix_table(run)}</div></details>
</section>"""


def group_runs(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """Runs whose configs differ only by the seed, in first-seen order, each with a unique label."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.group_key, []).append(r)
    items = list(groups.values())
    labels = [rs[0].strategy_name for rs in items]
    if len(set(labels)) < len(labels):
        labels = [str(rs[0].res.get("strategy", rs[0].strategy_name)) for rs in items]
    if len(set(labels)) < len(labels) and len({rs[0].res.get("benchmark") for rs in items}) > 1:
        labels = [f"{rs[0].res.get('benchmark', '?')} {lab}" for rs, lab in zip(items, labels)]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} #{k}" for k, lab in enumerate(labels, start=1)]
    return list(zip(labels, items))


def _compare_table(runs: list[Run], groups: list[tuple[str, list[Run]]]) -> str:
    cont_keys = [k for k, (_, short, _) in CONTINUAL.items() if short
                 and any(isinstance(r.res.get("continual"), dict) and k in r.res["continual"] for r in runs)]
    cols = [(k, lab, False) for k, lab in COMPARE] + [(k, CONTINUAL[k][1], True) for k in cont_keys]

    def get(r: Run, k: str, cont: bool):
        v = (r.res.get("continual") or {}).get(k) if cont else r.res.get(k)
        return v if _is_num(v) and not (isinstance(v, float) and math.isnan(v)) else None

    def cell(vals: list, scale: float, nd: int) -> str:
        n = len(vals)
        vals = [v for v in vals if v is not None]
        if not vals:
            return "–"
        part = f" (of {len(vals)})" if len(vals) < n else ""
        if len(vals) == 1:
            return f"{scale * vals[0]:.{nd}f}{part}"
        return f"{scale * statistics.fmean(vals):.{nd}f} ± {scale * statistics.stdev(vals):.{nd}f}{part}"

    per_group = any(len(rs) > 1 for _, rs in groups)
    head = ("<tr><th class='l'>" + ("strategy" if per_group else "run") + "</th><th class='l'>benchmark</th>"
            "<th>runs</th><th class='l'>seeds</th>" if per_group else
            "<tr><th class='l'>run</th><th class='l'>benchmark</th><th class='l'>seed</th>")
    head += "".join(f"<th>{_e(lab)}</th>" for _, lab, _ in cols) + "<th>wall time (s)</th></tr>"
    rows = []
    if per_group:
        for label, rs in groups:
            r0 = rs[0]
            seeds = ", ".join(str(r.res.get("seed", "?")) for r in rs)
            rows.append(f"<tr><td class='l'>{_e(label)}</td><td class='l'>{_e(r0.res.get('benchmark', '?'))} "
                        f"({_e(r0.res.get('scenario', '?'))}-IL)</td><td>{len(rs)}</td><td class='l'>{_e(seeds)}</td>"
                        + "".join(f"<td>{cell([get(r, k, c) for r in rs], 100, 2)}</td>" for k, _, c in cols)
                        + f"<td>{cell([get(r, 'wall_time_s', False) for r in rs], 1, 1)}</td></tr>")
    else:
        for i, r in enumerate(runs, start=1):
            rows.append(f"<tr><td class='l'><a href='#run-{i}'>{_e(r.label)}</a></td>"
                        f"<td class='l'>{_e(r.res.get('benchmark', '?'))} ({_e(r.res.get('scenario', '?'))}-IL)</td>"
                        f"<td class='l'>{_e(r.res.get('seed', '?'))}</td>"
                        + "".join(f"<td>{cell([get(r, k, c)], 100, 2)}</td>" for k, _, c in cols)
                        + f"<td>{cell([get(r, 'wall_time_s', False)], 1, 1)}</td></tr>")
    note = ("<p class='meta'>mean ± standard deviation over the seeds of each strategy (same benchmark, "
            "scenario and strategy parameters); a single value where it ran with one seed.</p>"
            if per_group else "")
    return f"<table class='compare'>{head}{''.join(rows)}</table>{note}"


def render_html(runs: list[Run], compare: tuple[str, bytes, tuple[int, int]] | None,
                groups: list[tuple[str, list[Run]]]) -> str:
    n_figs = 3 * len(runs) + (1 if compare else 0)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = []
    if len(runs) > 1:
        toc = "".join(f"<li><a href='#run-{i}'>{_e(r.label)}</a> · {_e(r.res.get('benchmark', '?'))}</li>"
                      for i, r in enumerate(runs, start=1))
        name, data, size = compare
        parts.append(f"""
<section id="comparison">
  <h2>Comparison of {len(runs)} runs</h2>
  <div class="scroll">{_compare_table(runs, groups)}</div>
  {_img(name, data, size, "average accuracy curves of all runs",
        "Average accuracy on the experiences seen so far; one line per strategy (mean over seeds, "
        "band: ± one standard deviation) or per run.")}
  <nav><ol>{toc}</ol></nav>
</section>""")
    parts += [_run_section(i, r) for i, r in enumerate(runs, start=1)]
    title = "lifelong report" + (f": {runs[0].label}" if len(runs) == 1 else f": {len(runs)} runs")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{CSS}</style>
</head>
<body data-figures="{n_figs}">
<header>
  <h1>{_e(title)}</h1>
  <p class="meta">generated {now} by lifelong {_e(__version__)} · accuracies in %, from results.json
  (and curves.csv where present) of each run folder</p>
</header>
{''.join(parts)}
<script>{SCRIPT}</script>
</body>
</html>
"""


# ----------------------------------------------------------------------------------------------
# entry point


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


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_report(run_dirs: list[Path], out: Path | None = None, *, force: bool = False) -> Path:
    """Write ``out/report.html`` and its figures as PNG files; returns the path of report.html.

    ``out`` defaults to ``<run dir>/report`` when a single folder is given. An existing non-empty
    ``out`` is refused unless ``force`` (then only report.html and this report's PNGs are replaced).
    """
    run_dirs = [Path(p) for p in run_dirs]
    out = Path(out) if out is not None else default_out(run_dirs)
    _check_out(out, force)
    runs = load_runs(run_dirs)
    files: dict[str, bytes] = {}

    def draw(fig, name):
        data, size = _png(fig)
        files[name] = data
        return name, data, size

    for r in runs:
        r.figures["matrix"] = draw(fig_matrix(r), f"{r.slug}-matrix.png")
        r.figures["curves"] = draw(fig_curves(r), f"{r.slug}-curves.png")
        r.figures["forgetting"] = draw(fig_forgetting(r), f"{r.slug}-forgetting.png")
    groups = group_runs(runs)
    compare = draw(fig_compare(groups), "comparison-average-accuracy.png") if len(runs) > 1 else None
    page = render_html(runs, compare, groups)
    _check_out(out, force)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        _write(out / name, data)
    _write(out / REPORT_NAME, page.encode("utf-8"))
    return out / REPORT_NAME
