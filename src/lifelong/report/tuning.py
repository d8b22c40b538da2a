"""The tuning section of the report, for tune folders (``lifelong tune --out``): the protocol (a
TUNED ON TEST banner when selection saw the test sets), the phase-1-vs-phase-2 rankings (a table
and a slope chart), and per study its trials (a table, and the objective against the trial number
with the best so far), and the importance of each hyper-parameter (Optuna's default fANOVA
evaluator, seeded so the report is reproducible).

The trials' run folders do not become run sections of the report (a study can have hundreds):
the report's runs of a tune folder are its phase-2 runs; the trials appear only in the tables.
When the study store cannot be opened (a PostgreSQL URL whose password ``tune.json`` does not
keep, a moved database), the section says so and shows what ``tune.json`` holds.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LifelongError
from ..results import TEST_MARK, TuneFolder, is_tune_folder, load_tune, trial_rows
from .figures import _colors, _new_fig

__all__ = ["StudyView", "TuneView", "is_tune_folder", "phase2_run_dirs", "load_tuning", "importance",
           "fig_trials", "fig_ranks", "render_tuning", "IMPORTANCE_SEED", "MIN_COMPLETE"]

IMPORTANCE_SEED = 0
MIN_COMPLETE = 2  # complete trials fANOVA needs


@dataclass
class StudyView:
    entry: dict                          # the study's record in tune.json
    trials: list[dict] | None = None     # results.trial_rows, None when the store cannot be opened
    importance: dict[str, float] | None = None
    importance_note: str = ""            # why no importance is shown
    figure: tuple[str, bytes, tuple[int, int]] | None = None


@dataclass
class TuneView:
    tune: TuneFolder
    studies: list[StudyView] = field(default_factory=list)
    store_note: str = ""
    ranks_figure: tuple[str, bytes, tuple[int, int]] | None = None
    slug: str = "tune"


def phase2_run_dirs(tune: TuneFolder) -> list[Path]:
    """The phase-2 run folders of a tune (``<study>/phase2/<label>/seed-N``), in tune.json's order."""
    out = []
    for s in tune.summary["studies"]:
        base = tune.path / s["name"] / "phase2"
        for label in s.get("phase2") or {}:
            out += sorted((p for p in (base / label).glob("seed-*") if (p / "results.json").is_file()),
                          key=lambda p: (len(p.name), p.name))
    return out


def importance(storage, name: str, trials: list[dict]) -> tuple[dict[str, float] | None, str]:
    """fANOVA importance of each parameter of study ``name`` (seeded), or None and why not."""
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    params = sorted({k for t in complete for k in t["params"]})
    if len(complete) < MIN_COMPLETE:
        return None, (f"not shown: fANOVA needs at least {MIN_COMPLETE} complete trials, this study has "
                      f"{len(complete)}")
    if len(params) < 2:
        return None, (f"not shown: the study tunes {'one parameter' if params else 'no parameter'}"
                      f"{' (' + params[0] + ')' if params else ''}; importance compares two or more")
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    try:
        study = optuna.load_study(study_name=name, storage=storage)
        imp = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=IMPORTANCE_SEED))
    except Exception as exc:  # noqa: BLE001 - a report shows why, it does not fail on it
        return None, f"not shown: Optuna could not compute it ({type(exc).__name__}: {exc})"
    return {k: float(v) for k, v in imp.items()}, ""


def load_tuning(path: Path, storage_url: str | None = None) -> TuneView:
    """A tune folder's section. Its study store is the one ``tune.json`` names, or ``storage_url``
    (``lifelong report --storage``): a named store that cannot be opened is an error, the one
    ``tune.json`` names leaves a note in the section (what ``tune.json`` holds is still shown)."""
    tune = load_tune(path, storage_url)
    view = TuneView(tune)
    try:
        storage = tune.storage()
    except LifelongError as exc:
        if storage_url is not None:
            raise
        storage, view.store_note = None, str(exc)
    for entry in tune.summary["studies"]:
        sv = StudyView(entry)
        if storage is not None:
            sv.trials = trial_rows(storage, entry["name"])
            sv.importance, sv.importance_note = importance(storage, entry["name"], sv.trials)
        else:
            sv.importance_note = "not shown: the study store cannot be opened"
        view.studies.append(sv)
    return view


# -- figures ---------------------------------------------------------------------------------


def _scale(objective: str) -> float:
    return 100.0 if objective.endswith("accuracy") else 1.0


