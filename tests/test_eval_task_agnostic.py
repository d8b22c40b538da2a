"""``eval.task_agnostic``: task-IL runs may skip the task-agnostic matrix, and nothing else changes."""
import pytest

from lifelong.config import check_runnable, parse_config
from lifelong.errors import ConfigError
from lifelong.evaluation import evaluate
from lifelong.runner import run
from lifelong.strategies.clr import CLR


def _cfg(strategy="finetune", scenario="task", **eval_keys):
    return {"benchmark": {"name": "split-digits", "scenario": scenario},
            "model": {"name": "mlp", "hidden": [16]}, "strategy": {"name": strategy},
            "train": {"iterations": 8, "batch_size": 16}, "eval": {"every": None, **eval_keys}, "seed": 3}


@pytest.mark.parametrize("strategy", ["finetune", "packnet"])
def test_task_il_without_the_agnostic_matrix_keeps_every_other_number(strategy):
    full, lean = run(_cfg(strategy)), run(_cfg(strategy, task_agnostic=False))
    assert lean["task_agnostic_accuracy_matrix"] is None
    assert len(full["task_agnostic_accuracy_matrix"]) == 5
    for k in ("accuracy_matrix", "task_aware_accuracy_matrix", "initial_accuracy", "average_accuracy", "bwt",
              "train_loss"):
        assert lean[k] == full[k], k


def test_the_agnostic_prediction_is_not_made(monkeypatch):
    calls = []
    real = CLR.predict

    def spy(self, x, task=None):
        calls.append(task is None)
        return real(self, x, task)

    monkeypatch.setattr(CLR, "predict", spy)
    cfg = _cfg("clr")
    cfg["model"] = {"name": "cnn", "channels": [4, 8], "hidden": [16]}
    run(cfg)
    assert any(calls) and not all(calls)  # by default both predictions are made
    calls.clear()
    run({**cfg, "eval": {"every": None, "task_agnostic": False}})
    assert calls and not any(calls)  # only the task-aware one


@pytest.mark.parametrize("scenario", ["class", "domain"])
def test_refused_outside_task_il_before_any_data_loads(scenario):
    cfg = parse_config(_cfg(scenario=scenario, task_agnostic=False))
    with pytest.raises(ConfigError, match="eval.task_agnostic: false applies to task-IL only") as e:
        check_runnable(cfg)
    assert f"'{scenario}' scenario" in str(e.value)
    with pytest.raises(ConfigError, match="eval.task_agnostic"):  # the Python API refuses it too
        run(cfg)


def test_a_bad_value_is_refused_by_name():
    with pytest.raises(ConfigError, match="eval.task_agnostic"):
        parse_config(_cfg(task_agnostic="sometimes"))


def test_evaluate_needs_task_aware_prediction_to_skip_the_agnostic_one():
    with pytest.raises(ValueError, match="needs task_aware_predict"):
        evaluate(None, [], agnostic=False)
