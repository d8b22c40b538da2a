"""TensorBoard and MLflow monitors: a real short training, read back from what was written."""
import json
import sys

import numpy as np
import pytest
import torch

from lifelong.config import RunConfig
from lifelong.continual_metrics import summary as continual_summary
from lifelong.data import digits
from lifelong.errors import LifelongError
from lifelong.models import build_model
from lifelong.strategies import Strategy
from lifelong.streams import split_stream
from lifelong.tracking import MLflowMonitor, MultiMonitor, TensorBoardMonitor, final_metrics, flatten_config
from lifelong.training import train

N_EXP, ITERS, EVAL_EVERY, LOG_EVERY = 5, 6, 2, 2


class _Recorder:
    """Records the losses and continual accuracies ``train`` hands to monitors."""

    def __init__(self):
        self.losses, self.cont, self.closed = [], [], None

    def start(self, exp, n_iters):
        pass

    def step(self, it, loss, continual_acc=None):
        self.losses.append(float(loss.detach()))
        self.cont.append(continual_acc)

    def end(self, exp, result):
        pass

    def close(self, results=None, results_path=None):
        self.closed = (results, results_path)


def _train(monitor):
    stream = split_stream(digits(), scenario="class", n_experiences=N_EXP, seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "class", hidden=[32])
    strategy = Strategy().setup(model, "cpu", 0)
    return train(stream, strategy, lambda p: torch.optim.SGD(p, lr=0.05), batch_size=16, iterations=ITERS, seed=0,
                 eval_every=EVAL_EVERY, eval_subsample=200, monitor=monitor)


def _results(res):
    steps, acc = res.curve
    cont = continual_summary(steps, acc, res.boundaries)
    cont["not_a_number"] = None
    return {"seed": 0, "scenario": "class", **res.metrics(), "accuracy_matrix": res.accuracy_matrix,
            "wall_time_s": 1.5, "continual": cont}


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory):
    pytest.importorskip("tensorboard")
    log_dir = tmp_path_factory.mktemp("tb") / "tensorboard"
    tb, rec = TensorBoardMonitor(log_dir, every=LOG_EVERY, config={"seed": 0}), _Recorder()
    assert not log_dir.exists()  # created at the first experience, not before
    monitor = MultiMonitor(rec, None, tb)
    res = _train(monitor)
    results = _results(res)
    monitor.close(results, results_path=None)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return res, results, rec, scalars, acc


def test_tensorboard_per_iteration_scalars(tensorboard_run):
    res, _, rec, sc, _ = tensorboard_run
    total = N_EXP * ITERS
    assert res.boundaries[-1] == total and len(rec.losses) == total
    steps = list(range(LOG_EVERY, total + 1, LOG_EVERY))
    assert [s for s, _ in sc["train/loss"]] == steps
    np.testing.assert_allclose([v for _, v in sc["train/loss"]], [rec.losses[s - 1] for s in steps], rtol=1e-6)
    # logging every == eval every: the points are exactly the continual evaluations
    curve_steps, curve_acc = res.curve
    assert [s for s, _ in sc["continual/mean_accuracy"]] == curve_steps.tolist() == steps
    np.testing.assert_allclose([v for _, v in sc["continual/mean_accuracy"]], np.nanmean(curve_acc, axis=1),
                               rtol=1e-6)


def test_tensorboard_experience_scalars(tensorboard_run):
    res, _, _, sc, _ = tensorboard_run
    R = res.accuracy_matrix
    avg = sc["eval/average_accuracy"]
    assert [s for s, _ in avg] == list(range(1, N_EXP + 1))
    np.testing.assert_allclose([v for _, v in avg], [np.mean(R[i][: i + 1]) for i in range(N_EXP)], rtol=1e-6)
    assert avg[-1][1] == pytest.approx(np.mean(R[-1]), rel=1e-6)
    for j in range(N_EXP):
        ex = sc[f"eval/accuracy_exp{j}"]
        assert [s for s, _ in ex] == list(range(j + 1, N_EXP + 1))  # only once seen
        np.testing.assert_allclose([v for _, v in ex], [R[i][j] for i in range(j, N_EXP)], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in sc["train/experience_loss"]], res.losses, rtol=1e-6)


def test_tensorboard_final_metrics_and_close(tensorboard_run):
    res, results, rec, sc, acc = tensorboard_run
    total = N_EXP * ITERS
    for k, v in res.metrics().items():
        if np.isfinite(v):
            assert sc[f"final/{k}"] == [(total, pytest.approx(v, rel=1e-6, abs=1e-7))]
    assert sc["final/wall_time_s"] == [(total, pytest.approx(1.5))]
    assert "final/seed" not in sc and "final/scenario" not in sc
    assert sc["continual/min_acc"] == [(total, pytest.approx(results["continual"]["min_acc"], rel=1e-6))]
    assert "continual/not_a_number" not in sc and "continual/min_acc_per_experience" not in sc
    assert "config/text_summary" in acc.Tags()["tensors"]  # add_text
    assert rec.closed == (results, None)  # MultiMonitor forwards close


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory):
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("ml")
    cfg = RunConfig().to_dict()
    mon = MLflowMonitor(root / "mlruns", experiment="lifelong-test", run_name="finetune-seed0", config=cfg,
                        every=LOG_EVERY)
    res = _train(mon)
    results = _results(res)
    path = root / "results.json"
    path.write_text(json.dumps(results))
    mon.close(results, results_path=path)
    return mon, res, results, cfg, root


