"""lifelong tune: search spaces, protocols (no test data read while selecting, except on
request), determinism, resume after a kill, two processes writing one study, bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from _cli import run_cli
from lifelong.errors import ConfigError
from lifelong.tuning import SearchSpace, parse_spec

optuna = pytest.importorskip("optuna")

BASE = {"benchmark": {"name": "split-digits"}, "train": {"iterations": 15}, "eval": {"every": None},
        "strategy": {"mem_size": 60}, "threads": 1}


def write_spec(tmp_path, **over) -> Path:
    spec = {"base": BASE, "protocol": {"name": "current-task", "seeds": [0]},
            "study": {"sampler": "random", "pruner": "none", "seed": 0}, "budget": {"trials": 3},
            "space": {"train.lr": {"low": 1e-3, "high": 0.1, "log": True}},
            "strategies": {"ewc": {"strategy.ewc_lambda": {"low": 1.0, "high": 1.0e4, "log": True}}}}
    for k, v in over.items():
        spec[k] = v
    path = tmp_path / f"spec-{len(list(tmp_path.glob('spec-*')))}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def tune_json(out: Path) -> dict:
    return json.loads((out / "tune.json").read_text())


# --- search spaces and specs: every bad value is one clear error before anything runs ---------

@pytest.mark.parametrize("space, message", [
    ({"train.lr": {"low": 0.1, "high": 0.01}}, "must be below high"),
    ({"train.lr": {"low": 0.0, "high": 0.1, "log": True}}, "needs low > 0"),
    ({"train.lr": {"low": 0.001}}, "give 'low' and 'high'"),
    ({"train.lr": {"low": "x", "high": 0.1}}, "expected a number"),
    ({"train.lr": {"low": 0.001, "high": 0.1, "lg": True}}, "unknown field 'lg'"),
    ({"train.lr": {"choices": []}}, "non-empty list"),
    ({"train.lr": {"choices": [1, 1]}}, "listed twice"),
    ({"train.lr": {"choices": [1], "low": 0}}, "cannot be combined"),
    ({"train.lr": 0.1}, "give a mapping"),
    ({"lr": {"low": 0.001, "high": 0.1}}, "dotted config key"),
    ({"train.lr": {"low": 0.001, "high": 0.1, "log": "yes"}}, "'log' must be true or false"),
])
def test_bad_space_values_are_refused(space, message):
    with pytest.raises(ConfigError, match=message):
        SearchSpace.parse(space, {})


def test_space_types_and_yaml_exponents():
    sp = SearchSpace.parse({"train.lr": {"low": "1e-4", "high": "1e-1", "log": True},
                            "train.batch_size": {"low": 16, "high": 64, "step": 16},
                            "strategy.name": {"choices": ["er", "ewc"]}},
                           {"ewc": {"strategy.ewc_lambda": {"low": 1, "high": 100.0}}})
    kinds = {p.key: p.kind for p in sp.params}
    assert kinds == {"train.lr": "float", "train.batch_size": "int", "strategy.name": "categorical"}
    assert [p.key for p in sp.for_strategy("ewc")] == ["train.lr", "train.batch_size", "strategy.ewc_lambda"]
    assert [p.key for p in sp.for_strategy("er")] == ["train.lr", "train.batch_size"]


def test_conditional_parameters_follow_the_sampled_strategy():
    sp = SearchSpace.parse({"strategy.name": {"choices": ["er", "ewc"]}},
                           {"ewc": {"strategy.ewc_lambda": {"low": 1.0, "high": 100.0}}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):
        t = study.ask()
        values = sp.sample(t, None)
        assert ("strategy.ewc_lambda" in values) == (values["strategy.name"] == "ewc")
        study.tell(t, 0.0)


@pytest.mark.parametrize("over, message", [
    ({"protocol": {"name": "reality-check"}}, "give protocol.tune_on"),
    ({"protocol": {"name": "current-task", "tune_on": {"name": "split-mnist"}}}, "applies only to reality-check"),
    ({"budget": {"trials": 0}}, "budget.trials"),
    ({"study": {"sampler": "cmaes"}}, "study.sampler"),
    ({"protocol": {"seeds": [0, 0]}}, "distinct seeds"),
    ({"extra": 1}, "extra"),
    ({"study": {"objective": "forgetting", "direction": "minimize"}}, "set study.pruner: none"),
])
def test_bad_spec_values_are_refused(over, message):
    data = {"base": BASE, **over}
    with pytest.raises(ConfigError, match=message):
        parse_spec(data)


def test_report_benchmarks_differing_in_other_keys_get_their_own_labels():
    from lifelong.tuning.protocols import plan

    spec = parse_spec({"base": BASE, "protocol": {"name": "reality-check", "tune_on": {"name": "split-digits"},
                                                  "report_on": [{"name": "split-digits"},
                                                                {"name": "split-digits", "n_experiences": 2}]}})
    (target,) = plan(spec, SearchSpace.parse({}, {}), ["er"], False)
    labels = [lab for lab, _ in target.reports]
    assert labels[0] != labels[1] and all(lab.startswith("split-digits-") for lab in labels)
    twice = parse_spec({"base": BASE, "protocol": {"report_on": [{"name": "split-digits"}, {"name": "split-digits"}]}})
    with pytest.raises(ConfigError, match="same benchmark twice"):
        plan(twice, SearchSpace.parse({}, {}), ["er"], False)


def test_a_space_key_the_config_refuses_stops_before_any_trial(tmp_path, capsys):
    spec = write_spec(tmp_path, space={"train.lrr": {"low": 1e-3, "high": 0.1}})
    code, _, err = run_cli(["tune", "--spec", str(spec), "--strategy", "er", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "train.lrr" in err and "search space does not fit strategy 'er'" in err
    assert not (tmp_path / "o").exists()  # nothing was made


def test_a_config_its_stream_refuses_stops_before_any_trial(tmp_path, capsys):
    """Three budgets for split digits' five experiences: only the stream knows its length. Every
    trial would be refused when it started (and the study would record failures); the study is
    refused before it starts."""
    spec = write_spec(tmp_path, base={**BASE, "train": {"iterations": [5, 5, 5]}})
    code, _, err = run_cli(["tune", "--spec", str(spec), "--strategy", "er", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "3 budgets given for a stream of 5" in " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing was made


def test_tune_on_test_needs_its_flag(tmp_path, capsys):
    spec = write_spec(tmp_path, protocol={"name": "test", "seeds": [0]})
    code, _, err = run_cli(["tune", "--spec", str(spec), "--strategy", "er", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--allow-tune-on-test" in err
    assert not (tmp_path / "o").exists()


def test_ray_options_need_the_ray_executor(tmp_path, capsys):
    spec = write_spec(tmp_path)
    code, _, err = run_cli(["tune", "--spec", str(spec), "--ray-address", "auto", "--out", str(tmp_path / "o")],
                           capsys)
    assert code == 2 and "--ray-address is for --executor ray" in " ".join(err.split())


@pytest.mark.parametrize("prefix", ["../escape", "", "a b", "x/y"])
def test_a_study_prefix_that_is_no_plain_name_is_refused(tmp_path, capsys, prefix):
    spec = write_spec(tmp_path)
    code, _, err = run_cli(["tune", "--spec", str(spec), "--strategy", "er", "--study-prefix", prefix,
                            "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--study-prefix" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_a_folder_of_another_spec_is_refused(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    spec = write_spec(tmp_path)
    code, _, err = run_cli(["tune", "--spec", str(spec), "--strategy", "er", "--out", str(out)], capsys)
    assert code == 2 and "not a tune of lifelong's" in err and (out / "mine.txt").read_text() == "keep"


# --- the protocols: nothing of the test splits is read while selecting -----------------------

class SplitTouched(RuntimeError):
    pass


class Poisoned(torch.Tensor):
    """A tensor that refuses every operation: a test split that must never be read."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise SplitTouched(f"a test split was read during selection ({getattr(func, '__name__', func)})")


