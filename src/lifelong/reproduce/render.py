"""Rendering a reproduction's summary: ``results.md`` (a table per scenario, the notes) and
``results.json`` (the summary itself)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..io import atomic_write_json, atomic_write_text
from .verdicts import FAIL, MISSING, NA, PASS

MODIFIED_BANNER = "modified protocol: verdicts are not comparable"


def _fmt(x: Optional[float], pm: Optional[float] = None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}" + (f" ± {pm:.2f}" if pm is not None else "")


def render_markdown(summary: dict) -> str:
    S = summary
    lines = [f"# Reproduction: {S['title']}", ""]
    if S["modified"]:
        lines += [f"> **{MODIFIED_BANNER.upper()}.** Overrides: " + ", ".join(f"`{o}`" for o in S["overrides"]), ""]
    cit = S.get("citation") or {}
    for k in ("paper", "table", "arxiv", "code"):
        if cit.get(k):
            lines.append(f"- **{k}**: {' '.join(str(cit[k]).split())}")
    prov = S.get("published_provenance", "primary")
    pub_source = " ".join(str(S["published_source"] or "none found (cells without a value get n/a)").split())
    lines += [
        f"- **protocol**: `{S['protocol']}`; metric `{S['metric']}` (final average accuracy, %, in the scenario's "
        "protocol: task-aware for task-IL)",
        f"- **seeds**: {len(S['seeds'])} ({', '.join(map(str, S['seeds']))}); protocol default {S['protocol_seeds']}"
        + (f", paper {S['paper_seeds']}" if S.get("paper_seeds") else ""),
        f"- **verdict rule**: {S['tolerance']['rule']}; SE = sample standard deviation / sqrt(n) over our seeds",
        f"- **published values**: {pub_source}"
        + (" (**secondary transcription**: check against the paper)" if prov == "secondary" else ""),
        "", f"**Overall: {S['status']}** ({S['counts'][PASS]} pass, {S['counts'][FAIL]} fail, "
        f"{S['counts'][NA]} without published value, {S['counts'][MISSING]} without runs)"
        + (f" - {MODIFIED_BANNER}" if S["modified"] else ""), "",
    ]
    has_ref = any(r["reference"] for r in S["cells"])
    by_scen: dict[str, list[dict]] = {}
    for r in S["cells"]:
        by_scen.setdefault(r["scenario"], []).append(r)
    for scen, rows in by_scen.items():
        lines += [f"## {scen}-incremental", "",
                  "| method | n | ours (mean ± SE) | published (mean ± SEM) | diff | tolerance | verdict |"
                  + (" context* |" if has_ref else ""),
                  "|---|---|---|---|---|---|---|" + ("---|" if has_ref else "")]
        for r in rows:
            p, ref = r["published"], r["reference"]
            diff = "-" if r["diff"] is None else f"{r['diff']:+.2f}"
            tol = "-" if r["tolerance"] is None else f"±{r['tolerance']:.2f}"
            context = (_fmt(ref.get("mean"), ref.get("sem")) if ref else "-")
            lines.append(f"| {r['label']} | {r['n']} | {_fmt(r['mean'], r['se'])} | {_fmt(p['mean'], p['sem'])} | "
                         f"{diff} | {tol} | **{r['verdict']}** |" + (f" {context} |" if has_ref else ""))
        lines.append("")
    if has_ref:
        lines += [f"\\* context only, never used for a verdict: {' '.join(str(S['reference_source']).split())}", ""]
    notes = [(r["scenario"], r["label"], r["note"]) for r in S["cells"] if r["note"]]
    if S["notes"] or notes:
        lines += ["## Notes (where paper, reference code and this library differ)", ""]
        lines += [f"- {' '.join(str(n).split())}" for n in S["notes"]]
        lines += [f"- *{s}-IL, {label}*: {' '.join(str(n).split())}" for s, label, n in notes]
        lines.append("")
    return "\n".join(lines)


def write_reports(out: Path, summary: dict) -> tuple[Path, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "results.md", out / "results.json"
    atomic_write_text(md, render_markdown(summary))
    atomic_write_json(js, summary, indent=1)
    return md, js
