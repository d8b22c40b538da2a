"""Learning-rate schedules (lifelong.schedules): values against hand-computed ones, the
refinement of Defazio et al. 2023, bad values refused, and the loop applying them."""
import json
import math

import numpy as np
import pytest

from lifelong.errors import ConfigError
from lifelong.schedules import ScheduleConfig, build_schedule, median_filter, refine


def factors(cfg, budgets):
    s = build_schedule(cfg, budgets)
    return [[s.factor(e, i) for i in range(b)] for e, b in enumerate(budgets)]


# --- values -----------------------------------------------------------------------------------


def test_constant_is_constant_and_flagged():
    s = build_schedule(None, [3, 2])
    assert s.is_constant and s.flat() == [1.0] * 5
    s = build_schedule({"name": "constant", "warmup": 2}, [4])
    assert not s.is_constant and s.flat() == [0.5, 1.0, 1.0, 1.0]


def test_cosine_warmup_then_half_cosine_repeated_per_experience():
    f = factors({"name": "cosine", "warmup": 2}, [10, 10])
    # warm-up (it + 1) / 2; then u = (it - 2) / 8: 1 at u = 0, 0.5 at u = 1/2, (1 + cos(7 pi / 8)) / 2 last
    assert f[0][:3] == pytest.approx([0.5, 1.0, 1.0])
    assert f[0][6] == pytest.approx(0.5)
    assert f[0][9] == pytest.approx((1 + math.cos(7 * math.pi / 8)) / 2)  # 0.0381: never a zero step
    assert f[1] == f[0]  # repeated, re-warmed


def test_cosine_min_factor():
    f = factors({"name": "cosine", "min_factor": 0.1}, [4])[0]
    # u = 0, 1/4, 1/2, 3/4: 0.1 + 0.9 (1 + cos(pi u)) / 2
    assert f == pytest.approx([1.0, 0.1 + 0.9 * (1 + math.sqrt(0.5)) / 2, 0.55, 0.1 + 0.9 * (1 - math.sqrt(0.5)) / 2])


def test_linear_per_experience_and_over_stream():
    assert factors({"name": "linear"}, [4, 2]) == [[1.0, 0.75, 0.5, 0.25], [1.0, 0.5]]
    f = factors({"name": "linear", "over": "stream"}, [10, 10])
    assert f[0][0] == 1.0 and f[1][0] == pytest.approx(0.5) and f[1][9] == pytest.approx(0.05)
    # warm-up once, at the start of the stream only
    f = factors({"name": "linear", "over": "stream", "warmup": 2}, [4, 4])
    assert f == [pytest.approx([0.5, 1.0, 1.0, 5 / 6]), pytest.approx([4 / 6, 3 / 6, 2 / 6, 1 / 6])]


def test_wsd_stable_then_decay():
    f = factors({"name": "wsd", "decay_fraction": 0.5}, [10])[0]
    # u = it / 10; stable while u < 0.5; then 1 - (u - 0.5) / 0.5
    assert f == pytest.approx([1, 1, 1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2])
    assert ScheduleConfig(name="wsd").decay_fraction == 0.2  # the default is recorded


def test_infinite_warmup_cooldown_constant_anneal_per_experience():
    f = factors({"name": "infinite", "warmup": 2, "cooldown": 2, "decay_fraction": 0.2}, [10, 10])
    c, m = 0.55, 0.1  # Ibrahim et al.'s eta_const / eta_max and eta_min / eta_max
    assert f[0][:5] == pytest.approx([0.5, 1.0, 1.0, c + (1 - c) / 2, c])
    # anneal over the last 2 iterations of every experience: c (m / c)^(1/2), then m
    assert f[0][7:] == pytest.approx([c, math.sqrt(c * m), m])
    assert f[1] == pytest.approx([c] * 8 + [math.sqrt(c * m), m])  # no re-warm-up, no second cooldown


def test_infinite_over_stream_anneals_only_at_the_end():
    f = factors({"name": "infinite", "over": "stream", "decay_fraction": 0.1}, [10, 10])
    assert f[0] == pytest.approx([0.55] * 10)
    assert f[1][-2:] == pytest.approx([math.sqrt(0.055), 0.1])


def test_budget_zero_experience_gets_no_factors():
    s = build_schedule({"name": "cosine"}, [4, 0, 4])
    assert s.tables[1] == [] and s.tables[0] == s.tables[2]


# --- the refinement (Defazio et al. 2023) ------------------------------------------------------


