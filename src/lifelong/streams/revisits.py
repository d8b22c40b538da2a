"""Long streams with revisits: SCoLe and power-law task environments.

SCoLe (Lesort, Ostapenko, Rodriguez, Misra, Arefin, Charlin & Rish, "Challenging Common
Assumptions about Catastrophic Forgetting and Knowledge Accumulation", CoLLAs 2023): a long
sequence of short experiences, each made of ``classes_per_experience`` classes drawn at random
(the paper: 2 classes per task, hundreds of tasks, classes drawn uniformly or with an
unbalanced distribution), so that every class recurs many times. The paper's finding: plain
SGD fine-tuning *accumulates* knowledge over such a stream (the accuracy on all classes grows
over the stream) although it forgets within each short experience. Here
(:func:`scole_stream`): the classes of an experience are drawn without replacement with
probabilities ``class_probs`` (default uniform; for ``classes_per_experience = 1`` each class's
frequency is exactly its probability; for more, successive draws without replacement); each
experience draws its *own* ``train_per_class`` training samples of each of its classes (a new
random subset at every visit; None: all of the class's samples); its test set is the test set
of its classes (``test_per_class``: one fixed subset per class, the same at every visit, so
the accuracy matrix can be turned into accuracy on all classes,
:func:`lifelong.accumulation.accuracy_on_all_classes`). Class-incremental labels.

Power-law environments (Gandhi, Shah, Marupudi & Varma, "Catastrophic Interference is
Mitigated in Naturalistic Power-Law Learning Environments", 2024): tasks (Permuted MNIST
permutations) are revisited with a probability that decays as a power of the time since they
were last seen (Anderson & Schooler's environment statistics). :func:`power_law_schedule`
builds the schedule of task visits; :func:`power_law_stream` the stream. ``n_tasks`` tasks
are introduced at evenly spaced slots of the ``n_experiences`` slots (task k at slot
``k * n_experiences // n_tasks``); every other slot is a revisit of an already introduced
task chosen by ``mode``:

- ``"power_law"``: task k with probability proportional to ``(t - last_seen[k]) ** -alpha``
  (t the slot, ``last_seen[k]`` the last slot that trained k, so the gap is >= 1);
- ``"uniform"``: every introduced task with equal probability;
- ``"none"``: no revisits; the slot continues the newest task (the same amount of training,
  spent without going back: the sequential baseline at equal compute).

Every visit draws ``train_per_experience`` new training samples (the task's permutation
applied); the test set of a task (``test_per_task`` fixed samples) is the same tensor at each
of its visits. Visits of one task share its task id (domain-IL over permutations: one shared
10-way output, or task-IL heads). Our difference to the paper: there the schedule's exact
construction (which time steps introduce new tasks) differs; the alpha and the three modes
are those it compares. Both streams are deterministic under ``seed``.
"""
from __future__ import annotations

import math

import torch

from ..data.base import DatasetSplits
from ..errors import ConfigError
from .base import Experience, Split, Stream, carve_validation

REVISIT_MODES = ("power_law", "uniform", "none")


def _per_class_index(y: torch.Tensor, n_classes: int, g: torch.Generator) -> list[torch.Tensor]:
    return [torch.nonzero(y == c).flatten()[torch.randperm(int((y == c).sum()), generator=g)]
            for c in range(n_classes)]


def scole_stream(data: DatasetSplits, n_experiences: int = 100, classes_per_experience: int = 2,
                 class_probs: list[float] | None = None, train_per_class: int | None = None,
                 test_per_class: int | None = None, val_fraction: float = 0.0, seed: int = 0,
                 name: str | None = None) -> Stream:
    """SCoLe: ``n_experiences`` experiences of ``classes_per_experience`` random classes (see the module doc)."""
    C = data.n_classes
    if n_experiences < 1:
        raise ConfigError(f"n_experiences must be >= 1, got {n_experiences}")
    if not 1 <= classes_per_experience <= C:
        raise ConfigError(f"classes_per_experience must be in 1..{C}, got {classes_per_experience}")
    for key, v in (("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        if v is not None and v < 1:
            raise ConfigError(f"{key} must be >= 1, got {v}")
    if class_probs is None:
        probs = torch.full((C,), 1.0 / C, dtype=torch.float64)
    else:
        probs = torch.tensor([float(p) for p in class_probs], dtype=torch.float64)
        if len(probs) != C or not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()):
            raise ConfigError(f"class_probs must be {C} finite non-negative weights (one per class), "
                              f"got {list(class_probs)}")
        if int((probs > 0).sum()) < classes_per_experience:
            raise ConfigError(f"class_probs gives {int((probs > 0).sum())} classes a positive weight, fewer than "
                              f"classes_per_experience={classes_per_experience}")
        probs = probs / probs.sum()
    g = torch.Generator().manual_seed(seed)
    xtr, xte = data.train.to_float(), data.test.to_float()
    ytr, yte = data.train.y, data.test.y
    tr_idx = _per_class_index(ytr, C, g)
    te_idx = [i[:test_per_class].sort().values for i in _per_class_index(yte, C, g)]
    test = {c: Split(xte[te_idx[c]], yte[te_idx[c]]) for c in range(C)}
    exps, groups = [], []
    for i in range(n_experiences):
        classes = sorted(torch.multinomial(probs, classes_per_experience, replacement=False, generator=g).tolist())
        parts = []
        for c in classes:
            pool = tr_idx[c]
            k = len(pool) if train_per_class is None else min(train_per_class, len(pool))
            parts.append(pool[torch.randperm(len(pool), generator=g)[:k]])
        a = torch.cat(parts).sort().values
        tr, va = carve_validation(Split(xtr[a], ytr[a]), val_fraction, g)
        te = Split.cat([test[c] for c in classes])
        groups.append(classes)
        exps.append(Experience(i, i, classes, tr, va, te, name=f"visit {i}: classes {classes}"))
    counts = [sum(c in grp for grp in groups) for c in range(C)]
    return Stream(name or f"scole-{data.name}", "class", exps, C, tuple(data.train.input_shape),
                  info={"class_groups": groups, "class_counts": counts, "class_probs": probs.tolist(),
                        "class_test_counts": [len(te_idx[c]) for c in range(C)]})


def _check_schedule_args(n_tasks: int, n_experiences: int, mode: str, alpha: float) -> None:
    if mode not in REVISIT_MODES:
        raise ConfigError(f"revisit mode must be one of {', '.join(REVISIT_MODES)}, got {mode!r}")
    if n_tasks < 1:
        raise ConfigError(f"n_tasks must be >= 1, got {n_tasks}")
    if n_experiences < n_tasks:
        raise ConfigError(f"n_experiences ({n_experiences}) must be >= n_tasks ({n_tasks}): every task is "
                          "introduced once")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"revisit_alpha must be a finite number > 0, got {alpha}")