@pytest.fixture
def poisoned_test_splits(monkeypatch):
    import lifelong.runner as runner
    from lifelong.streams import Split

    build = runner.build_benchmark

    def poisoned(cfg, seed):
        stream = build(cfg, seed)
        for e in stream.experiences:
            t = e.test
            e.test = Split(t.x.as_subclass(Poisoned), t.y.as_subclass(Poisoned), None)
        return stream

    monkeypatch.setattr(runner, "build_benchmark", poisoned)


@pytest.mark.parametrize("protocol", [
    {"name": "current-task", "seeds": [0]},
    {"name": "reality-check", "tune_on": {"name": "split-digits", "n_experiences": 2}, "seeds": [0]},
])
def test_honest_protocols_never_read_a_test_split_while_selecting(tmp_path, poisoned_test_splits, protocol):
    from lifelong.tuning import tune

    spec = parse_spec(yaml.safe_load(write_spec(tmp_path, protocol=protocol, budget={"trials": 2}).read_text()))
    summary = tune(spec, tmp_path / "o", ["er"], select_only=True, log=lambda m: None)
    (study,) = summary["studies"]
    assert study["trials"] == {"complete": 2, "pruned": 0, "failed": 0}
    assert study["best"]["summary"]["evaluated_on"] == "valid"
    trial = json.loads((Path(study["best"]["folder"]) / "results.json").read_text())
    assert all(e["n_test"] == 0 and e["n_valid"] > 0 for e in trial["experiences"])