def test_refine_constant_norms_give_linear_decay():
    assert refine([3.0] * 50, 8) == pytest.approx([1 - t / 8 for t in range(8)])
    f = factors({"name": "refined", "grad_norms": [2.0] * 7}, [5, 4])
    assert f == [pytest.approx([1, 0.8, 0.6, 0.4, 0.2]), pytest.approx([1, 0.75, 0.5, 0.25])]


def test_refine_hand_computed():
    # norms [1, 2] resampled to t = 0, 1, 2: g = 1, 1.5, 2; g^-2 = 1, 4/9, 1/4
    # w_0 = 1 * (4/9 + 1/4) = 25/36, w_1 = 4/9 * 1/4 = 1/9; normalised: 1, (1/9) / (25/36) = 0.16
    assert refine([1.0, 2.0], 2) == pytest.approx([1.0, 0.16])


def test_refine_shapes_from_the_paper():
    # gradient norms falling early in training give a warm-up; rising ones a faster decay than linear
    falling = refine(1 / np.sqrt(np.arange(1, 201)), 100)
    assert falling[0] < 0.5 and 10 < int(np.argmax(falling)) < 90
    rising = refine(np.linspace(1, 3, 200), 100)
    linear = 1 - np.arange(100) / 100
    assert np.all(rising[1:] < linear[1:])


def test_median_filter_removes_a_spike():
    g = np.ones(50)
    g[25] = 100.0
    assert median_filter(g, 0.1) == pytest.approx(np.ones(50))  # window of 5 points
    assert refine(g, 10) == pytest.approx(refine(np.ones(50), 10))


def _last_iterate_bound(lam, g, D=1.0):
    """The paper's bound on E f(x_T) - f* for SGD with step sizes lam and gradient norms g
    (Defazio et al. 2023, Theorem 1 with the gradient norms known)."""
    S, g2 = lam.sum(), g ** 2
    val = (D ** 2 + (g2 * lam ** 2).sum()) / (2 * S)
    for k in range(len(lam) - 1):
        val += 0.5 * lam[k] / (lam[k + 1:].sum() * lam[k:].sum()) * (g2[k:] * lam[k:] ** 2).sum()
    return val


@pytest.mark.parametrize("norms", [np.linspace(1, 3, 40), 1 + np.sin(np.linspace(0, np.pi, 40)),
                                   1 / np.sqrt(np.arange(1, 41))])
def test_refined_schedule_beats_linear_on_the_papers_bound(norms):
    """The refinement minimises the paper's bound: it beats linear decay and cosine there, and the
    weighting g_t^-2 sum_{p>t} g_p^-2 (the authors' code) beats g_t^-2 sum_{p>t} g_p^2."""
    from scipy.optimize import minimize_scalar

    def best(shape):  # each schedule at its best peak learning rate
        return minimize_scalar(lambda s: _last_iterate_bound(math.exp(s) * shape, norms),
                               bounds=(-15, 5), method="bounded").fun

    n = len(norms)
    refined = refine(norms, n, width=0.01)  # window 1: the norms as given
    linear = 1 - np.arange(n) / n
    cosine = (1 + np.cos(np.pi * np.arange(n) / n)) / 2
    g = np.interp(np.linspace(0, 1, n + 1), np.linspace(0, 1, n), norms)
    other = np.array([g[t] ** -2 * (g[t + 1:] ** 2).sum() for t in range(n)])
    assert best(refined) < 0.95 * best(linear)
    assert best(refined) < best(cosine)
    assert best(refined) < best(other / other.max())


def test_refined_from_a_results_file_splits_by_experience(tmp_path):
    norms = [1.0] * 6 + [1.0, 2.0]
    (tmp_path / "results.json").write_text(json.dumps({"grad_norms": norms, "boundaries": [6, 8]}))
    f = factors({"name": "refined", "grad_norms_from": str(tmp_path)}, [4, 2])
    assert f[0] == pytest.approx([1, 0.75, 0.5, 0.25]) and f[1] == pytest.approx([1.0, 0.16])
    f = factors({"name": "refined", "over": "stream", "grad_norms_from": str(tmp_path / "results.json")}, [2, 2])
    assert f[0][0] == 1.0 and len(f[1]) == 2
    with pytest.raises(ConfigError, match="same number of experiences"):
        build_schedule({"name": "refined", "grad_norms_from": str(tmp_path)}, [4, 2, 2])


