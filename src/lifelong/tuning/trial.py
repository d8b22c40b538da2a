"""One trial, wherever it runs (this process, a pool worker, a Ray task): train the trial's
config into its run folder, report the objective's progress at every experience end so that
the study's pruner can stop a poor trial early, and return the objective.

The entry :func:`run_trial` is a picklable top-level function taking and returning plain
values; it reopens the study from its storage URL, so it works on any machine that reaches the
storage (a shared SQLite file, a PostgreSQL server).
"""
from __future__ import annotations

import math
import shutil
import traceback
from pathlib import Path


def make_pruner(spec: dict | None):
    """The Optuna pruner of ``{name, n_startup_trials, prune_after}``: median, asha (successive
    halving), hyperband, or none. Steps are experience ends (1, 2, ...); none is pruned at a step
    up to ``prune_after``."""
    import optuna

    name = (spec or {}).get("name", "none")
    startup = (spec or {}).get("n_startup_trials", 5)
    after = (spec or {}).get("prune_after", 2)  # experiences before any pruning
    if name == "median":  # steps 1..after are warm-up
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=after + 1)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=after + 1, reduction_factor=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=after + 1, reduction_factor=2)
    return optuna.pruners.NopPruner()


class PruningMonitor:
    """A training monitor reporting, after experience k of T, the accuracies on the k experiences
    seen so far summed and divided by T (the final average accuracy with the unseen experiences
    counted as 0; at the last experience, the objective itself), on the split the run evaluates
    (validation in model selection), and stopping the run (``optuna.TrialPruned``) when the
    pruner says so. Unlike the plain mean over the seen experiences, which falls as experiences
    arrive even for a method that forgets nothing, this value rises with what a method keeps,
    which is what Optuna's pruners assume of a learning curve (they compare a trial's best value
    so far)."""

    def __init__(self, trial):
        self.trial = trial
        self.last = None

    def start(self, exp, n_iters):
        pass

    def step(self, it, loss, continual_acc=None):
        pass

    def end(self, exp, result):
        import optuna

        row = result.accuracy_matrix[-1]
        value = sum(row[: exp.index + 1]) / len(row)  # only the seen experiences' accuracies are read
        self.last = (exp.index + 1, value)
        self.trial.report(value, exp.index + 1)
        last = exp.index + 1 == len(result.accuracy_matrix[-1])  # a finished run is kept, whatever it scored
        if not last and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after experience {exp.index + 1} (seen-accuracy {value:.4f})")


def objective_value(results: dict, key: str) -> float:
    """The objective from a run's results: a finite number, else a clear error."""
    from ..errors import ConfigError

    if key not in results:
        numbers = sorted(k for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        raise ConfigError(f"study.objective '{key}' is not in the run's results; numbers there: {', '.join(numbers)}")
    value = results[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"study.objective '{key}' is {value!r} for this trial, not a finite number")
    return float(value)


SUMMARY_KEYS = ("average_accuracy", "average_incremental_accuracy", "forgetting", "bwt", "wall_time_s")


def run_trial(item: dict) -> dict:
    """``item``: config, folder, objective, and (for pruning) storage, study, trial_id, pruner.
    Returns ``{"value", "summary"}``, ``{"pruned": step, "value": last reported}`` or
    ``{"error", "details"}``; never raises for a failing trial."""
    import optuna

    from ..errors import LifelongError
    from ..runner import run_to_folder

    monitor = None
    folder = Path(item["folder"])
    try:
        if item.get("pruner") and item["pruner"].get("name", "none") != "none":
            from ..studystore import open_storage

            storage = open_storage(item["storage"], folder.parent)
            study = optuna.load_study(study_name=item["study"], storage=storage, pruner=make_pruner(item["pruner"]))
            monitor = PruningMonitor(optuna.trial.Trial(study, item["trial_id"]))
        results = run_to_folder(item["config"], folder, monitor)
        value = objective_value(results, item["objective"])
        summary = {k: results.get(k) for k in SUMMARY_KEYS}
        summary["evaluated_on"] = results.get("evaluated_on", "test")
        return {"value": value, "summary": summary}
    except optuna.TrialPruned:
        shutil.rmtree(folder, ignore_errors=True)  # its partial run will never be continued
        step, value = monitor.last if monitor and monitor.last else (None, None)
        return {"pruned": step, "value": value}
    except LifelongError as exc:
        return {"error": str(exc), "details": ""}
    except Exception as exc:  # one trial's bug or resource problem must not stop the study
        return {"error": f"{type(exc).__name__}: {exc}", "details": traceback.format_exc()}