def fig_trials(trials: list[dict], direction: str, objective: str, title: str):
    """Objective of each complete trial against its number, with the best so far as a step line;
    pruned and failed trials as marks on the bottom edge."""
    k = _scale(objective)
    fig = _new_fig(6.4, 3.2)
    ax = fig.add_subplot()
    done = [(t["number"], k * t["value"]) for t in trials
            if t["state"] == "COMPLETE" and isinstance(t["value"], (int, float))]
    if done:
        ax.plot(*zip(*done), "o", color="tab:blue", ms=4, label="complete trial")
        best, xs, ys = None, [], []
        pick = max if direction == "maximize" else min
        for n, v in done:
            best = v if best is None else pick(best, v)
            xs.append(n)
            ys.append(best)
        ax.step(xs, ys, where="post", color="black", lw=1.5, label="best so far")
    for state, marker, color in (("PRUNED", "x", "tab:orange"), ("FAIL", "v", "tab:red")):
        ns = [t["number"] for t in trials if t["state"].startswith(state)]
        if ns:
            ax.plot(ns, [0.02] * len(ns), marker, color=color, ms=5, transform=ax.get_xaxis_transform(),
                    label=state.lower() if state == "PRUNED" else "failed", clip_on=False)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial number")
    ax.set_ylabel(objective + (" (%)" if k == 100 else ""))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.25)
    if trials:
        ax.legend(fontsize=7, frameon=False, loc="best")
    fig.tight_layout()
    return fig


def rank_columns(summary: dict) -> list[tuple[str, str, dict[str, int]]]:
    """(phase, benchmark, strategy -> rank) for each phase-1 tuning benchmark, then each phase-2 one."""
    r = summary.get("ranking") or {}
    return [("phase 1", lab, ranks) for lab, ranks in (r.get("phase1") or {}).items()] + \
        [("phase 2", lab, ranks) for lab, ranks in (r.get("phase2") or {}).items()]


def fig_ranks(summary: dict):
    """A slope chart: each strategy's rank in phase 1 and in each phase-2 benchmark (1 at the top)."""
    cols = rank_columns(summary)
    strategies = list(dict.fromkeys(s for _, _, ranks in cols for s in ranks))
    fig = _new_fig(max(4.0, 1.8 + 1.5 * len(cols)), 0.9 + 0.4 * max(3, len(strategies)))
    ax = fig.add_subplot()
    for s, c in zip(strategies, _colors(len(strategies))):
        pts = [(i, ranks[s]) for i, (_, _, ranks) in enumerate(cols) if s in ranks]
        ax.plot(*zip(*pts), "-o", color=c, lw=1.8, ms=5, label=s)
    ax.set_xticks(range(len(cols)), [f"{ph}\n{lab}" for ph, lab, _ in cols], fontsize=8)
    n = max((max(r.values()) for _, _, r in cols if r), default=1)
    ax.set_yticks(range(1, n + 1))
    ax.set_ylim(n + 0.5, 0.5)
    ax.set_xlim(-0.3, len(cols) - 0.7)
    ax.set_ylabel("rank (1 = best)")
    ax.set_title("rank of each strategy: tuning (phase 1) and report (phase 2)", fontsize=9)
    ax.grid(alpha=0.25, axis="y")
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


# -- HTML ------------------------------------------------------------------------------------