def test_tune_on_test_reads_the_test_split_and_is_marked(tmp_path, poisoned_test_splits):
    from lifelong.tuning import tune

    spec = parse_spec(yaml.safe_load(write_spec(tmp_path, protocol={"name": "test", "seeds": [0]},
                                                budget={"trials": 1}).read_text()))
    summary = tune(spec, tmp_path / "o", ["er"], select_only=True, allow_tune_on_test=True, log=lambda m: None)
    (study,) = summary["studies"]
    assert study["trials"]["failed"] == 1 and study["best"] is None  # the poisoned test split was read
    assert summary["tuned_on_test"] and summary["mark"] == "TUNED ON TEST"
    assert study["name"].endswith("TUNED-ON-TEST")
    assert "TUNED ON TEST" in (tmp_path / "o" / "tune.md").read_text()


# --- a full tune: best config, phase 2, determinism ---------------------------------------------

@pytest.mark.slow
def test_reality_check_writes_best_config_and_phase_two(tmp_path, capsys):
    spec = write_spec(tmp_path, protocol={"name": "reality-check", "tune_on": {"name": "split-digits",
                                                                                "class_order": "random"},
                                          "report_on": [{"name": "split-digits"}], "seeds": [0, 1]})
    out = tmp_path / "o"
    code, stdout, _ = run_cli(["tune", "--spec", str(spec), "--strategy", "ewc,er", "--out", str(out), "--quiet"],
                              capsys)
    assert code == 0, stdout
    s = tune_json(out)
    assert [x["strategy"] for x in s["studies"]] == ["ewc", "er"]
    for x in s["studies"]:
        assert x["trials"]["complete"] == 3
        assert set(x["best"]["params"]) == ({"train.lr", "strategy.ewc_lambda"} if x["strategy"] == "ewc"
                                            else {"train.lr"})
        assert x["phase2"]["split-digits"]["seeds"] == [0, 1]
        best = yaml.safe_load(Path(x["best"]["config_file"]).read_text())
        assert best["train"]["lr"] == pytest.approx(x["best"]["params"]["train.lr"])
        assert best["eval"].get("selection") is None  # a plain, runnable config
    assert set(s["ranking"]["phase2"]["split-digits"].values()) == {1, 2}
    # the best config runs as it is
    code, _, _ = run_cli(["run", "--config", s["studies"][1]["best"]["config_file"], "--quiet",
                          "--out", str(tmp_path / "best-run")], capsys)
    assert code == 0
    # rerunning the same command redoes nothing: the study holds its trials
    code, _, _ = run_cli(["tune", "--spec", str(spec), "--strategy", "ewc,er", "--out", str(out), "--quiet"], capsys)
    assert code == 0 and all(x["ran_here"] == [] for x in tune_json(out)["studies"])