def test_mlflow_local_store_params_and_run(mlflow_run):
    from mlflow.tracking import MlflowClient

    mon, _, _, cfg, root = mlflow_run
    uri = (root / "mlruns").resolve().as_uri()
    assert mon.tracking_uri == uri and (root / "mlruns").is_dir()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("lifelong-test")
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'finetune-seed0'")
    assert [r.info.run_id for r in runs] == [mon.run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params == flatten_config(cfg)
    assert params["train.lr"] == "0.001" and params["strategy.name"] == "finetune"
    assert params["seed"] == "0" and params["model.hidden"] == "null" and params["train.betas"] == "[0.9, 0.999]"


def test_mlflow_metrics(mlflow_run):
    from mlflow.tracking import MlflowClient

    mon, res, results, _, _ = mlflow_run
    client = MlflowClient(mon.tracking_uri)
    hist = lambda k: sorted((m.step, m.value) for m in client.get_metric_history(mon.run_id, k))  # noqa: E731
    R = res.accuracy_matrix
    avg = hist("eval/average_accuracy")
    assert [s for s, _ in avg] == list(range(1, N_EXP + 1))
    np.testing.assert_allclose([v for _, v in avg], [np.mean(R[i][: i + 1]) for i in range(N_EXP)], rtol=1e-9)
    assert avg[-1][1] == pytest.approx(np.mean(R[-1]), rel=1e-9)
    assert [v for _, v in hist("eval/accuracy_exp2")] == pytest.approx([R[i][2] for i in range(2, N_EXP)])
    steps, acc = res.curve
    cont = hist("continual/mean_accuracy")
    assert [s for s, _ in cont] == steps.tolist()
    np.testing.assert_allclose([v for _, v in cont], np.nanmean(acc, axis=1), rtol=1e-9)
    assert [s for s, _ in hist("train/loss")] == list(range(LOG_EVERY, N_EXP * ITERS + 1, LOG_EVERY))
    latest = client.get_run(mon.run_id).data.metrics
    expected = final_metrics(results)
    assert expected["final/average_accuracy"] == results["average_accuracy"]
    assert "continual/min_acc" in expected and "final/seed" not in expected
    for k, v in expected.items():
        assert latest[k] == pytest.approx(v, rel=1e-9)
        assert hist(k) == [(N_EXP * ITERS, pytest.approx(v, rel=1e-9))]


def test_mlflow_results_artifact(mlflow_run):
    from mlflow.tracking import MlflowClient

    mon, _, results, _, root = mlflow_run
    client = MlflowClient(mon.tracking_uri)
    assert [f.path for f in client.list_artifacts(mon.run_id)] == ["results.json"]
    local = client.download_artifacts(mon.run_id, "results.json", str(root))
    assert json.loads(open(local).read()) == json.loads(json.dumps(results))


def test_mlflow_failed_run_and_no_telemetry(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.telemetry import get_telemetry_client
    from mlflow.tracking import MlflowClient

    with pytest.raises(RuntimeError):
        with MLflowMonitor(f"file:{tmp_path / 'store'}") as mon:
            raise RuntimeError("boom")
    assert MlflowClient(mon.tracking_uri).get_run(mon.run_id).info.status == "FAILED"
    assert get_telemetry_client() is None


@pytest.mark.parametrize("uri", ["http://localhost:5000", "https://example.org", "databricks"])
def test_mlflow_refuses_remote_stores(uri):
    with pytest.raises(LifelongError, match="not local"):
        MLflowMonitor(uri)


def test_missing_tensorboard_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(LifelongError, match=r"needs the tensorboard package: pip install tensorboard==2\.21\.0"):
        TensorBoardMonitor(tmp_path / "tb")
    assert not (tmp_path / "tb").exists()


def test_missing_mlflow_is_a_clear_error(monkeypatch, tmp_path):
    for name in ("mlflow", "mlflow.entities", "mlflow.tracking"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(LifelongError, match=r"needs the mlflow-skinny package: pip install mlflow-skinny==3\.17\.2"):
        MLflowMonitor(tmp_path / "mlruns")


def test_multimonitor_drops_none_and_is_false_when_empty():
    rec = _Recorder()
    assert not MultiMonitor(None, None)
    multi = MultiMonitor(None, rec)
    assert multi and multi.monitors == [rec]
    res = _train(multi)
    assert len(rec.losses) == res.boundaries[-1]
    assert [c is None for c in rec.cont[:EVAL_EVERY - 1]] == [True] * (EVAL_EVERY - 1) and rec.cont[-1] is not None


def test_flatten_config():
    assert flatten_config({"a": {"b": 1, "c": [1, 2], "d": None, "e": {}}, "f": True, "g": "x"}) == \
        {"a.b": "1", "a.c": "[1, 2]", "a.d": "null", "a.e": "{}", "f": "true", "g": "x"}
