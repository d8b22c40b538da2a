"""Summary statistics over seeds, in one place: every table (CLI summary, report, reproduce
verdicts) takes its mean, standard deviation and standard error from here."""
from __future__ import annotations

import math
import statistics
from typing import Iterable, Optional


def mean(values: Iterable[float]) -> float:
    """The arithmetic mean (``statistics.fmean``: an exactly rounded sum). Raises on no values."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean of no values")
    return statistics.fmean(vals)


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0.0 for a single value). Raises on no values."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_std of no values")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def standard_error(values: Iterable[float]) -> Optional[float]:
    """Sample standard deviation / sqrt(n) (a paper's s.e.m.); None for fewer than 2 values."""
    vals = [float(v) for v in values]
    if len(vals) < 2:
        return None
    return statistics.stdev(vals) / math.sqrt(len(vals))


def format_mean_std(values: Iterable[float], scale: float = 1.0, digits: int = 2) -> str:
    """``"m ± s"`` (just ``"m"`` for one value), each multiplied by ``scale``."""
    vals = list(values)
    m, s = mean_std(vals)
    if len(vals) == 1:
        return f"{scale * m:.{digits}f}"
    return f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"