@pytest.mark.slow
def test_same_spec_same_trials(tmp_path):
    from lifelong.tuning import tune

    spec = parse_spec(yaml.safe_load(write_spec(tmp_path, study={"sampler": "tpe", "pruner": "none", "seed": 3},
                                                budget={"trials": 3, "parallel": 2}).read_text()))
    a = tune(spec, tmp_path / "a", ["er"], select_only=True, log=lambda m: None)
    b = tune(spec, tmp_path / "b", ["er"], select_only=True, executor="process", workers=2, log=lambda m: None)

    def trials(out):
        from lifelong.studystore import open_storage, trials_frame

        return [(t["params"], t["value"]) for t in trials_frame(open_storage(None, out), a["studies"][0]["name"])]

    assert trials(tmp_path / "a") == trials(tmp_path / "b")
    key = ("number", "value", "params")
    assert [a["studies"][0]["best"][k] for k in key] == [b["studies"][0]["best"][k] for k in key]


@pytest.mark.slow
def test_tune_on_a_local_ray_cluster_equals_sequential(tmp_path):
    pytest.importorskip("ray")
    from lifelong.tuning import tune

    spec = parse_spec(yaml.safe_load(write_spec(tmp_path, study={"sampler": "tpe", "pruner": "none", "seed": 1},
                                                budget={"trials": 2, "parallel": 2}).read_text()))
    a = tune(spec, tmp_path / "a", ["er"], log=lambda m: None)
    b = tune(spec, tmp_path / "b", ["er"], executor="ray", workers=2, log=lambda m: None)
    sa, sb = a["studies"][0], b["studies"][0]
    assert [sa["best"][k] for k in ("number", "value", "params")] == [sb["best"][k] for k in ("number", "value", "params")]
    assert sa["phase2"] == sb["phase2"]  # phase 2 ran on Ray too, number for number


@pytest.mark.slow
def test_a_pruner_stops_poor_trials_at_experience_ends(tmp_path):
    from lifelong.tuning import tune

    spec = parse_spec(yaml.safe_load(write_spec(
        tmp_path, study={"sampler": "random", "pruner": "median", "seed": 0, "n_startup_trials": 2, "prune_after": 1},
        space={"train.lr": {"low": 1e-6, "high": 0.1, "log": True}}, budget={"trials": 8}).read_text()))
    s = tune(spec, tmp_path / "o", ["er"], select_only=True, log=lambda m: None)
    (study,) = s["studies"]
    assert study["trials"]["pruned"] >= 1 and study["trials"]["complete"] + study["trials"]["pruned"] == 8
    from lifelong.studystore import open_storage

    st = optuna.load_study(study_name=study["name"], storage=open_storage(None, tmp_path / "o"))
    for t in st.get_trials(states=(optuna.trial.TrialState.PRUNED,)):
        assert 2 <= max(t.intermediate_values) < 5  # after prune_after experiences, before the last
        assert all(v <= k / 5 for k, v in t.intermediate_values.items())  # seen accuracies over all 5
        assert not Path(t.user_attrs["folder"]).exists()  # its partial run was removed


# --- resume after a kill, and two processes writing one study --------------------------------

