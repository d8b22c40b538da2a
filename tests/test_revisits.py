"""Long streams with revisits (SCoLe), power-law task schedules, stream orderings, knowledge accumulation."""
from __future__ import annotations

import pytest
import torch

from lifelong.accumulation import accuracy_on_all_classes, knowledge_accumulation
from lifelong.config import BenchmarkConfig, parse_config
from lifelong.data import digits
from lifelong.errors import ConfigError
from lifelong.streams import split_stream
from lifelong.streams.orderings import reorder_stream
from lifelong.streams.presets import build_benchmark, check_benchmark
from lifelong.streams.revisits import power_law_schedule, power_law_stream, scole_stream


@pytest.fixture(scope="module")
def dig():
    return digits()


def _same(a, b):
    assert len(a) == len(b)
    for e, f in zip(a, b):
        assert (e.index, e.task_id, e.classes) == (f.index, f.task_id, f.classes)
        for s, t in ((e.train, f.train), (e.test, f.test)):
            assert torch.equal(s.x, t.x) and torch.equal(s.y, t.y)


# --- SCoLe ---------------------------------------------------------------------------------------

def test_scole_deterministic_and_experiences_hold_their_classes(dig):
    a = scole_stream(dig, n_experiences=30, classes_per_experience=2, train_per_class=15, test_per_class=10, seed=3)
    _same(a, scole_stream(dig, n_experiences=30, classes_per_experience=2, train_per_class=15, test_per_class=10,
                          seed=3))
    assert a.info["class_groups"] != scole_stream(dig, n_experiences=30, seed=4).info["class_groups"]
    assert a.scenario == "class" and a.n_classes == 10
    for e in a:
        assert len(e.classes) == 2 and set(e.train.y.tolist()) == set(e.classes) == set(e.test.y.tolist())
        assert len(e.train) == 30 and len(e.test) == 20
    # a class's test set is the same fixed subset at every visit; its training samples are drawn anew
    c = a.info["class_groups"][0][0]
    visits = [e for e in a if c in e.classes]
    assert len(visits) >= 3
    tests = [e.test.x[e.test.y == c] for e in visits]
    assert all(torch.equal(tests[0], t) for t in tests)
    trains = [e.train.x[e.train.y == c] for e in visits]
    assert not all(torch.equal(trains[0], t) for t in trains)


def test_scole_class_frequencies_follow_the_configuration(dig):
    n = 3000
    s = scole_stream(dig, n_experiences=n, classes_per_experience=2, train_per_class=1, test_per_class=1, seed=0)
    counts = torch.tensor(s.info["class_counts"], dtype=torch.float64)
    assert counts.sum() == 2 * n
    # uniform: each class in 2/10 of the experiences; binomial sd = sqrt(n p (1-p)) ~ 22, allow 4 sd
    assert (counts - n * 0.2).abs().max() < 4 * (n * 0.2 * 0.8) ** 0.5
    probs = [0.4, 0.2, 0.1, 0.1, 0.05, 0.05, 0.04, 0.03, 0.02, 0.01]
    s = scole_stream(dig, n_experiences=n, classes_per_experience=1, class_probs=probs, train_per_class=1,
                     test_per_class=1, seed=0)
    counts = torch.tensor(s.info["class_counts"], dtype=torch.float64)
    expect = n * torch.tensor(probs, dtype=torch.float64)
    assert ((counts - expect).abs() < 4 * (expect * (1 - expect / n)).sqrt() + 1).all()
    assert counts[0] > counts[1] > counts[2] and counts[-1] < counts[5]


