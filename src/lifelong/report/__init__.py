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

A tune folder (``lifelong tune --out``) adds a tuning section: protocol (a TUNED ON TEST banner
when so), phase-1-vs-phase-2 rankings, each study's trials and hyper-parameter importance; its
phase-2 runs are the report's runs, its trials are not (:mod:`.tuning`).

The package is split where the jobs are: :mod:`.data` (reading, checking, labelling and
grouping run folders; derived curves), :mod:`.figures` (matplotlib), :mod:`.page` (the HTML)
and :mod:`.writer` (the entry point and the output folder rules).
"""
from .data import Run, curve_average, end_average_curve, find_run_dirs, forgetting_per_experience, group_runs, \
    load_run, load_runs
from .figures import DPI, fig_compare, fig_curves, fig_forgetting, fig_matrix
from .page import COMPARE, CONTINUAL, CSP, METRICS, render_html
from .writer import REPORT_NAME, default_out, write_report

__all__ = [
    "Run", "find_run_dirs", "load_run", "load_runs", "group_runs", "forgetting_per_experience", "end_average_curve",
    "curve_average", "DPI", "fig_matrix", "fig_curves", "fig_forgetting", "fig_compare", "METRICS", "CONTINUAL",
    "COMPARE", "CSP", "render_html", "REPORT_NAME", "default_out", "write_report",
]
