"""The command line: runs, lists, and user errors as one message without a traceback."""
import json
import subprocess
import sys

import pytest

from _cli import run_cli


ARGS = ["--benchmark", "split-digits", "--iterations", "10", "--set", "model.hidden=[16]", "--quiet"]


_run = run_cli


def test_run_writes_results_and_prints_table(tmp_path, capsys):
    code, out, _ = _run(["run", *ARGS, "--out", str(tmp_path / "r")], capsys)
    assert code == 0
    assert "average_accuracy" in out and "exp 5" in out and "continual wc_acc" in out
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["config"]["train"]["iterations"] == 10 and res["config"]["model"]["hidden"] == [16]


def test_run_several_seeds_and_strategies_writes_summary(tmp_path, capsys):
    code, out, _ = _run(["run", *ARGS, "--strategy", "finetune,joint", "--seeds", "0,1", "--out",
                         str(tmp_path / "s")], capsys)
    assert code == 0
    rows = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert [r["strategy"] for r in rows] == ["finetune", "joint"]
    assert rows[1]["average_accuracy"]["mean"] > rows[0]["average_accuracy"]["mean"]
    assert (tmp_path / "s" / "joint" / "seed-1" / "results.json").is_file()
    assert "| joint | 2 |" in out


@pytest.mark.parametrize("argv, needle", [
    (["run", "--set", "train.lrr=1"], "unknown config key 'train.lrr'"),
    (["run", "--strategy", "nope"], "unknown strategy 'nope'"),
    (["run", "--config", "missing.yaml"], "config file not found: missing.yaml"),
    (["run", "--seeds", "a-b"], "--seeds must look like"),
])
def test_user_errors_are_one_clear_message(argv, needle, capsys, tmp_path):
    code, out, err = _run(argv + ["--out", str(tmp_path / "x")], capsys)
    assert code == 2
    assert needle in " ".join(err.split())
    assert "Traceback" not in err + out


def test_bad_config_file_values(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[benchmark]\nname = "split-digits"\n[train]\nbatch_size = -3\n')
    code, _, err = _run(["run", "--config", str(cfg), "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "train.batch_size" in err


def test_list_shows_benchmarks_and_strategy_parameters(capsys):
    code, out, _ = _run(["list"], capsys)
    assert code == 0 and "split-mnist" in out and "finetune" in out and "joint" in out


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "lifelong.cli", "list", "strategies"], capture_output=True, text=True)
    assert out.returncode == 0 and "finetune" in out.stdout


def test_config_strategy_parameters_apply_to_the_listed_strategies_that_take_them(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("benchmark: {name: split-digits}\nstrategy: {name: er, mem_size: 30}\n"
                   "train: {iterations: 5}\nmodel: {hidden: [16]}\n")
    code, _, err = _run(["run", "--config", str(cfg), "--strategy", "finetune,er", "--quiet", "--out",
                         str(tmp_path / "s")], capsys)
    assert code == 0, err
    er = json.loads((tmp_path / "s" / "er" / "seed-0" / "results.json").read_text())
    ft = json.loads((tmp_path / "s" / "finetune" / "seed-0" / "results.json").read_text())
    assert er["config"]["strategy"] == {"name": "er", "mem_size": 30}
    assert ft["config"]["strategy"] == {"name": "finetune"}
    cfg.write_text("benchmark: {name: split-digits}\nstrategy: {name: er, mem_sise: 30}\n")
    code, _, err = _run(["run", "--config", str(cfg), "--strategy", "finetune,joint", "--out",
                         str(tmp_path / "t")], capsys)
    assert code == 2 and "mem_sise" in err


@pytest.mark.parametrize("extra, needle", [
    # a schedule planned from the experiences' sizes (epochs), with a method training on a set of its own
    (["--strategy", "finetune,joint", "--set", "train.iterations=null", "--epochs", "1",
      "--set", "train.schedule={name: cosine}"], "strategy 'joint' trains on a set of its own size"),
    # a budget per experience that does not fit the stream (only the stream knows its length)
    (["--strategy", "finetune,er", "--set", "train.iterations=[5,5,5]"], "3 budgets given for a stream of 5"),
])
def test_a_sweep_is_refused_before_its_first_run_when_a_later_run_would_be(extra, needle, tmp_path, capsys):
    """A check that needs the stream used to run only when that run started: the sweep's earlier
    runs trained first and the refusal ended up as a failed run. Now every run is checked first."""
    argv = ["run", "--benchmark", "split-digits", "--set", "model.hidden=[16]", "--quiet"]
    code, out, err = _run(argv + extra + ["--out", str(tmp_path / "s")], capsys)
    assert code == 2 and needle in " ".join(err.split()) and "Traceback" not in out + err
    assert not (tmp_path / "s").exists()  # nothing trained, no folder made


def test_preflight_refuses_a_method_needing_each_class_in_one_task_in_a_sweep_whose_tasks_share_them():
    """Permuted MNIST in task-IL: every task has the ten digits, so NCM (class means keyed by class)
    is refused for every seed before any run trains; the stream is built once per seed."""
    from lifelong.config import parse_config
    from lifelong.errors import ConfigError
    from lifelong.runner import preflight

    base = {"benchmark": {"name": "permuted-mnist", "scenario": "task", "n_experiences": 2},
            "train": {"iterations": 5}}
    preflight([parse_config({**base, "strategy": {"name": "finetune"}})])  # nothing to check against the stream
    with pytest.raises(ConfigError, match="strategy 'ncm' needs each class in one task in task-IL, but benchmark "
                                          "'.*' has class 0 in tasks 0 and 1"):
        preflight([parse_config({**base, "strategy": {"name": "finetune"}}),
                   parse_config({**base, "strategy": {"name": "ncm"}, "seed": 1})])