@pytest.mark.parametrize("kwargs,match", [
    (dict(classes_per_experience=0), "classes_per_experience must be in 1..10"),
    (dict(classes_per_experience=11), "classes_per_experience must be in 1..10"),
    (dict(n_experiences=0), "n_experiences must be >= 1"),
    (dict(class_probs=[0.5, 0.5]), "one per class"),
    (dict(class_probs=[1.0] + [0.0] * 9), "fewer than classes_per_experience=2"),
    (dict(class_probs=[-1.0] + [1.0] * 9), "non-negative"),
    (dict(train_per_class=0), "train_per_class must be >= 1"),
])
def test_scole_bad_values_refused(dig, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        scole_stream(dig, **kwargs)


# --- power-law schedules -------------------------------------------------------------------------

def _gaps(schedule, n_tasks, n_experiences):
    """For every revisit slot: (gap of each introduced task, index of the chosen task)."""
    intro = {k * n_experiences // n_tasks for k in range(n_tasks)}
    last, out = [], []
    for t, k in enumerate(schedule):
        if t in intro:
            last.append(t)
        else:
            out.append(([t - s for s in last], k))
        last[k] = t
    return out


def test_power_law_schedule_introduces_every_task_once_in_order():
    for mode in ("power_law", "uniform", "none"):
        s = power_law_schedule(8, 80, mode, 1.0, seed=0)
        assert len(s) == 80 and s == power_law_schedule(8, 80, mode, 1.0, seed=0)
        firsts = [s.index(k) for k in range(8)]
        assert firsts == [k * 10 for k in range(8)]
    none = power_law_schedule(8, 80, "none")
    assert none == [t // 10 for t in range(80)]  # no revisits: each slot continues the newest task
    assert power_law_schedule(8, 80, "power_law", seed=0) != power_law_schedule(8, 80, "power_law", seed=1)


@pytest.mark.parametrize("alpha", [0.7, 1.5])
def test_power_law_revisit_gaps_follow_the_law(alpha):
    T, n_tasks = 8000, 10
    sched = power_law_schedule(n_tasks, T, "power_law", alpha, seed=0)
    seen = {g: 0.0 for g in range(1, 6)}
    expect = {g: 0.0 for g in range(1, 6)}
    for gaps, k in _gaps(sched, n_tasks, T):
        w = torch.tensor(gaps, dtype=torch.float64) ** (-alpha)
        p = w / w.sum()
        for g in expect:
            expect[g] += float(p[torch.tensor(gaps) == g].sum())
        if gaps[k] in seen:
            seen[gaps[k]] += 1
    for g in expect:  # Poisson-binomial counts: within 4 sd (sd <= sqrt(expected))
        assert abs(seen[g] - expect[g]) < 4 * expect[g] ** 0.5 + 1, (g, seen[g], expect[g])
    # and the law is not uniform: a recently seen task is revisited far more often than a long-unseen one
    uni = power_law_schedule(n_tasks, T, "uniform", seed=0)
    short = sum(gaps[k] == 1 for gaps, k in _gaps(uni, n_tasks, T))
    assert seen[1] > 1.5 * short


def test_uniform_revisits_choose_evenly():
    T, n_tasks = 20000, 10
    sched = power_law_schedule(n_tasks, T, "uniform", seed=0)
    last_intro = (n_tasks - 1) * T // n_tasks
    revisits = sched[last_intro + 1:]  # every task introduced by then: each revisit picks 1 of 10
    counts = torch.bincount(torch.tensor(revisits), minlength=n_tasks).double()
    n = len(revisits)
    assert (counts - n / n_tasks).abs().max() < 4 * (n * 0.1 * 0.9) ** 0.5


def test_power_law_stream_shares_task_ids_and_test_sets(dig):
    s = power_law_stream(dig, n_tasks=4, n_experiences=12, mode="uniform", train_per_experience=50,
                         test_per_task=40, seed=1)
    _same(s, power_law_stream(dig, n_tasks=4, n_experiences=12, mode="uniform", train_per_experience=50,
                              test_per_task=40, seed=1))
    assert [e.task_id for e in s] == s.info["schedule"]
    assert s.scenario == "domain" and sorted(s.task_classes) == [0, 1, 2, 3]
    by_task = {}
    for e in s:
        assert len(e.train) == 50 and len(e.test) == 40 and e.classes == list(range(10))
        if e.task_id in by_task:
            assert e.test is by_task[e.task_id].test  # one tensor per task: the same test set at each visit
            assert not torch.equal(e.train.x, by_task[e.task_id].train.x)  # new samples at each visit
        by_task.setdefault(e.task_id, e)
    t0, t1 = by_task[0].test, by_task[1].test
    assert torch.equal(t0.y, t1.y) and not torch.equal(t0.x, t1.x)  # same images, another permutation
    assert torch.equal(t0.x.flatten(1).sort(1).values, t1.x.flatten(1).sort(1).values)


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="zipf"), "revisit mode must be one of"),
    (dict(alpha=0.0), "revisit_alpha must be"),
    (dict(alpha=float("nan")), "revisit_alpha must be"),
    (dict(n_tasks=5, n_experiences=4), "must be >= n_tasks"),
    (dict(scenario="class"), "scenario 'domain' or 'task'"),
    (dict(train_per_experience=0), "train_per_experience must be >= 1"),
])
def test_power_law_bad_values_refused(dig, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        power_law_stream(dig, **kwargs)


# --- orderings -----------------------------------------------------------------------------------

def test_orderings_by_given_scores(dig):
    base = split_stream(dig, "class", n_experiences=5)
    scores = [9, 8, 1, 1, 5, 6, 0, 2, 4, 3]  # per class: experiences' means 8.5, 1, 5.5, 1, 3.5
    cur = reorder_stream(base, "curriculum", scores)
    assert cur.info["class_groups"] == [[2, 3], [6, 7], [8, 9], [4, 5], [0, 1]]  # ties keep the original order
    assert cur.info["difficulty"] == [1.0, 1.0, 3.5, 5.5, 8.5]
    assert [e.index for e in cur] == [e.task_id for e in cur] == list(range(5))
    assert torch.equal(cur[0].train.x, base[1].train.x)  # the experiences themselves, not copies
    anti = reorder_stream(base, "anti-curriculum", scores)
    assert anti.info["class_groups"] == [[0, 1], [4, 5], [8, 9], [2, 3], [6, 7]]
    rnd = reorder_stream(base, "random", seed=0)
    assert sorted(map(tuple, rnd.info["class_groups"])) == sorted(map(tuple, base.info["class_groups"]))
    assert rnd.info["class_groups"] == reorder_stream(base, "random", seed=0).info["class_groups"]


def test_probe_curriculum_puts_the_easiest_first(dig):
    """The probe's difficulty agrees with how hard an experience is: shuffle the labels of one
    experience (its classes can no longer be told apart: loss near log 2) and it must come last in a
    curriculum, first in an anti-curriculum; the others keep their probe order."""
    from dataclasses import replace

    from lifelong.streams.base import Split

    base = split_stream(dig, "class", n_experiences=5)
    e = base[1]
    y = e.train.y[torch.randperm(len(e.train.y), generator=torch.Generator().manual_seed(0))]
    base.experiences[1] = replace(e, train=Split(e.train.x, y))
    cur = reorder_stream(base, "curriculum")
    assert cur.info["order_permutation"][-1] == 1 and cur.info["class_groups"][-1] == [2, 3]
    assert cur.info["difficulty"] == sorted(cur.info["difficulty"]) and cur.info["difficulty"][-1] > 0.5
    assert cur.info["difficulty"][-2] < 0.3  # real digit pairs are nearly separable by a linear probe
    anti = reorder_stream(base, "anti-curriculum")
    assert anti.info["order_permutation"] == cur.info["order_permutation"][::-1]


def test_order_config_and_presets():
    s = build_benchmark(BenchmarkConfig(name="split-digits", order="curriculum",
                                        order_scores=[0, 0, 9, 9, 1, 1, 5, 5, 2, 2]), 0)
    assert s.info["class_groups"] == [[0, 1], [4, 5], [8, 9], [6, 7], [2, 3]]
    with pytest.raises(ConfigError, match="order_scores needs benchmark.order"):
        build_benchmark(BenchmarkConfig(name="split-digits", order_scores=[0] * 10), 0)
    with pytest.raises(ConfigError, match="one score per class"):
        build_benchmark(BenchmarkConfig(name="split-digits", order="curriculum", order_scores=[0, 1]), 0)
    with pytest.raises(ConfigError):
        parse_config({"benchmark": {"name": "split-digits", "order": "hardest-first"}})
    with pytest.raises(ConfigError, match="does not apply to 'permuted-mnist'"):
        check_benchmark(BenchmarkConfig(name="permuted-mnist", order="random"))
    with pytest.raises(ConfigError, match="does not apply to 'scole-digits'"):
        check_benchmark(BenchmarkConfig(name="scole-digits", revisit="uniform"))
    with pytest.raises(ConfigError):
        parse_config({"benchmark": {"name": "powerlaw-permuted-mnist", "revisit_alpha": 0}})
    sc = build_benchmark(BenchmarkConfig(name="scole-digits", n_experiences=7, classes_per_experience=3,
                                         train_per_class=4, test_per_class=2), 5)
    assert len(sc) == 7 and all(len(e.classes) == 3 and len(e.train) == 12 and len(e.test) == 6 for e in sc)
    with pytest.raises(ConfigError, match="scenario 'class'"):
        build_benchmark(BenchmarkConfig(name="scole-digits", scenario="domain"), 0)


# --- knowledge accumulation ----------------------------------------------------------------------

def test_accuracy_on_all_classes_hand_computed():
    # 3 classes with 2, 3, 5 test samples; per-class accuracies after experience i: a[i]
    a = [[1.0, 0.0, 0.0], [0.5, 1.0, 0.2], [0.0, 2 / 3, 0.8]]
    classes = [[0, 1], [1, 2], [0]]
    n = {0: 2, 1: 3, 2: 5}
    R = [[sum(n[c] * ai[c] for c in cs) / sum(n[c] for c in cs) for cs in classes] for ai in a]
    # by hand: (2*1 + 0 + 0)/10 = 0.2; (2*.5 + 3*1 + 5*.2)/10 = 0.5; (0 + 2 + 4)/10 = 0.6
    want = [0.2, 0.5, 0.6]
    assert accuracy_on_all_classes(R, classes, class_test_counts=n) == pytest.approx(want, abs=1e-12)
    n_test = [5, 8, 2]  # the test counts per class are recovered from the experiences' sizes
    assert accuracy_on_all_classes(R, classes, n_test) == pytest.approx(want, abs=1e-12)
    res = {"accuracy_matrix": R, "experiences": [{"classes": c, "n_test": m} for c, m in zip(classes, n_test)]}
    assert knowledge_accumulation(res) == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="accuracy on all classes is not determined"):  # class 1 counted twice
        accuracy_on_all_classes([[0.5, 0.5]], [[0, 1], [1, 2]], class_test_counts=[1, 1, 1])
    with pytest.raises(ValueError, match="test count is not determined"):  # classes 0 and 1 always together
        accuracy_on_all_classes([[0.5, 0.5]], [[0, 1], [0, 1, 2]], [5, 10])
    # determined although 0 and 1 never appear apart: the second experience holds every class
    assert accuracy_on_all_classes([[0.3, 0.7]], [[0, 1], [0, 1, 2]], class_test_counts=[1, 4, 5]) == \
        pytest.approx([0.7])


