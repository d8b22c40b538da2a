"""What the evidence grids (``method_grid.py``, ``online_grid.py``) share; no torch import (the
grids only start runs).

- A generated table kept inside a hand-written doc: the lines between ``<!-- grid:NAME -->`` and
  ``<!-- /grid -->`` belong to the script that writes them (``--update-doc``), the rest to the reader.
- A paper's claim "A > B" judged on paired seeds (the same seed: the same stream and initial
  weights): the paired difference of final accuracy and the seeds where A wins.
"""
from __future__ import annotations

import re
import statistics
from pathlib import Path

CLAIM_HEADER = ["| claim (A's paper) | benchmark | {cell} | seeds | A - B (points) | A wins | verdict |",
                "|---|---|---|---|---|---|---|"]


def paper_source(paper: str) -> str:
    """"Authors YEAR" from a strategy's ``paper`` ("Authors YEAR, Title ..."), else the whole text."""
    m = re.match(r".*?\b(19|20)\d\d\b", paper)
    return m.group(0) if m else paper


def claim_row(claim: str, bench: str, cell: str, a: dict[int, float], b: dict[int, float]) -> str | None:
    """One row of the claims table, from A's and B's final accuracies by seed (None: no seed in
    common). "holds" when A wins on every shared seed, "does not hold" on none, else "mixed"."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d = [100 * (a[s] - b[s]) for s in seeds]
    wins = sum(x > 0 for x in d)
    sd = statistics.stdev(d) if len(d) > 1 else 0.0
    verdict = "holds" if wins == len(d) else "does not hold" if wins == 0 else "mixed"
    return (f"| {claim} | {bench} | {cell} | {len(seeds)} | {statistics.fmean(d):.2f} ± {sd:.2f} | "
            f"{wins}/{len(seeds)} | {verdict} |")


def grid_block(path: Path, name: str) -> tuple[str, int, int]:
    """``path``'s text and the span between its ``<!-- grid:name -->`` and ``<!-- /grid -->``; a
    file that cannot take the table is refused (``SystemExit`` naming it), so a script can check
    its doc before hours of runs."""
    try:
        doc = path.read_text()
    except OSError as exc:
        raise SystemExit(f"--update-doc {path}: cannot read it ({exc.strerror})") from None
    start, end = f"<!-- grid:{name} -->", "<!-- /grid -->"
    if start not in doc or end not in doc[doc.find(start):]:
        raise SystemExit(f"{path} has no '{start}' ... '{end}' block for the table; add the two lines where it goes")
    i = doc.index(start) + len(start)
    return doc, i, doc.index(end, i)


def update_doc(path: Path, name: str, text: str) -> None:
    """Put ``text`` between ``<!-- grid:name -->`` and ``<!-- /grid -->`` in ``path``."""
    doc, i, j = grid_block(path, name)
    path.write_text(doc[:i] + "\n\n" + text + "\n\n" + doc[j:])