# --- bad values ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg, match", [
    ({"name": "step"}, "train.schedule.name"),
    ({"over": "task"}, "train.schedule.over"),
    ({"warmup": -1}, "train.schedule.warmup"),
    ({"name": "cosine", "min_factor": 1.0}, "train.schedule.min_factor"),
    ({"name": "cosine", "min_factor": float("nan")}, "train.schedule.min_factor"),
    ({"name": "wsd", "decay_fraction": 0.0}, "train.schedule.decay_fraction"),
    ({"name": "infinite", "cooldown": -3}, "train.schedule.cooldown"),
    ({"name": "infinite", "constant_factor": 1.5}, "train.schedule.constant_factor"),
    ({"name": "refined", "grad_norms": [1.0, 2.0], "median_width": 0}, "train.schedule.median_width"),
    ({"name": "cosine", "cooldown": 5}, "schedule.cooldown applies only to 'infinite', not 'cosine'"),
    ({"name": "constant", "min_factor": 0.1}, "schedule.min_factor applies only to"),
    ({"name": "linear", "grad_norms": [1.0, 2.0]}, "schedule.grad_norms applies only to 'refined'"),
    ({"name": "refined"}, "needs exactly one of schedule.grad_norms"),
    ({"name": "refined", "grad_norms": [1.0, 1.0], "grad_norms_from": "x.json"}, "needs exactly one"),
    ({"name": "refined", "grad_norms": [1.0, -1.0]}, "positive finite"),
    ({"name": "refined", "grad_norms": [1.0]}, "train.schedule.grad_norms"),
    ({"name": "refined", "grad_norms": [1.0, 2.0], "warmup": 5}, "makes its own warm-up"),
    ({"name": "refined", "grad_norms_from": "/nonexistent/results.json"}, "file not found"),
    ({"name": "infinite", "min_factor": 0.6}, r"min_factor must lie in \(0, constant_factor=0.55\)"),
    ({"name": "infinite", "min_factor": 0.0}, "min_factor must lie in"),
    ({"name": "cosine", "extra": 1}, "unknown config key 'train.schedule.extra'"),
])
def test_bad_values_give_one_config_error(cfg, match):
    with pytest.raises(ConfigError, match=match):
        build_schedule(cfg, [100])


def test_results_file_without_grad_norms_is_refused(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"accuracy_matrix": []}))
    with pytest.raises(ConfigError, match="record_grad_norms"):
        build_schedule({"name": "refined", "grad_norms_from": str(tmp_path)}, [10])


@pytest.mark.parametrize("cfg, budgets, match", [
    ({"name": "cosine", "warmup": 10}, [20, 10], "warm-up iterations need a longer budget than experience 2"),
    ({"name": "linear", "over": "stream", "warmup": 30}, [10, 10], "than the stream"),
    ({"name": "infinite", "warmup": 15, "cooldown": 5}, [10, 10], "must be shorter than the stream"),
    ({"name": "infinite", "warmup": 8, "decay_fraction": 0.5}, [10, 10], "overlaps warm-up"),
])
def test_budgets_too_short_are_refused(cfg, budgets, match):
    with pytest.raises(ConfigError, match=match):
        build_schedule(cfg, budgets)


# --- the loop applies it (lifelong.runner.run) -------------------------------------------------

SMALL = {"benchmark": {"name": "split-digits", "n_experiences": 2, "classes_per_experience": 5},
         "model": {"hidden": [16]}, "eval": {"every": None}, "seed": 0,
         "train": {"iterations": 6, "batch_size": 16, "optimizer": "sgd", "lr": 0.1}}


@pytest.fixture
def recorded_lrs(monkeypatch):
    """The learning rate of every optimizer step of a run (SGD: what the update really used)."""
    import torch

    lrs, step = [], torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        lrs.append([g["lr"] for g in self.param_groups])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    return lrs


def _run(train_extra):
    from lifelong.runner import run

    return run({**SMALL, "train": {**SMALL["train"], **train_extra}})


def test_run_with_a_schedule_changes_the_learning_rate_at_each_step(recorded_lrs):
    _run({"schedule": {"name": "linear", "warmup": 2}})
    # per experience: warm-up 0.5, 1, then 1 - (it - 2) / 4 = 1, 0.75, 0.5, 0.25; times lr 0.1
    expected = [0.05, 0.1, 0.1, 0.075, 0.05, 0.025] * 2
    assert [lr[0] for lr in recorded_lrs] == pytest.approx(expected)


