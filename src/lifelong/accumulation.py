"""Knowledge accumulation: accuracy on ALL classes over a stream, from a run's accuracy matrix.

SCoLe (Lesort et al., 2023; :func:`lifelong.streams.revisits.scole_stream`) plots, after each
experience, the accuracy on the test set of every class of the stream. A run already evaluates
every experience's test set after every experience (the accuracy matrix ``R``); when an
experience's test set is the union of its classes' fixed test sets (as in SCoLe streams),

    R[i][j] = sum_{c in C_j} n_c a_ic / N_j,        N_j = sum_{c in C_j} n_c,

with ``a_ic`` the accuracy on class c after experience i and ``n_c`` its test count. The
accuracy on all classes, ``sum_c n_c a_ic / sum_c n_c``, is then a fixed linear combination of
the row ``R[i]`` whenever the weights ``n_c / n`` lie in the span of the rows of ``A[j][c] =
n_c / N_j`` (true as soon as the experiences' class sets identify every class; for instance
once each class appeared alone or the sets overlap enough): :func:`accuracy_on_all_classes`
finds that combination by least squares and refuses, naming the reason, when it does not exist.
It is exact (no retraining, no extra evaluation). ``n_c`` default: recovered from the
experiences' test sizes by the same argument (``N = A0 n``).
"""
from __future__ import annotations

import numpy as np


def _solve_exact(M: np.ndarray, b: np.ndarray, what: str) -> np.ndarray:
    sol, *_ = np.linalg.lstsq(M, b, rcond=None)
    if not np.allclose(M @ sol, b, atol=1e-8 * max(1.0, float(np.abs(b).max()))):
        raise ValueError(f"{what} is not determined by the experiences' class sets (the classes cannot be told "
                         "apart from the experiences' test sets); give experiences that identify every class")
    return sol


def accuracy_on_all_classes(R, classes: list[list[int]], n_test: list[int] | None = None,
                            class_test_counts: dict[int, int] | list[int] | None = None) -> list[float]:
    """Accuracy on the union of all classes' test sets after each experience (row of ``R``).

    ``classes[j]``: experience j's classes; ``n_test[j]``: its test size (needed unless
    ``class_test_counts`` is given: class -> its test count).
    """
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[1] != len(classes):
        raise ValueError(f"accuracy matrix has {R.shape[-1] if R.ndim == 2 else '?'} columns, "
                         f"but {len(classes)} experiences' classes were given")
    labels = sorted({c for cs in classes for c in cs})
    col = {c: k for k, c in enumerate(labels)}
    A0 = np.zeros((len(classes), len(labels)))
    for j, cs in enumerate(classes):
        for c in cs:
            A0[j, col[c]] = 1.0
    if class_test_counts is not None:
        get = class_test_counts.get if isinstance(class_test_counts, dict) else class_test_counts.__getitem__
        n = np.array([float(get(c)) for c in labels])
    elif n_test is not None:
        if np.linalg.matrix_rank(A0) < len(labels):
            raise ValueError("each class's test count is not determined by the experiences' test sizes (some "
                             "classes never appear apart); give class_test_counts")
        n = _solve_exact(A0, np.asarray(n_test, dtype=float), "each class's test count")
    else:
        raise ValueError("give n_test (each experience's test size) or class_test_counts")
    A = A0 * n[None, :] / (A0 @ n)[:, None]
    lam = _solve_exact(A.T, n / n.sum(), "the accuracy on all classes")
    return [float(v) for v in R @ lam]


def knowledge_accumulation(results: dict) -> list[float]:
    """:func:`accuracy_on_all_classes` of a run's results dict (``lifelong.runner.run``, results.json)."""
    exps = results["experiences"]
    return accuracy_on_all_classes(results["accuracy_matrix"], [e["classes"] for e in exps],
                                   [e["n_test"] for e in exps])
