"""The report page: one self-contained HTML file (inline CSS, figures as base64 ``data:`` URIs,
a Content-Security-Policy that forbids anything else), with a comparison table when there are
several runs and a section per run."""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import re

from .. import __version__
from ..stats import format_mean_std
from .data import Run, _is_num, _show_path
from .tuning import CSS as TUNING_CSS, render_tuning

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
        return format_mean_std(vals, scale, nd) + part

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
                groups: list[tuple[str, list[Run]]], tunes=()) -> str:
    """``tunes``: `report.tuning.TuneView` of each tune folder, shown first (their runs are in ``runs``)."""
    n_figs = 3 * len(runs) + (1 if compare else 0) + sum(
        (t.ranks_figure is not None) + sum(sv.figure is not None for sv in t.studies) for t in tunes)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [render_tuning(t, _img) for t in tunes]
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
    if tunes:
        title = "lifelong report: " + ", ".join(f"tune {t.tune.path.name}" for t in tunes) + (
            f" ({len(runs)} runs)" if runs else "")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{CSS}{TUNING_CSS if tunes else ""}</style>
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
