"""Samplers whose suggestions are a function of the study's seed and history only, so that a tune
resumed after an interruption suggests exactly what an uninterrupted one would have.

Optuna's samplers keep one random state for their lifetime: a rerun of ``lifelong tune`` builds
a new sampler whose state starts afresh (a random sampler's first suggestion then repeats the
study's first trial), and the remaining suggestions differ from an uninterrupted tune's. Here each trial draws from a
random state seeded with ``(study.seed, i)``, where ``i`` is the trial's place among the study's
trials that drew from the sampler (a retry of a dead driver's trial reuses that trial's
parameters and does not count). What a trial sees of the study (TPE models the finished trials)
is read from the storage, as before; so trial ``i``'s parameters depend on the seed, ``i`` and
the trials finished when it was asked, and on nothing of the process that asks. Two processes
working on one study never draw with the same ``i``: trial numbers are unique in the storage.
The grid sampler gives the ``i``-th trial the ``i``-th point of the grid (:class:`SeededGrid`).
"""
from __future__ import annotations

from typing import Any, Callable

import optuna
from optuna.samplers import BaseSampler, GridSampler


def trial_seed(seed: int, index: int) -> int:
    """The random seed of the ``index``-th suggested trial of a study seeded with ``seed``
    (numpy's SeedSequence: well mixed, the same on every platform)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def is_retry(trial) -> bool:
    """A trial enqueued with the parameters of a trial whose driver died (driver.recover_stale)."""
    return trial.user_attrs.get("resume_folder") is not None


def suggestion_index(study, trial) -> int:
    """How many of the study's trials numbered below ``trial`` drew from the sampler. Read from the
    storage: a pruner's filtered view of the study (Hyperband's brackets) must not change it."""
    trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
    return sum(t.number < trial.number and not is_retry(t) for t in trials)


class SeededPerTrial(BaseSampler):
    """Delegates each trial to a fresh sampler ``make(trial_seed(seed, i))`` (i: the trial's
    :func:`suggestion_index`). ``make`` builds a stateless-but-for-its-random-state sampler
    (TPE, random): everything else it needs it reads from the study."""

    def __init__(self, make: Callable[[int], BaseSampler], seed: int):
        self._make, self._seed = make, seed
        self._per_trial: dict[int, BaseSampler] = {}  # trial id -> its sampler, until told

    def _for(self, study, trial) -> BaseSampler:
        s = self._per_trial.get(trial._trial_id)
        if s is None:
            s = self._per_trial[trial._trial_id] = self._make(trial_seed(self._seed, suggestion_index(study, trial)))
        return s

    def before_trial(self, study, trial) -> None:
        self._for(study, trial).before_trial(study, trial)

    def infer_relative_search_space(self, study, trial) -> dict[str, Any]:
        return self._for(study, trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return self._for(study, trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        return self._for(study, trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        s = self._per_trial.pop(trial._trial_id, None) or self._make(self._seed)
        s.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Nothing to reseed: every trial's random state is derived from the seed."""


class SeededGrid(GridSampler):
    """Optuna's grid sampler (its points shuffled once by the study seed), with the ``i``-th
    suggested trial taking the ``i``-th point rather than the one of its trial number (which a
    retried trial shifts), and the choice among the points left, once ``i`` is past the grid or its
    point was taken, drawn with :func:`trial_seed`. It never stops the study itself: the driver's
    budget does (Optuna's ``study.stop()`` works only inside ``optimize`` and raised here on the
    last point)."""

    def __init__(self, search_space, seed: int):
        super().__init__(search_space, seed=seed)
        self._seed = seed

    def before_trial(self, study, trial) -> None:
        if "grid_id" in trial.system_attrs or "fixed_params" in trial.system_attrs:
            return  # a retry, or a trial that has its point already
        i = suggestion_index(study, trial)
        left = sorted(self._get_unvisited_grid_ids(study))
        if i in left:
            grid_id = i
        else:
            import numpy as np

            pool = left or list(range(len(self._all_grids)))  # exhausted: Optuna re-evaluates a point too
            grid_id = int(np.random.RandomState(trial_seed(self._seed, i)).choice(pool))
        study._storage.set_trial_system_attr(trial._trial_id, "search_space", self._search_space)
        study._storage.set_trial_system_attr(trial._trial_id, "grid_id", grid_id)

    def after_trial(self, study, trial, state, values) -> None:
        pass

    def reseed_rng(self) -> None:
        pass


def make_sampler(name: str, seed: int, *, n_startup_trials: int = 10, grid: dict | None = None) -> BaseSampler:
    """The study's sampler: ``tpe``, ``random`` or ``grid`` (``grid``: the search space as lists)."""
    if name == "tpe":
        return SeededPerTrial(lambda s: optuna.samplers.TPESampler(seed=s, n_startup_trials=n_startup_trials), seed)
    if name == "random":
        return SeededPerTrial(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    if name == "grid":
        return SeededGrid(grid or {}, seed)
    raise ValueError(f"unknown sampler {name!r}")