CSS = """
.banner { background: #b00020; color: #fff; font-weight: 700; padding: .5rem .8rem; border-radius: 4px;
          letter-spacing: .05em; margin: .5rem 0; }
.tuning h3 { font-size: 1.05rem; margin: 1rem 0 .2rem; }
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _num(v, scale: float = 1.0) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{scale * v:.2f}" if scale == 100 else f"{v:.4g}"


def _param(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _ranking_table(summary: dict) -> str:
    cols = rank_columns(summary)
    strategies = list(dict.fromkeys([s.get("strategy") for s in summary["studies"]]
                                    + [s for _, _, r in cols for s in r]))
    acc: dict[tuple[str, str], dict] = {}
    for s in summary["studies"]:
        for lab, p2 in (s.get("phase2") or {}).items():
            acc[(s.get("strategy"), lab)] = (p2 or {}).get("average_accuracy") or {}
    head = "<tr><th class='l'>strategy</th>" + "".join(
        f"<th>{_e(ph)} rank<br>{_e(lab)}</th>" for ph, lab, _ in cols) + "</tr>"
    rows = []
    for st in strategies:
        cells = []
        for ph, lab, ranks in cols:
            a = acc.get((st, lab)) if ph == "phase 2" else None
            extra = f" <span class='meta'>({_num(a.get('mean'), 100)} %)</span>" if a and a.get("mean") is not None \
                else ""
            cells.append(f"<td>{_e(ranks.get(st, '–'))}{extra}</td>")
        rows.append(f"<tr><td class='l'>{_e(st)}</td>{''.join(cells)}</tr>")
    return f"<table class='ranking'>{head}{''.join(rows)}</table>"


def _trials_table(trials: list[dict], scale: float) -> str:
    keys = list(dict.fromkeys(k for t in trials for k in t["params"]))
    head = ("<tr><th>trial</th><th class='l'>state</th><th>value</th><th>duration (s)</th>"
            + "".join(f"<th>{_e(k)}</th>" for k in keys) + "</tr>")
    rows = "".join(
        f"<tr><td>{t['number']}</td><td class='l'>{_e(t['state'])}</td><td>{_num(t['value'], scale)}</td>"
        f"<td>{_num(t['duration_s'])}</td>" + "".join(f"<td>{_e(_param(t['params'][k])) if k in t['params'] else '–'}"
                                                   f"</td>" for k in keys) + "</tr>" for t in trials)
    return f"<table class='trials'>{head}{rows}</table>"


def _importance_table(imp: dict[str, float]) -> str:
    rows = "".join(f"<tr><td class='l'>{_e(k)}</td><td>{100 * v:.1f}</td></tr>" for k, v in imp.items())
    return f"<table class='importance'><tr><th class='l'>parameter</th><th>importance (%)</th></tr>{rows}</table>"


def _study_html(sv: StudyView, summary: dict, img) -> str:
    e = sv.entry
    scale = _scale(str(summary.get("objective", "")))
    tr = e.get("trials") or {}
    best = e.get("best")
    best_txt = "no complete trial" if not best else (
        f"trial {best['number']}: {_num(best['value'], scale)}{' %' if scale == 100 else ''} · "
        + ", ".join(f"{_e(k)}={_e(_param(v))}" for k, v in (best.get("params") or {}).items()))
    parts = [f"<h3>{_e(e['name'])}</h3>",
             f"<p><span class='tag'>strategy: {_e(e.get('strategy'))}</span><span class='tag'>tuned on: "
             f"{_e(e.get('tune_on'))}</span><span class='tag'>trials complete/pruned/failed: "
             f"{_e(tr.get('complete'))}/{_e(tr.get('pruned'))}/{_e(tr.get('failed'))}</span></p>",
             f"<p>best: {best_txt}</p>"]
    if sv.trials is None:
        parts.append("<p class='meta'>trials not shown: the study store cannot be opened (see above).</p>")
    else:
        opened = " open" if len(sv.trials) <= 30 else ""
        parts.append(f"<details class='trials'{opened}><summary>{len(sv.trials)} trials (value: "
                     f"{_e(summary.get('objective'))}{' in %' if scale == 100 else ''} on "
                     f"{'test' if e.get('tuned_on_test') else 'validation'} data)</summary>"
                     f"<div class='scroll'>{_trials_table(sv.trials, scale)}</div></details>")
    row = []
    if sv.figure is not None:
        name, data, size = sv.figure
        row.append(img(name, data, size, f"objective against trial number, study {e['name']}",
                       "Objective of each complete trial; black: the best so far; pruned (x) and failed (v) "
                       "trials on the bottom edge."))
    if sv.importance is not None:
        row.append("<div><p><b>hyper-parameter importance</b> (fANOVA, Optuna's default evaluator, seed "
                   f"{IMPORTANCE_SEED}; shares of the objective's variance, summing to 100)</p>"
                   f"{_importance_table(sv.importance)}</div>")
    else:
        row.append(f"<p class='importance-note'><b>hyper-parameter importance</b> {_e(sv.importance_note)}.</p>")
    parts.append(f"<div class='row'>{''.join(row)}</div>")
    return "".join(parts)


def render_tuning(view: TuneView, img) -> str:
    """The section of one tune folder; ``img`` is page._img (name, data, size, alt, caption)."""
    s = view.tune.summary
    on_test = bool(s.get("tuned_on_test"))
    banner = (f"<p class='banner'>{TEST_MARK}: hyper-parameters were selected on the test sets the phase-2 "
              "numbers below are measured on; they overstate what tuning achieves on unseen data.</p>"
              if on_test else "")
    proto = {"reality-check": "reality check (Cha &amp; Cho): tuned on one benchmark's validation splits, "
                              "reported on other benchmarks' test splits",
             "current-task": "current-task validation: the objective sees only the validation splits of the "
                             "experiences seen so far",
             "test": "tune on test: selected on the test splits it reports"}.get(s.get("protocol"),
                                                                                 _e(s.get("protocol")))
    parts = [f"<section class='tuning' id='{_e(view.slug)}'>",
             f"<h2>Tuning: {_e(view.tune.path.name)} · protocol {_e(s.get('protocol'))}</h2>", banner,
             f"<p>{proto}. Objective: {_e(s.get('objective'))} ({_e(s.get('direction'))}). Study store "
             f"<code>{_e(s.get('storage'))}</code>.</p>"]
    if view.store_note:
        parts.append(f"<p class='meta'>{_e(view.store_note)}</p>")
    if rank_columns(s):
        parts.append("<h3>Rankings: phase 1 (selection) and phase 2 (report)</h3><div class='row'>"
                     f"<div class='scroll'>{_ranking_table(s)}</div>")
        if view.ranks_figure is not None:
            name, data, size = view.ranks_figure
            parts.append(img(name, data, size, "rank of each strategy in phase 1 and phase 2",
                             "Rank of each strategy (1 = best) by its best trial in phase 1 and by its mean "
                             "phase-2 accuracy over seeds on each report benchmark."))
        parts.append("</div>")
    parts += [_study_html(sv, s, img) for sv in view.studies]
    parts.append("</section>")
    return "".join(parts)
