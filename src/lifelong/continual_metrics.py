"""Continual-evaluation metrics on a per-iteration accuracy curve.

De Lange, van de Ven & Tuytelaars, "Continual evaluation for lifelong learning: Identifying the
stability gap", ICLR 2023 (arXiv 2205.13452). Reference code: Mattdl/ContinualEvaluation,
``src/eval/continual_eval_metrics.py`` (``TaskTrackingMINAccuracyPluginMetric``,
``WCACCPluginMetric``, ``WindowedForgettingPluginMetric``, ``WindowedPlasticityPluginMetric``).

Input (one curve of evaluations made during training):

- ``steps`` (S,): global training iteration after which each evaluation was made, increasing.
- ``acc`` (S, T): accuracy in [0, 1] on experience ``j``'s test set at that evaluation; NaN where
  ``j`` was not evaluated (not seen yet).
- ``boundaries`` (T,): ``boundaries[k]`` = global iteration at which training on experience ``k``
  ended; experience ``k`` is trained during iterations ``(boundaries[k-1], boundaries[k]]``
  (``boundaries[-1]`` := 0).

Below ``A(j, n)`` is ``acc`` of experience ``j`` at the evaluation made after iteration ``n``,
and ``c`` is the current experience (0-based; default the last one), ``c + 1`` experiences seen.

- min-ACC (paper, average minimum accuracy), for the current experience ``c``::

      min-ACC_c = 1/c * sum_{k<c} min { A(k, n) : boundaries[k] < n <= boundaries[c] }

  i.e. per previous experience the worst accuracy observed at any evaluation strictly after its
  own training ended, up to and including the end of training on ``c``. Undefined for ``c = 0``
  (no previous experience): returns NaN. A previous experience with no evaluation in its range
  gets NaN and is left out of the average (the reference code likewise averages only the minima
  it has).

- WC-ACC (paper, worst-case accuracy)::

      WC-ACC_c = 1/(c+1) * A(c, boundaries[c]) + (1 - 1/(c+1)) * min-ACC_c

  ``A(c, boundaries[c])`` is the accuracy on the current experience at the end of its training
  (the last evaluation of ``c`` made at or before ``boundaries[c]`` and after ``boundaries[c-1]``
  if the evaluation period does not hit the boundary exactly). For ``c = 0`` this is just that
  accuracy (the min-ACC term has weight 0).

- WF^w / WP^w (paper, windowed forgetting / windowed plasticity). A window of ``w`` consecutive
  training iterations ending at ``t`` is ``[t - w + 1, t]``. Per experience ``j``::

      D-(t, j) = max_{m < n; m, n in [t-w+1, t]} A(j, m) - A(j, n)     (largest decrease)
      D+(t, j) = max_{m < n; m, n in [t-w+1, t]} A(j, n) - A(j, m)     (largest increase)
      WF^w = 1/N * sum_j max_t D-(t, j)      WP^w = 1/N * sum_j max_t D+(t, j)

  where ``m, n`` range over iterations at which ``j`` was evaluated, so a pair of evaluations
  shares a window iff ``steps[n] - steps[m] <= w - 1``. Each experience's windows cover *all* its
  evaluations (from the start of its own training to the end of the curve), for both WF and WP,
  as in the paper and the reference code (both metrics are tracked for every evaluated task,
  the one being learned included; they are not split into "old experiences" for WF and "the
  experience being learned" for WP). ``N`` is the number of experiences with at least one
  evaluation. An experience with no pair of evaluations inside one window scores 0, and scores
  are >= 0 (the reference code starts each task's running maximum at 0).

- curve average accuracy (not a metric of the paper, which reports the final ACC; our
  definition): mean over evaluations of the mean accuracy over the experiences evaluated there
  (seen experiences), evaluations where nothing was evaluated skipped. With evenly spaced
  evaluations this equals the iteration-weighted "average anytime accuracy" (AAA) of a later
  Avalanche port of the reference plugins (``AAAPluginMetric``).

Differences from the reference code (the paper is followed here):

- Windows are in training iterations, as in the paper. The code keeps a deque of the last ``w``
  *evaluations*, so with an evaluation every ``k > 1`` iterations its window spans ``w * k``
  iterations; here a window of ``w`` iterations holds about ``w / k`` evaluations (no pair at all
  when ``k >= w``, giving 0). ``w`` need not be a multiple of the evaluation period. With an
  evaluation every iteration (the paper's setting for these metrics) both agree.
- The code keeps one running minimum per task over the whole stream and reports WC-ACC with the
  current task's accuracy at the current iteration; ``min_acc`` / ``wc_acc`` here evaluate the
  paper's formulas at the end of training on the chosen experience ``c``.
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np


def _curve(steps, acc, boundaries=None):
    steps = np.asarray(steps)
    acc = np.asarray(acc, dtype=float)
    if steps.ndim != 1:
        raise ValueError(f"steps must be 1-D, got shape {steps.shape}")
    if not np.issubdtype(steps.dtype, np.integer):
        if steps.size and not np.all(np.equal(np.mod(steps, 1), 0)):
            raise ValueError("steps must be integer training iterations")
        steps = steps.astype(np.int64)
    if acc.ndim != 2 or acc.shape[0] != steps.shape[0]:
        raise ValueError(f"acc must have shape (len(steps), T) = ({len(steps)}, T), got {acc.shape}")
    if steps.size > 1 and np.any(np.diff(steps) <= 0):
        raise ValueError("steps must be strictly increasing")
    seen = acc[~np.isnan(acc)]
    if seen.size and (np.any(seen < 0.0) or np.any(seen > 1.0)):
        raise ValueError("accuracies must lie in [0, 1] (NaN for experiences not evaluated)")
    if boundaries is None:
        return steps, acc, None
    b = np.asarray(boundaries)
    if b.ndim != 1 or b.shape[0] != acc.shape[1]:
        raise ValueError(f"boundaries must have one entry per experience ({acc.shape[1]}), got shape {b.shape}")
    if b.size and (b[0] <= 0 or np.any(np.diff(b) <= 0)):
        raise ValueError("boundaries must be positive and strictly increasing")
    return steps, acc, b.astype(np.int64)


def _current(current, T: int) -> int:
    if T == 0:
        raise ValueError("the curve has no experience")
    c = T - 1 if current is None else int(current)
    if c < 0:
        c += T
    if not 0 <= c < T:
        raise ValueError(f"current must index one of the {T} experiences, got {current}")
    return c


def min_acc_per_experience(steps, acc, boundaries, current=None) -> list[float]:
    """Per previous experience ``k < current``: min of ``acc[:, k]`` over evaluations with
    ``boundaries[k] < step <= boundaries[current]`` (NaN if there is none). Empty for current 0."""
    steps, acc, b = _curve(steps, acc, boundaries)
    c = _current(current, acc.shape[1])
    out = []
    for k in range(c):
        rows = (steps > b[k]) & (steps <= b[c])
        vals = acc[rows, k]
        vals = vals[~np.isnan(vals)]
        out.append(float(vals.min()) if vals.size else math.nan)
    return out


def min_acc(steps, acc, boundaries, current=None) -> float:
    """Average minimum accuracy over the experiences before ``current`` (NaN when there is none)."""
    per = [v for v in min_acc_per_experience(steps, acc, boundaries, current) if not math.isnan(v)]
    return float(np.mean(per)) if per else math.nan


def _final_accuracy(steps, acc, b, c: int) -> float:
    start = b[c - 1] if c > 0 else -np.inf
    rows = np.flatnonzero((steps > start) & (steps <= b[c]) & ~np.isnan(acc[:, c]))
    return float(acc[rows[-1], c]) if rows.size else math.nan


def wc_acc(steps, acc, boundaries, current=None) -> float:
    """Worst-case accuracy: ``1/(c+1) * A(c at end of its training) + (1 - 1/(c+1)) * min-ACC_c``."""
    steps, acc, b = _curve(steps, acc, boundaries)
    c = _current(current, acc.shape[1])
    a = _final_accuracy(steps, acc, b, c)
    if c == 0:
        return a
    n = c + 1
    return float(a / n + (1.0 - 1.0 / n) * min_acc(steps, acc, b, c))


def _max_windowed_delta(s: np.ndarray, a: np.ndarray, window: int, increase: bool) -> float:
    """max over pairs m < n with s[n] - s[m] <= window - 1 of a[m] - a[n] (or a[n] - a[m]); >= 0."""
    best = 0.0
    q: deque[int] = deque()  # indices of earlier evaluations in the window, monotone in a
    for n in range(len(s)):
        while q and s[n] - s[q[0]] > window - 1:
            q.popleft()
        if q:
            d = (a[n] - a[q[0]]) if increase else (a[q[0]] - a[n])
            best = max(best, float(d))
        # keep the window's max (forgetting) or min (plasticity) at the front
        while q and ((a[q[-1]] >= a[n]) if increase else (a[q[-1]] <= a[n])):
            q.pop()
        q.append(n)
    return best


def _windowed_per_experience(steps, acc, boundaries, window, increase: bool) -> list[float]:
    steps, acc, _ = _curve(steps, acc, boundaries)
    if isinstance(window, bool) or int(window) != window or window < 1:
        raise ValueError(f"window must be a positive integer number of iterations, got {window!r}")
    out = []
    for j in range(acc.shape[1]):
        ok = ~np.isnan(acc[:, j])
        if not ok.any():
            out.append(math.nan)  # never evaluated: not part of the average
            continue
        out.append(_max_windowed_delta(steps[ok], acc[ok, j], int(window), increase))
    return out


def windowed_forgetting_per_experience(steps, acc, boundaries, window) -> list[float]:
    """Per experience: largest accuracy decrease inside any window of ``window`` iterations."""
    return _windowed_per_experience(steps, acc, boundaries, window, increase=False)


def windowed_plasticity_per_experience(steps, acc, boundaries, window) -> list[float]:
    """Per experience: largest accuracy increase inside any window of ``window`` iterations."""
    return _windowed_per_experience(steps, acc, boundaries, window, increase=True)


def _mean_defined(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def windowed_forgetting(steps, acc, boundaries, window) -> float:
    """WF^w: mean over evaluated experiences of their maximal decrease within ``window`` iterations."""
    return _mean_defined(windowed_forgetting_per_experience(steps, acc, boundaries, window))


def windowed_plasticity(steps, acc, boundaries, window) -> float:
    """WP^w: mean over evaluated experiences of their maximal increase within ``window`` iterations."""
    return _mean_defined(windowed_plasticity_per_experience(steps, acc, boundaries, window))


def curve_average_accuracy(steps, acc) -> float:
    """Mean over evaluations of the mean accuracy over the experiences evaluated there."""
    _, acc, _ = _curve(steps, acc)
    ok = ~np.isnan(acc)
    rows = ok.any(axis=1)
    if not rows.any():
        return math.nan
    per_eval = np.where(ok, acc, 0.0)[rows].sum(axis=1) / ok[rows].sum(axis=1)
    return float(per_eval.mean())


def summary(steps, acc, boundaries, windows=(10, 100)) -> dict:
    out: dict = {
        "min_acc": min_acc(steps, acc, boundaries),
        "wc_acc": wc_acc(steps, acc, boundaries),
    }
    for w in windows:
        out[f"wf_{w}"] = windowed_forgetting(steps, acc, boundaries, w)
        out[f"wp_{w}"] = windowed_plasticity(steps, acc, boundaries, w)
    out["curve_average_accuracy"] = curve_average_accuracy(steps, acc)
    out["min_acc_per_experience"] = min_acc_per_experience(steps, acc, boundaries)
    return out
