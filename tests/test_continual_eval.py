"""Continual evaluation inside the loop: schedule, fixed subsamples, no effect on training."""
import numpy as np
import pytest
import torch

from lifelong.data import digits
from lifelong.evaluation import evaluate
from lifelong.models import build_model
from lifelong.strategies import Strategy
from lifelong.streams import split_stream
from lifelong.training import train


class _GradProbe(Strategy):
    name = "_probe"
    paper = "test"

    def __init__(self):
        super().__init__()
        self.grad_modes = set()

    def predict(self, x, task=None):
        self.grad_modes.add(torch.is_grad_enabled())
        return self.model(x, task)


def _run(eval_every=None, subsample=1000, seed=0, strategy=None, scenario="class"):
    stream = split_stream(digits(), scenario=scenario, n_experiences=5, seed=0)
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.n_classes, scenario, hidden=[32])
    strategy = (strategy or Strategy()).setup(model, "cpu", seed)
    res = train(stream, strategy, lambda p: torch.optim.SGD(p, lr=0.05), batch_size=16, iterations=6, seed=seed,
                eval_every=eval_every, eval_subsample=subsample)
    return res, stream, strategy


def test_curve_shape_schedule_and_unseen_experiences():
    res, stream, _ = _run(eval_every=2)
    steps, acc = res.curve
    assert steps.tolist() == list(range(2, 31, 2))
    assert acc.shape == (15, 5)
    assert res.boundaries == [6, 12, 18, 24, 30]
    for s, row in zip(steps, acc):
        seen = (s - 1) // 6 + 1
        assert not np.isnan(row[:seen]).any() and np.isnan(row[seen:]).all()


def test_last_evaluation_of_an_experience_equals_exact_accuracy_when_subsample_covers_the_test_set():
    res, _, _ = _run(eval_every=1, subsample=10_000)
    steps, acc = res.curve
    for i, b in enumerate(res.boundaries):
        row = acc[list(steps).index(b)]
        np.testing.assert_allclose(row[: i + 1], res.accuracy_matrix[i][: i + 1], atol=1e-6)


def test_subsample_accuracy_matches_a_direct_evaluation_of_the_same_samples():
    res, stream, strategy = _run(eval_every=30, subsample=20)
    # the evaluator draws a fixed subsample per experience from generator seed+104729
    g = torch.Generator().manual_seed(0 + 104729)
    subs = []
    for e in stream:
        idx = torch.randperm(len(e.test), generator=g)[:20]
        subs.append(type(e)(e.index, e.task_id, e.classes, e.train, e.valid, type(e.test)(e.test.x[idx], e.test.y[idx])))
    agn, _ = evaluate(strategy, subs)
    np.testing.assert_allclose(res.curve[1][-1], agn, atol=1e-6)


def test_continual_evaluation_does_not_change_training():
    a, _, _ = _run(eval_every=None)
    b, _, _ = _run(eval_every=1)
    assert a.losses == b.losses
    assert a.accuracy_matrix == b.accuracy_matrix
    assert b.continual_eval_time_s > 0 and a.curve is None


def test_evaluation_runs_without_autograd():
    _, _, s = _run(eval_every=3, strategy=_GradProbe())
    assert s.grad_modes == {False}


def test_task_aware_curves_in_task_il():
    res, _, _ = _run(eval_every=6, scenario="task")  # subsample 1000 covers digits' test sets
    steps, acc = res.curve
    for i, b in enumerate(res.boundaries):
        row = acc[list(steps).index(b)]
        np.testing.assert_allclose(row[: i + 1], res.task_aware_matrix[i][: i + 1], atol=1e-6)
    assert res.task_aware_matrix != res.task_agnostic_matrix


def test_closed_form_experiences_are_one_update_each_and_get_continual_metrics():
    """NCM fits each experience without a gradient step: each fit counts as one update, the curve
    holds the model after every fit (here on the full test sets), and min-ACC / WC-ACC follow by
    hand from the end-of-experience accuracy matrix."""
    from lifelong.continual_metrics import min_acc, wc_acc
    from lifelong.strategies import STRATEGIES

    stream = split_stream(digits(), scenario="class", n_experiences=5, seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "class", hidden=[])
    strategy = STRATEGIES["ncm"]().setup(model, "cpu", 0)
    res = train(stream, strategy, lambda p: torch.optim.SGD(p, lr=0.05), batch_size=16, iterations=6,
                eval_every=10, eval_subsample=10_000)
    steps, acc = res.curve
    assert res.boundaries == [1, 2, 3, 4, 5] and steps.tolist() == [1, 2, 3, 4, 5]
    m = np.array(res.accuracy_matrix)
    for i in range(5):
        np.testing.assert_allclose(acc[i, : i + 1], m[i, : i + 1], atol=1e-6)
    # min-ACC at the end: per old experience k, the worst accuracy after its own fit
    hand_min = np.mean([m[k + 1:, k].min() for k in range(4)])
    assert min_acc(steps, acc, res.boundaries) == pytest.approx(hand_min, abs=1e-6)
    assert wc_acc(steps, acc, res.boundaries) == pytest.approx(m[4, 4] / 5 + 0.8 * hand_min, abs=1e-6)
