"""MAS: the importance equals its definition, the penalty its formula; task-free MAS updates
its importance at loss plateaus that follow a peak, with no boundary (the paper's absolute
thresholds, and our scale-free relative detection at hand-checked steps, at any loss scale and
on a real cross-entropy stream); both modes run."""
import pytest
import torch
from torch import nn

from lifelong.errors import ConfigError
from lifelong.models import ContinualModel, Head
from lifelong.runner import run
from lifelong.strategies.base import Batch
from lifelong.strategies.mas import MAS

SMALL = {"benchmark": {"name": "split-digits", "scenario": "domain"}, "model": {"hidden": [32]},
         "eval": {"every": None}, "train": {"optimizer": "sgd", "lr": 0.05}}


class Ident(nn.Module):
    out_features = 3

    def forward(self, x):
        return x


def _linear_model():
    torch.manual_seed(0)
    return ContinualModel(Ident(), Head(3, 2))


def test_importance_is_the_mean_absolute_gradient_of_the_squared_output_norm():
    model = _linear_model()
    mas = MAS().setup(model)
    x = torch.randn(5, 3)
    got = mas.importance(x, torch.zeros(5, dtype=torch.long))
    W, b = model.head.linear.weight.detach(), model.head.linear.bias.detach()
    gw, gb = torch.zeros_like(W), torch.zeros_like(b)
    for xi in x:  # d ||W x + b||^2 / dW = 2 (W x + b) x^T ; / db = 2 (W x + b)
        out = W @ xi + b
        gw += (2 * torch.outer(out, xi)).abs()
        gb += (2 * out).abs()
    assert torch.allclose(got["head.linear.weight"], gw / 5, atol=1e-6)
    assert torch.allclose(got["head.linear.bias"], gb / 5, atol=1e-6)


def test_penalty_is_lambda_half_omega_weighted_squared_distance():
    model = _linear_model()
    mas = MAS(mas_lambda=3.0).setup(model)
    mas._update(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    with torch.no_grad():
        model.head.linear.weight.add_(0.5)
    omega = mas.omega_["head.linear.weight"]
    expected = 3.0 / 2 * (omega * 0.25).sum()
    assert float(mas.penalty(None, None).detach()) == pytest.approx(float(expected), rel=1e-6)


def test_task_free_updates_at_a_plateau_after_a_peak_and_not_before():
    model = _linear_model()
    mas = MAS(mas_task_free=True, mas_window=3, mas_plateau_mean=0.5, mas_plateau_variance=0.1,
              mas_hard_buffer=2, mas_detection="absolute").setup(model)
    x, y, t = torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), torch.zeros(4, dtype=torch.long)

    def step(loss_level):  # logits whose cross-entropy is about loss_level for every sample
        p = torch.tensor(min(max(float(torch.exp(torch.tensor(-loss_level))), 1e-4), 1 - 1e-4))
        logit = torch.log(p / (1 - p))
        logits = torch.where(torch.nn.functional.one_hot(y, 2).bool(), logit, torch.zeros(()))
        mas.after_step(Batch(x, y, t), logits)

    for level in (2.0, 2.0, 2.0):  # high loss: no plateau
        step(level)
    assert mas.updates_ == 0
    for level in (0.1, 0.1, 0.1):  # the loss settles low: a plateau after the initial peak
        step(level)
    assert mas.updates_ == 1 and len(mas.hard_["y"]) == 2
    for level in (0.1, 0.1):  # still the same plateau: no second update without a new peak
        step(level)
    assert mas.updates_ == 1
    for level in (3.0, 3.0, 3.0, 0.1, 0.1, 0.1):  # new data (a peak), learned again: an update
        step(level)
    assert mas.updates_ == 2


# window 3: means 1.0 (a peak), .8, .6 < .7 * 1.0: plateau at step 4; low .4, and .667 < .4 + .5 * (1 - .4)
# at step 7, but .933 > .7 at step 8: a peak, rising to 1.2; .933 > .7 * 1.2 at step 10, .667 < .84 at
# step 11: plateau; the bump to .467 at step 13 stays under .4 + .5 * (1.2 - .4) = .8: no peak
HAND = [1.0, 1.0, 1.0, 0.4, 0.4, 0.4, 0.4, 1.2, 1.2, 1.2, 0.4, 0.4, 0.4, 0.6, 0.4, 0.4]


@pytest.mark.parametrize("scale", [1.0, 0.01, 100.0])
def test_relative_detection_finds_the_hand_checked_plateaus_at_any_loss_scale(scale):
    mas = MAS(mas_task_free=True, mas_window=3).setup(_linear_model())
    assert [i for i, v in enumerate(HAND) if mas.observe_loss(scale * v)] == [4, 11]
    paper = MAS(mas_task_free=True, mas_window=3, mas_detection="absolute").setup(_linear_model())
    found = [i for i, v in enumerate(HAND) if paper.observe_loss(scale * v)]
    # the paper's thresholds (mean < 0.2, variance < 0.1) depend on the scale: nothing at this
    # scale or above; at 0.01 a plateau as soon as the window fills (step 2, mean .01, variance 0)
    # and again at step 9, the first window above .01 (+ a standard deviation of 0)
    assert found == {1.0: [], 0.01: [2, 9], 100.0: []}[scale]


def test_relative_detection_finds_each_boundary_of_an_online_cross_entropy_stream():
    cfg = {**SMALL, "benchmark": {"name": "split-digits", "scenario": "class"}, "model": {"hidden": [100]},
           "online": {"task_free": True}}
    res = run({**cfg, "strategy": {"name": "mas", "mas_task_free": True}})
    steps, ends = res["_state"]["strategy"]["detected_steps"], res["boundaries"]
    starts = [0] + ends[:-1]
    assert len(steps) == 5  # one update per experience, 5 to 20 steps after it starts
    assert all(a + 5 <= s <= a + 20 for s, a in zip(steps, starts)), (steps, starts)
    paper = run({**cfg, "strategy": {"name": "mas", "mas_task_free": True, "mas_detection": "absolute"}})
    assert len(paper["_state"]["strategy"]["detected_steps"]) <= 1


def test_boundaries_given_one_update_per_experience_and_task_free_runs_without_them():
    res = run({**SMALL, "strategy": {"name": "mas"}, "train": {**SMALL["train"], "iterations": 10, "batch_size": 16}})
    assert res["strategy"].startswith("MAS(") and res["_state"]["strategy"]["updates"] == 5
    free = run({**SMALL, "strategy": {"name": "mas", "mas_task_free": True}, "online": {"task_free": True}})
    assert 0 <= free["online_accuracy"] <= 1
    with pytest.raises(ConfigError, match="needs experience boundaries"):
        run({**SMALL, "strategy": {"name": "mas"}, "online": {"task_free": True}})


@pytest.mark.parametrize("bad", [{"mas_lambda": -1}, {"mas_window": 1}, {"mas_plateau_mean": 0},
                                 {"mas_hard_buffer": 0}, {"mas_samples": 0}, {"mas_plateau_drop": 1},
                                 {"mas_peak_rise": 0}, {"mas_detection": "loss"}])
def test_bad_values_are_refused(bad):
    with pytest.raises(ConfigError, match="strategy.mas_"):
        run({**SMALL, "strategy": {"name": "mas", **bad}})
