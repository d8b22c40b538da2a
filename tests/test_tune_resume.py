"""A resumed ``lifelong tune`` suggests exactly the trials of an uninterrupted one (TPE, random,
grid; between trials and after a driver died mid-trial), and two drivers on one study never
draw the same suggestions. The trials here return a number computed from their parameters
instead of training (tests/test_tune.py runs real trials, killed and resumed): what is tested
is what the sampler suggests, in order, and that needs TPE past its 10 random start-up trials."""
import math
import socket
import subprocess
import sys

import pytest
import yaml

from test_tune import write_spec

optuna = pytest.importorskip("optuna")

from lifelong.studystore import open_storage, trials_frame  # noqa: E402
from lifelong.tuning import driver, parse_spec, tune  # noqa: E402

NAME = "tune-er-split-digits-current-task"


class Interrupted(Exception):
    """The tune was stopped here (Ctrl-C, a preemption between trials)."""


def scored_by_params(item: dict) -> dict:
    """A trial that trains nothing: its objective is a smooth function of its parameters."""
    cfg = item["config"]
    value = -(math.log10(cfg["train"]["lr"]) + 2.2) ** 2 - 0.01 * cfg["train"]["batch_size"] / 64
    return {"value": value, "summary": {}}


@pytest.fixture
def quick_trials(monkeypatch):
    monkeypatch.setattr(driver, "run_trial", scored_by_params)


def spec_of(tmp_path, sampler: str, trials: int, parallel: int = 1):
    space = ({"train.lr": {"choices": [0.001, 0.01, 0.1]}, "train.batch_size": {"choices": [32, 64]}}
             if sampler == "grid" else
             {"train.lr": {"low": 1e-4, "high": 0.3, "log": True}, "train.batch_size": {"low": 16, "high": 128}})
    path = write_spec(tmp_path, study={"sampler": sampler, "pruner": "none", "seed": 7},
                      budget={"trials": trials, "parallel": parallel}, space=space)
    return parse_spec(yaml.safe_load(path.read_text()))


def interrupt_after(monkeypatch, told: int):
    """Stop the tune (an exception out of ``tune``) once ``told`` trials have been told."""
    tell, seen = driver._tell, []

    def tell_then_stop(study, trial, res, log, name):
        tell(study, trial, res, log, name)
        seen.append(trial.number)
        if len(seen) == told:
            raise Interrupted

    monkeypatch.setattr(driver, "_tell", tell_then_stop)


def completed(out):
    """(params, value) of the study's complete trials, by trial number."""
    return [(t["params"], t["value"]) for t in trials_frame(open_storage(None, out), NAME) if t["state"] == "COMPLETE"]


@pytest.mark.parametrize("sampler, trials, parallel, stops", [
    ("tpe", 13, 1, [4, 11]),  # once among TPE's random start-up trials, once after (modelled)
    ("tpe", 12, 2, [4, 10]),  # batches of two: stopped between batches
    ("random", 6, 1, [2]),
    ("grid", 6, 1, [2]),      # the last grid point used to stop the study with an error
])
def test_an_interrupted_tune_resumed_suggests_the_trials_of_an_uninterrupted_one(
        tmp_path, monkeypatch, quick_trials, sampler, trials, parallel, stops):
    spec = spec_of(tmp_path, sampler, trials, parallel)
    tune(spec, tmp_path / "whole", ["er"], select_only=True, log=lambda m: None)
    whole = completed(tmp_path / "whole")
    assert len(whole) == trials
    assert len({yaml.safe_dump(p) for p, _ in whole}) == trials  # distinct suggestions, not one repeated

    told = 0
    for stop in stops:
        with monkeypatch.context() as m:
            interrupt_after(m, stop - told)
            with pytest.raises(Interrupted):
                tune(spec, tmp_path / "resumed", ["er"], select_only=True, log=lambda m: None)
        told = stop
        assert len(completed(tmp_path / "resumed")) == stop
    summary = tune(spec, tmp_path / "resumed", ["er"], select_only=True, log=lambda m: None)
    assert summary["studies"][0]["ran_here"] == list(range(stops[-1], trials))
    assert completed(tmp_path / "resumed") == whole


def test_a_trial_whose_driver_died_is_retried_and_the_rest_follow_as_uninterrupted(
        tmp_path, monkeypatch, quick_trials):
    """The retry of a dead driver's trial takes its parameters and a new trial number; the trials
    after it are suggested as if nothing had happened (TPE, past its start-up trials)."""
    spec = spec_of(tmp_path, "tpe", 12)
    tune(spec, tmp_path / "whole", ["er"], select_only=True, log=lambda m: None)

    calls = []

    def dies_in_the_eleventh(item):
        calls.append(item)
        if len(calls) == 11:
            raise Interrupted  # the driver "dies" inside trial 10, which stays RUNNING
        return scored_by_params(item)

    with monkeypatch.context() as m:
        m.setattr(driver, "run_trial", dies_in_the_eleventh)
        with pytest.raises(Interrupted):
            tune(spec, tmp_path / "resumed", ["er"], select_only=True, log=lambda m: None)
    storage = open_storage(None, tmp_path / "resumed")
    (running,) = [t for t in optuna.load_study(study_name=NAME, storage=storage).get_trials()
                  if t.state == optuna.trial.TrialState.RUNNING]
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process id that no longer runs: the dead driver's
    storage.set_trial_user_attr(running._trial_id, "driver", {"host": socket.gethostname(), "pid": gone.pid})

    summary = tune(spec, tmp_path / "resumed", ["er"], select_only=True, log=lambda m: None)
    assert summary["studies"][0]["trials"] == {"complete": 12, "pruned": 0, "failed": 0}
    rows = trials_frame(open_storage(None, tmp_path / "resumed"), NAME)
    assert [r["state"] for r in rows].count("FAIL") == 1 and rows[11]["params"] == rows[10]["params"]
    assert completed(tmp_path / "resumed") == completed(tmp_path / "whole")


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_two_drivers_asking_one_study_in_turn_never_get_the_same_suggestion(tmp_path, sampler):
    spec = spec_of(tmp_path, sampler, 8)
    space = driver.SearchSpace.parse(spec.space, spec.strategies)
    url = f"sqlite:///{tmp_path / 's.db'}"
    a, b = (optuna.create_study(study_name="s", storage=url, load_if_exists=True,
                                sampler=driver._sampler(spec, space, "er")) for _ in range(2))
    trials = [s.ask() for s in (a, b, a, b)]  # interleaved, as two processes asking at once
    drawn = [tuple(space.sample(t, "er").values()) for t in trials]
    assert len(set(drawn)) == 4