def test_knowledge_accumulation_of_a_scole_run_equals_direct_evaluation(dig):
    """End to end: fine-tuning on a short SCoLe stream; the accuracy on all classes recovered from the
    run's accuracy matrix equals evaluating the final model on every class's test set."""
    from lifelong.models import build_model
    from lifelong.runner import run

    cfg = {"benchmark": {"name": "scole-digits", "n_experiences": 12, "train_per_class": 30, "test_per_class": 8},
           "strategy": {"name": "finetune"}, "model": {"hidden": [32]},
           "train": {"iterations": 5, "batch_size": 32, "optimizer": "sgd", "lr": 0.1}, "eval": {"every": None}}
    res = run(cfg)
    curve = knowledge_accumulation(res)
    assert len(curve) == 12
    stream = build_benchmark(BenchmarkConfig(**cfg["benchmark"]), 0)
    model = build_model("mlp", stream.input_shape, 10, "class", None, hidden=[32])
    for e in stream:
        model.observe(e.classes, e.task_id)
    model.load_state_dict(res["_state"]["model"])
    model.eval()
    xs, ys = {}, {}
    for e in stream:  # one fixed test subset per class: collect each class's once
        for c in e.classes:
            xs.setdefault(c, e.test.x[e.test.y == c])
            ys.setdefault(c, e.test.y[e.test.y == c])
    assert all(len(ys[c]) == stream.info["class_test_counts"][c] for c in ys)
    with torch.no_grad():
        pred = model(torch.cat(list(xs.values()))).argmax(1)
    direct = int((pred == torch.cat(list(ys.values()))).sum()) / len(pred)
    assert curve[-1] == pytest.approx(direct, abs=1e-9)


# --- the evidence scripts still run (tiny settings; their numbers live in benchmarks/results/) ---

def test_benchmark_scripts_run(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import power_law
    import scole

    out = scole.main(["--experiences", "30", "--iterations", "2", "--seeds", "1", "--every", "10",
                      "--out", str(tmp_path / "s.json"), "--quiet"])
    assert len(out["runs"]["uniform"][0]["curve"]) == 30 and (tmp_path / "s.json").exists()
    out = power_law.main(["--tasks", "3", "--experiences", "6", "--iterations", "2", "--seeds", "1",
                          "--train-per-experience", "64", "--test-per-task", "50", "--quiet"])
    assert set(out["summary"]) == {"power_law", "uniform", "none"}
    assert out["summary"]["none"]["relearn_loss_ratio"] is None  # no task is returned to without revisits
    assert out["runs"]["none"][0]["visits_per_task"] == [2, 2, 2]
