"""Verdicts: per (scenario, method) cell, our mean and standard error over seeds against the
published value.

    PASS  when |ours - published| <= max(points, se_multiplier * SE)   (default 3 points, 2 SE)

where SE is the standard error of *our* mean (sample standard deviation / sqrt(n),
:func:`lifelong.stats.standard_error`); with one seed only the points rule applies. A cell
without a published value gets no verdict (``n/a``)."""
from __future__ import annotations

from typing import Iterable, Optional

from ..stats import mean, standard_error
from .grid import Override, RunSpec
from .protocol import Protocol

PASS, FAIL, NA, MISSING = "PASS", "FAIL", "n/a", "missing"

__all__ = ["PASS", "FAIL", "NA", "MISSING", "standard_error", "verdict", "summarize"]


def verdict(mean: Optional[float], se: Optional[float], published: Optional[float], points: float = 3.0,
            se_multiplier: float = 2.0) -> tuple[str, Optional[float]]:
    """(verdict, tolerance): PASS when |mean - published| <= max(points, se_multiplier * se)."""
    if mean is None:
        return MISSING, None
    if published is None:
        return NA, None
    tol = max(points, se_multiplier * se) if se is not None else points
    return (PASS if abs(mean - published) <= tol + 1e-9 else FAIL), tol


def summarize(protocol: Protocol, specs: list[RunSpec], results: dict[str, dict], *, modified: bool = False,
              overrides: Iterable[Override] = (), seeds: Optional[list[int]] = None) -> dict:
    """Per (scenario, method) cell: values over seeds, mean, SE, published, difference, verdict."""
    points, mult = protocol.tolerance
    metric = protocol.metric
    cells, order = {}, []
    for spec in specs:
        k = (spec.scenario, spec.method)
        if k not in cells:
            cells[k] = []
            order.append(k)
        res = results.get(spec.key)
        if res is not None:
            cells[k].append((spec.seed, 100.0 * float(res[metric])))
    rows = []
    for s, m in order:
        vals = cells[(s, m)]
        values = [v for _, v in vals]
        ours = mean(values) if values else None
        se = standard_error(values)
        pub = protocol.published(s, m)
        v, tol = verdict(ours, se, pub["mean"], points, mult)
        rows.append({
            "scenario": s, "method": m, "label": protocol.label(m),
            "n": len(values), "seeds": [sd for sd, _ in vals], "values": values, "mean": ours, "se": se,
            "published": pub, "diff": (ours - pub["mean"]) if (ours is not None and pub["mean"] is not None) else None,
            "tolerance": tol, "verdict": v, "reference": protocol.reference(s, m), "note": protocol.note(s, m),
        })
    counts = {k: sum(r["verdict"] == k for r in rows) for k in (PASS, FAIL, NA, MISSING)}
    status = FAIL if counts[FAIL] else (PASS if counts[PASS] else "NO VERDICT")
    pub = protocol.data.get("published") or {}
    rule = f"PASS when |ours - published| <= max({points:g}, {mult:g} x SE of our mean)"
    return {
        "protocol": protocol.name, "title": protocol.title, "citation": protocol.data.get("citation"),
        "metric": metric, "tolerance": {"points": points, "se_multiplier": mult, "rule": rule},
        "published_source": pub.get("source"), "published_provenance": pub.get("provenance", "primary"),
        "reference_source": (protocol.data.get("reference") or {}).get("source"),
        "modified": modified, "overrides": [o.text for o in overrides],
        "seeds": seeds if seeds is not None else sorted({s.seed for s in specs}), "protocol_seeds": protocol.seeds,
        "paper_seeds": (protocol.data.get("citation") or {}).get("paper_seeds"),
        "status": status, "counts": counts, "cells": rows,
        "notes": (protocol.data.get("notes") or {}).get("general") or [],
    }