def power_law_schedule(n_tasks: int, n_experiences: int, mode: str = "power_law", alpha: float = 1.0,
                       seed: int = 0) -> list[int]:
    """The task id trained at each of ``n_experiences`` slots (see the module doc for the law)."""
    _check_schedule_args(n_tasks, n_experiences, mode, alpha)
    g = torch.Generator().manual_seed(seed + 104729)
    intro = {k * n_experiences // n_tasks: k for k in range(n_tasks)}
    last: list[int] = []  # last slot each introduced task was trained at
    out = []
    for t in range(n_experiences):
        if t in intro:
            k = intro[t]
            last.append(t)
        elif mode == "none":
            k = len(last) - 1
        else:
            if mode == "uniform":
                w = torch.ones(len(last), dtype=torch.float64)
            else:
                w = (t - torch.tensor(last, dtype=torch.float64)) ** (-alpha)
            k = int(torch.multinomial(w, 1, generator=g))
        last[k] = t
        out.append(k)
    return out


def power_law_stream(data: DatasetSplits, n_tasks: int = 10, n_experiences: int = 50, mode: str = "power_law",
                     alpha: float = 1.0, train_per_experience: int = 1000, test_per_task: int | None = 1000,
                     scenario: str = "domain", permute_first: bool = False, val_fraction: float = 0.0,
                     seed: int = 0, name: str | None = None) -> Stream:
    """Permuted-``data`` tasks visited by :func:`power_law_schedule` (see the module doc)."""
    if scenario not in ("domain", "task"):
        raise ConfigError(f"a power-law stream revisits tasks over one label space: scenario 'domain' or 'task', "
                          f"not '{scenario}'")
    _check_schedule_args(n_tasks, n_experiences, mode, alpha)
    if train_per_experience < 1:
        raise ConfigError(f"train_per_experience must be >= 1, got {train_per_experience}")
    if test_per_task is not None and test_per_task < 1:
        raise ConfigError(f"test_per_task must be >= 1, got {test_per_task}")
    schedule = power_law_schedule(n_tasks, n_experiences, mode, alpha, seed)
    g = torch.Generator().manual_seed(seed)
    D = math.prod(data.train.input_shape)
    perms = [None if (k == 0 and not permute_first) else torch.randperm(D, generator=g) for k in range(n_tasks)]

    def apply(x, p):
        return x if p is None else x.flatten(1)[:, p].reshape(x.shape)

    xtr, xte = data.train.to_float(), data.test.to_float()
    ytr, yte = data.train.y, data.test.y
    te_idx = torch.randperm(len(yte), generator=g)[:test_per_task].sort().values
    tests = [Split(apply(xte[te_idx], p), yte[te_idx]) for p in perms]
    exps = []
    for i, k in enumerate(schedule):
        a = torch.randperm(len(ytr), generator=g)[:train_per_experience].sort().values
        tr, va = carve_validation(Split(apply(xtr[a], perms[k]), ytr[a]), val_fraction, g)
        exps.append(Experience(i, k, list(range(data.n_classes)), tr, va, tests[k],
                               name=f"visit {i}: permutation {k}"))
    return Stream(name or f"powerlaw-permuted-{data.name}", scenario, exps, data.n_classes,
                  tuple(data.train.input_shape), info={"schedule": schedule, "mode": mode, "alpha": alpha})