def test_run_over_stream_and_without_schedule(recorded_lrs):
    _run({"schedule": {"name": "cosine", "over": "stream"}})
    assert [lr[0] for lr in recorded_lrs] == pytest.approx(
        [0.1 * (1 + math.cos(math.pi * s / 12)) / 2 for s in range(12)])
    recorded_lrs.clear()
    _run({})
    assert [lr[0] for lr in recorded_lrs] == [0.1] * 12


def test_refined_from_a_recorded_run(tmp_path, recorded_lrs):
    """record_grad_norms -> results.json -> grad_norms_from: the refined schedule of that run."""
    from lifelong.runner import run_to_folder

    first = run_to_folder({**SMALL, "train": {**SMALL["train"], "record_grad_norms": True}}, tmp_path / "a")
    assert len(first["grad_norms"]) == 12 and first["boundaries"] == [6, 12]
    recorded_lrs.clear()
    _run({"schedule": {"name": "refined", "grad_norms_from": str(tmp_path / "a"), "median_width": 0.01}})
    norms = first["grad_norms"]
    expected = [0.1 * f for seg in (norms[:6], norms[6:]) for f in refine(seg, 6, 0.01)]
    assert [lr[0] for lr in recorded_lrs] == pytest.approx(expected)
    assert max(expected) == pytest.approx(0.1)


def test_bad_schedule_in_a_run_config_is_one_config_error():
    from lifelong.config import parse_config

    with pytest.raises(ConfigError, match="config key 'train.schedule.name'"):
        parse_config({"train": {"schedule": {"name": "exponential"}}})
    with pytest.raises(ConfigError, match="schedule.cooldown applies only to 'infinite'"):
        parse_config({"train": {"schedule": {"name": "linear", "cooldown": 3}}})
    with pytest.raises(ConfigError, match="warm-up iterations need a longer budget"):
        _run({"schedule": {"name": "linear", "warmup": 6}})


# --- the two evidence scripts still run (tiny settings; no numbers asserted) -------------------


def _bench(name):
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    return importlib.import_module(name)


@pytest.mark.slow
def test_schedules_benchmark_runs(tmp_path):
    out = _bench("schedules").main(["--seeds", "1", "--iterations", "3", "--scenarios", "task", "--strategies",
                                    "finetune", "--out", str(tmp_path / "s.json"), "--quiet"])
    assert set(out["results"]["task-IL finetune"]) == {"constant", "cosine", "linear", "refined"}
    assert json.loads((tmp_path / "s.json").read_text())["benchmark"] == "schedules"


@pytest.mark.slow
def test_continual_pretraining_benchmark_runs(tmp_path):
    out = _bench("continual_pretraining").main(["--seeds", "1", "--steps", "12", "--warmup", "2", "--n-probe", "60",
                                                "--n-test", "60", "--out", str(tmp_path / "c.json"), "--quiet"])
    run = out["runs"]["infinite"][0]
    assert len(run["probe_matrix"]) == 4 and all(len(r) == 3 for r in run["probe_matrix"])
    assert set(out["summary"]) == {"cosine (repeated)", "infinite", "constant"}


@pytest.mark.parametrize("strategy", [{"name": "gdumb", "mem_size": 1000}, {"name": "icarl"}, {"name": "joint"},
                                      {"name": "vcl", "vcl_coreset_size": 20}])
def test_a_schedule_planned_from_epochs_is_refused_for_a_method_with_its_own_training_set(strategy):
    """The schedule is planned before the run from each experience's size (train.epochs); a
    method that trains on a set of its own (GDumb's memory, iCaRL's exemplars, Joint's earlier
    experiences, VCL's coreset held out) would run past its table (GDumb: an IndexError) or stop
    short of it. Refused before training; with train.iterations the same run is honoured."""
    from lifelong.runner import run

    base = {"benchmark": {"name": "split-digits"}, "strategy": strategy, "eval": {"every": None}}
    with pytest.raises(ConfigError, match=f"strategy '{strategy['name']}' trains on a set of its own size.*give "
                                          "train.iterations"):
        run({**base, "train": {"epochs": 2, "schedule": {"name": "cosine"}}})
    res = run({**base, "train": {"iterations": 3, "schedule": {"name": "cosine"}}})
    assert len(res["train_loss"]) == 5


def test_a_schedule_from_epochs_stays_allowed_where_the_method_trains_on_the_experience():
    from lifelong.runner import run

    res = run({"benchmark": {"name": "split-digits"}, "strategy": {"name": "vcl"}, "eval": {"every": None},
               "train": {"epochs": 1, "schedule": {"name": "cosine"}}})  # no coreset: the experience's own rows
    assert len(res["train_loss"]) == 5
