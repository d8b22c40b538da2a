"""Continual-learning metrics on an accuracy matrix.

``R[i][j]`` is the accuracy on test experience ``j`` after training experience ``i``
(T x T, values in [0, 1]). Definitions:

- average accuracy (final): ``mean_j R[T-1][j]``
- average incremental accuracy (Rebuffi et al., 2017): ``mean_i mean_{j<=i} R[i][j]``
- forgetting (Chaudhry et al., 2018): ``mean_{j<T-1} max_{l<T-1} R[l][j] - R[T-1][j]``
- BWT (Lopez-Paz & Ranzato, 2017): ``mean_{j<T-1} R[T-1][j] - R[j][j]``
- FWT (Lopez-Paz & Ranzato, 2017): ``mean_{j>0} R[j-1][j] - b[j]``, ``b`` = accuracy of the
  model before any training.
"""
from __future__ import annotations

import numpy as np


def _R(R) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1]:
        raise ValueError(f"accuracy matrix must be square (T x T), got shape {R.shape}")
    return R


def average_accuracy(R) -> float:
    return float(_R(R)[-1].mean())


def average_incremental_accuracy(R) -> float:
    R = _R(R)
    return float(np.mean([R[i, : i + 1].mean() for i in range(len(R))]))


def forgetting_per_experience(R) -> list[float]:
    """``max_{l<T-1} R[l][j] - R[T-1][j]`` for each ``j < T-1``; their mean is :func:`forgetting`."""
    R = _R(R)
    T = len(R)
    return [float(R[: T - 1, j].max() - R[T - 1, j]) for j in range(T - 1)]


def forgetting(R) -> float:
    per = forgetting_per_experience(R)
    return float(np.mean(per)) if per else 0.0


def bwt(R) -> float:
    R = _R(R)
    T = len(R)
    if T < 2:
        return 0.0
    return float(np.mean([R[T - 1, j] - R[j, j] for j in range(T - 1)]))


def fwt(R, initial) -> float:
    R = _R(R)
    b = np.asarray(initial, dtype=float)
    T = len(R)
    if T < 2:
        return 0.0
    return float(np.mean([R[j - 1, j] - b[j] for j in range(1, T)]))


def summary(R, initial=None) -> dict[str, float]:
    out = {
        "average_accuracy": average_accuracy(R),
        "average_incremental_accuracy": average_incremental_accuracy(R),
        "forgetting": forgetting(R),
        "bwt": bwt(R),
    }
    if initial is not None:
        out["fwt"] = fwt(R, initial)
    return out
