"""Runs from configs: determinism, the run folder, clear errors, executors."""
import json

import pytest
import torch

from lifelong.config import parse_config
from lifelong.errors import ConfigError
from lifelong.executor import ProcessExecutor, SequentialExecutor
from lifelong.runner import run, run_config_dict, run_to_folder

SMALL = {"benchmark": {"name": "split-digits"}, "train": {"iterations": 20, "batch_size": 32},
         "model": {"hidden": [32]}, "seed": 3}


def test_same_config_and_seed_give_identical_numbers():
    a, b = run(SMALL), run(SMALL)
    assert a["accuracy_matrix"] == b["accuracy_matrix"]
    assert a["train_loss"] == b["train_loss"]
    for k, v in a["_state"]["model"].items():
        assert torch.equal(v, b["_state"]["model"][k])


def test_different_seed_gives_different_numbers():
    a = run(SMALL)
    b = run({**SMALL, "seed": 4})
    assert a["train_loss"] != b["train_loss"]


def test_results_json_has_required_fields(tmp_path):
    out = tmp_path / "run"
    run_to_folder(SMALL, out)
    res = json.loads((out / "results.json").read_text())
    for k in ("config", "seed", "accuracy_matrix", "average_accuracy", "forgetting", "bwt", "wall_time_s", "versions"):
        assert k in res
    assert res["versions"]["torch"] == torch.__version__
    assert res["config"] == parse_config(SMALL).to_dict()
    assert len(res["accuracy_matrix"]) == 5 and all(len(r) == 5 for r in res["accuracy_matrix"])
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert "model" in state


def test_existing_run_folder_is_never_overwritten(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="already exists"):
        run_to_folder(SMALL, out)
    assert (out / "mine.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("patch, match", [
    ({"train": {"lrr": 1}}, "unknown config key 'train.lrr'.*allowed keys here: .*lr"),
    ({"train": {"optimizer": "rmsprop"}}, "train.optimizer.*'sgd', 'adam' or 'adamw'"),
    ({"strategy": {"name": "nope"}}, "unknown strategy 'nope'; allowed: .*finetune"),
    ({"strategy": {"name": "finetune", "ewc_lambda": 1}}, "unknown parameter 'strategy.ewc_lambda'"),
    ({"benchmark": {"name": "split-nothing"}}, "unknown benchmark 'split-nothing'; allowed: .*split-mnist"),
    ({"benchmark": {"name": "split-digits", "angles": [1.0]}}, "benchmark.angles' does not apply"),
    ({"benchmark": {"name": "split-digits", "n_experiences": 3}}, "cannot split 10 classes evenly"),
    ({"seed": "abc"}, "config key 'seed'"),
])
def test_bad_config_gets_one_clear_message(patch, match):
    cfg = {**SMALL, **patch}
    with pytest.raises(ConfigError, match=match):
        run(cfg)


def test_executors_agree():
    cfgs = [{**SMALL, "seed": s} for s in (0, 1)]
    seq = list(SequentialExecutor().map(run_config_dict, cfgs))
    par = list(ProcessExecutor(2).map(run_config_dict, cfgs))
    assert [r["accuracy_matrix"] for r in seq] == [r["accuracy_matrix"] for r in par]


def test_tracking_from_config_writes_into_the_run_folder(tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    cfg = {**SMALL, "tracking": {"tensorboard": True, "mlflow": True, "mlflow_uri": str(tmp_path / "mlruns")}}
    run_to_folder(cfg, tmp_path / "run")
    assert any((tmp_path / "run" / "tensorboard").iterdir())
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    exp = client.get_experiment_by_name("lifelong")
    (r,) = client.search_runs([exp.experiment_id])
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert r.data.metrics["final/average_accuracy"] == pytest.approx(res["average_accuracy"])
    assert not list(tmp_path.glob("run.tmp-*"))