def _tune_process(spec, out, *extra, env=None):
    cmd = [sys.executable, "-m", "lifelong.cli", "tune", "--spec", str(spec), "--strategy", "er", "--quiet",
           "--out", str(out), *extra]
    return subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_killed_tune_resumes_without_redoing_finished_trials(tmp_path):
    spec = write_spec(tmp_path, budget={"trials": 4}, protocol={"name": "current-task", "seeds": [0]})
    out = tmp_path / "o"
    # killed (SIGKILL) at an atomic write inside the third trial's run: after an experience's checkpoint
    p = _tune_process(spec, out, "--select-only", env={"LIFELONG_FAILPOINT": "atomic-write:16"})
    p.communicate(timeout=300)
    assert p.returncode == -9
    from lifelong.studystore import open_storage

    name = "tune-er-split-digits-current-task"
    st = optuna.load_study(study_name=name, storage=open_storage(None, out))
    states = [t.state for t in st.get_trials()]
    done_before = [t.number for t in st.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    running = [t for t in st.get_trials() if t.state == optuna.trial.TrialState.RUNNING]
    assert len(done_before) >= 1 and len(running) == 1, states
    interrupted = Path(running[0].user_attrs["folder"])
    assert (interrupted / ".partial" / "resume.pt").exists()

    p = _tune_process(spec, out, "--select-only")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    s = tune_json(out)["studies"][0]
    assert s["trials"] == {"complete": 4, "pruned": 0, "failed": 0}
    assert not set(done_before) & set(s["ran_here"])  # finished trials were not run again
    st = optuna.load_study(study_name=name, storage=open_storage(None, out))
    retried = [t for t in st.get_trials() if t.user_attrs.get("resume_folder") == str(interrupted)]
    assert len(retried) == 1 and retried[0].params == running[0].params
    res = json.loads((interrupted / "results.json").read_text())
    assert res["checkpoints"]["resumed_from"] is not None  # the run continued from its checkpoint
    # and the study is the one an uninterrupted tune makes: the same trials, in order, number for number
    from lifelong.studystore import trials_frame
    from lifelong.tuning import tune

    tune(parse_spec(yaml.safe_load(spec.read_text())), tmp_path / "whole", ["er"], select_only=True,
         log=lambda m: None)

    def complete(out):
        return [(t["params"], t["value"]) for t in trials_frame(open_storage(None, out), name)
                if t["state"] == "COMPLETE"]

    assert complete(out) == complete(tmp_path / "whole")


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask-and-tell with a heartbeat storage, as the driver
def test_a_trial_of_a_dead_driver_on_another_machine_is_retried_after_its_heartbeat_stops(tmp_path):
    import time
    import warnings

    from lifelong.tuning.driver import Heartbeat, recover_stale

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="s", storage=storage)
    alive, dead = study.ask(), study.ask()
    for t in (alive, dead):
        t.suggest_float("x", 0, 1)
        t.set_user_attr("driver", {"host": "another-machine", "pid": 1})
        t.set_user_attr("folder", f"/shared/trial-{t.number}")
    with Heartbeat(storage, [dead._trial_id]):
        time.sleep(0.1)  # one beat, then the driver "dies"
    with Heartbeat(storage, [alive._trial_id]):  # this one keeps beating
        time.sleep(3.5)
        assert recover_stale(study, lambda m: None) == 1
    states = {t.number: t.state for t in study.get_trials()}
    assert states[alive.number] == optuna.trial.TrialState.RUNNING
    assert states[dead.number] == optuna.trial.TrialState.FAIL
    retry = study.ask()
    assert retry.suggest_float("x", 0, 1) == dead.params["x"]  # the same parameters, enqueued
    assert retry.user_attrs["resume_folder"] == f"/shared/trial-{dead.number}"


def _concurrent_writers(tmp_path, storage: str | None):
    spec = write_spec(tmp_path, budget={"trials": 8}, study={"sampler": "random", "pruner": "none", "seed": 0})
    extra = ["--select-only"] + (["--storage", storage] if storage else ["--storage", str(tmp_path / "shared.db")])
    procs = [_tune_process(spec, tmp_path / f"o{i}", *extra) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    from lifelong.studystore import open_storage

    ran = [tune_json(tmp_path / f"o{i}")["studies"][0]["ran_here"] for i in range(2)]
    st = optuna.load_study(study_name="tune-er-split-digits-current-task",
                           storage=open_storage(storage or str(tmp_path / "shared.db"), tmp_path))
    trials = st.get_trials()
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    numbers = sorted(t.number for t in trials)
    assert numbers == list(range(len(trials))) and len(trials) >= 8
    assert sorted(ran[0] + ran[1]) == numbers  # every trial either process ran is in the study, none twice
    assert ran[0] and ran[1]  # both wrote
    return len(trials), [len(r) for r in ran]


@pytest.mark.slow
def test_two_processes_writing_one_sqlite_study_lose_nothing(tmp_path):
    _concurrent_writers(tmp_path, None)


@pytest.mark.slow
def test_two_processes_writing_one_postgresql_study_lose_nothing(tmp_path, postgres_url):
    _concurrent_writers(tmp_path, postgres_url)
