"""The online command runs CIFAR-10 from a user-given folder (tiny files the test writes)."""
import json

from _cli import run_cli
from test_data import _write_cifar10


def test_online_task_free_er_on_a_cifar10_folder(tmp_path, capsys):
    _write_cifar10(tmp_path / "cifar-10-batches-py", n=60)
    code, out, err = run_cli(["run", "--benchmark", "split-cifar10", "--data-dir", str(tmp_path), "--strategy", "er",
                              "--set", "online.task_free=true", "--set", "strategy.mem_size=50",
                              "--set", "model.name=cnn", "--set", "model.channels=[4,8]", "--set", "model.hidden=[16]",
                              "--set", "eval.every=null", "--quiet", "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["benchmark"].startswith("split-cifar10") and len(res["accuracy_matrix"]) == 5
    assert 0 <= res["online_accuracy"] <= 1 and res["config"]["online"]["batch_size"] == 10
    assert sum(e["n_train"] for e in res["experiences"]) == 5 * 60
