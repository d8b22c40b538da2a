"""Honest hyper-parameter tuning: ``lifelong tune``.

| module | job |
|---|---|
| ``spec.py`` | the tune spec (YAML): base config, protocol, study, budget, space |
| ``space.py`` | search spaces: ranges, log scale, choices, conditionals per strategy |
| ``protocols.py`` | reality-check, current-task validation, tune-on-test: what a study selects on |
| ``trial.py`` | one trial anywhere (a picklable entry): run, report, prune |
| ``sampling.py`` | Optuna samplers seeded per trial: a resumed tune suggests what an uninterrupted one would |
| ``driver.py`` | studies in Optuna storage, ask-and-tell in batches through an executor, phase 2 |

See docs/tuning.md.
"""
from .driver import TUNE_FILE, tune
from .space import Param, SearchSpace
from .spec import TuneSpec, parse_spec

__all__ = ["TUNE_FILE", "Param", "SearchSpace", "TuneSpec", "parse_spec", "tune"]
