"""A generated table kept inside a hand-written doc: the lines between ``<!-- grid:NAME -->`` and
``<!-- /grid -->`` belong to the script that writes them (``--update-doc``), the rest to the reader.
Used by ``method_grid.py`` and ``online_grid.py``; no torch import (the grids only start runs)."""
from __future__ import annotations

from pathlib import Path


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
