"""Parameter isolation (PackNet, HAT): exactly zero forgetting in task-IL, more accuracy than
fine-tuning, the papers' mechanisms checked on hand-computed values, and refusals."""
import re

import pytest
import torch

from lifelong import metrics
from lifelong.config import StrategyConfig, validate_strategy_params
from lifelong.data import digits
from lifelong.errors import ConfigError
from lifelong.models import build_model
from lifelong.strategies import Compose, get_strategy_class
from lifelong.strategies._isolation import Frozen
from lifelong.strategies.base import StepContext
from lifelong.strategies.hat import HAT
from lifelong.strategies.packnet import PackNet
from lifelong.streams import split_stream
from lifelong.training import train


def _stream(seed=0):
    return split_stream(digits(), scenario="task", n_experiences=5, seed=seed)


def _run(strategy, model_name="mlp", iterations=300, optimizer=None, reset=True, seed=0, **model_kw):
    stream = _stream(seed)
    torch.manual_seed(seed)
    model_kw = model_kw or {"hidden": [100, 100]}
    model = build_model(model_name, stream.input_shape, stream.n_classes, "task", **model_kw)
    strategy.setup(model, "cpu", seed)
    opt = optimizer or (lambda p: torch.optim.Adam(p, lr=1e-2))
    res = train(stream, strategy, opt, batch_size=32, iterations=iterations, seed=seed, reset_optimizer=reset)
    return res.accuracy_matrix


def _forgets(R) -> float:
    """The largest change of an experience's accuracy after it was trained."""
    return max(abs(R[i][j] - R[j][j]) for j in range(len(R)) for i in range(j, len(R)))


# -- the guarantee, and the accuracy --------------------------------------------------------------
@pytest.fixture(scope="module")
def finetune_accuracy():
    return metrics.average_accuracy(_run(get_strategy_class("finetune")()))


@pytest.mark.parametrize("cls", [PackNet, HAT])
def test_zero_forgetting_and_beats_finetuning(cls, finetune_accuracy):
    R = _run(cls())
    assert _forgets(R) <= 1e-6  # every column constant after its experience
    assert abs(metrics.bwt(R)) <= 1e-6
    acc = metrics.average_accuracy(R)
    # measured: fine-tuning 0.861 (BWT -0.16), PackNet 0.978, HAT 0.994
    assert acc > finetune_accuracy + 0.05, (acc, finetune_accuracy)


@pytest.mark.parametrize("cls", [PackNet, HAT])
def test_zero_forgetting_holds_with_momentum_weight_decay_and_a_kept_optimizer(cls, monkeypatch):
    """SGD momentum carried across experiences and weight decay move weights whose gradient is
    zero: the write-back of the frozen entries keeps the guarantee; without it, tasks forget."""
    sgd = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3)  # noqa: E731
    R = _run(cls(), iterations=60, optimizer=sgd, reset=False)
    assert _forgets(R) <= 1e-6
    monkeypatch.setattr(Frozen, "restore", lambda self: None)
    R = _run(cls(), iterations=60, optimizer=sgd, reset=False)
    assert _forgets(R) > 0.01


@pytest.mark.parametrize("cls", [PackNet, HAT])
def test_zero_forgetting_on_the_cnn(cls):
    R = _run(cls(), "cnn", iterations=60, channels=[16, 32], hidden=64)
    assert _forgets(R) <= 1e-6
    assert min(R[j][j] for j in range(5)) > 0.7  # each task learnt (chance: 0.5)


def test_zero_forgetting_when_composed_with_replay():
    """ER replays old tasks through the network: their heads and weights still do not move."""
    R = _run(Compose(PackNet(), get_strategy_class("er")(mem_size=100)), iterations=60)
    assert _forgets(R) <= 1e-6
    R = _run(Compose(HAT(), get_strategy_class("er")(mem_size=100)), iterations=60)
    assert _forgets(R) <= 1e-6


# -- PackNet's mechanism ----------------------------------------------------------------------------
def _one_layer_packnet(**kw):
    stream = _stream()
    model = build_model("mlp", stream.input_shape, stream.n_classes, "task", hidden=[4])
    s = PackNet(**kw).setup(model, "cpu", 0)
    s.set_context(StepContext(stream=stream, experience=stream[0]))
    model.observe(stream[0].classes, stream[0].task_id)
    s.before_experience(stream[0])
    return s, model, stream


def test_packnet_prunes_the_smallest_magnitudes_of_the_tasks_weights_per_layer():
    s, model, stream = _one_layer_packnet(packnet_prune=0.75)
    w = model.backbone.net[1].weight
    with torch.no_grad():
        w.copy_(torch.arange(1, w.numel() + 1, dtype=torch.float32).view_as(w) * torch.tensor([1.0, -1.0]).repeat(
            w.numel() // 2).view_as(w))
    n = w.numel()  # 4 x 64 = 256 weights, magnitudes 1..256: the 192 smallest go
    s._prune()
    own = s.owner_[0]
    assert int((own == 1).sum()) == n - round(0.75 * n) == 64
    assert torch.equal(own == 1, w.abs() > 192) and torch.all(w[own == 0] == 0)
    # the second task trains only the freed weights, then prunes half of them
    s.after_experience(stream[0])
    s.set_context(StepContext(stream=stream, experience=stream[1]))
    model.observe(stream[1].classes, stream[1].task_id)
    s.before_experience(stream[1])
    assert torch.equal(s._trainable(0), own == 0)
    with torch.no_grad():
        w[own == 0] = torch.linspace(1, 2, 192)
    s._prune()  # 144 of the 192 go
    assert int((s.owner_[0] == 2).sum()) == 48 and int((s.owner_[0] == 1).sum()) == 64
    assert torch.equal(s.owner_[0] == 2, (w > torch.linspace(1, 2, 192)[143]) & (w <= 2))


def test_packnet_test_network_of_a_task_masks_later_tasks_weights():
    s, model, stream = _one_layer_packnet()
    s._prune()
    s.after_experience(stream[0])
    first = s._task_weights(1)["net.1.weight"].clone()
    s.set_context(StepContext(stream=stream, experience=stream[1]))
    model.observe(stream[1].classes, stream[1].task_id)
    s.before_experience(stream[1])
    with torch.no_grad():
        model.backbone.net[1].weight.add_(1.0)  # what training task 2 could do to the free weights
    s._frozen.restore()
    assert torch.equal(s._task_weights(1)["net.1.weight"], first)


def test_packnet_does_not_prune_the_last_experience_unless_asked():
    stream = _stream()
    for last, owners in ((False, {1, 2, 3, 4, 5}), (True, {0, 1, 2, 3, 4, 5})):
        torch.manual_seed(0)
        model = build_model("mlp", stream.input_shape, stream.n_classes, "task", hidden=[32])
        s = PackNet(packnet_prune_last=last).setup(model, "cpu", 0)
        train(stream, s, lambda p: torch.optim.Adam(p, lr=1e-2), batch_size=32, iterations=30)
        assert set(s.owner_[0].unique().tolist()) == owners
        share = [(s.owner_[0] == k).float().mean().item() for k in range(1, 6)]
        assert share[0] == 0.5  # half of the layer, then at most half of what was still free: a weight that
        for k in range(1, 4):   # never moved from the zero it was freed at ties at the cutoff and goes too
            assert 0 < share[k] <= (1 - sum(share[:k])) / 2


# -- HAT's mechanism --------------------------------------------------------------------------------
def _hat(n_iterations=0, iteration=0, **kw):
    stream = _stream()
    model = build_model("mlp", stream.input_shape, stream.n_classes, "task", hidden=[3, 2])
    s = HAT(**kw).setup(model, "cpu", 0)
    model.observe(stream[0].classes, stream[0].task_id)
    s.before_experience(stream[0])
    s.set_context(StepContext(iteration=iteration, n_iterations=n_iterations))
    return s, model


def test_hat_anneals_s_within_each_epoch_as_the_reference():
    s, _ = _hat()
    s.n_train_, s.batch_size_ = 288, 32  # 9 batches per epoch; s = 1/smax + (smax - 1/smax) * i / N
    for it, done in ((0, 0), (4, 128), (8, 256), (9, 0), (13, 128)):
        s.context.iteration = it
        assert s._s() == pytest.approx(1 / 400 + (400 - 1 / 400) * done / 288)
    s, _ = _hat(n_iterations=50, iteration=25, hat_anneal="experience", hat_smax=100)
    assert s._s() == pytest.approx(1 / 100 + (100 - 1 / 100) * 0.5)


def test_hat_regulariser_counts_only_units_no_earlier_task_uses():
    s, _ = _hat(hat_c=0.5)
    s.context.iteration = 0
    with torch.no_grad():
        s.embedding_.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0]))  # every gate sigmoid(0) = 1/2
    assert s.penalty(None, None).item() == pytest.approx(0.5 * 0.5)  # mean gate over all 5 units
    s.cumulative_ = torch.tensor([True, True, False, True, False])  # units 2 and 4 free
    with torch.no_grad():
        s.embedding_.copy_(torch.tensor([5.0, 5.0, 0.0, 5.0, -1e9]))
    assert s.penalty(None, None).item() == pytest.approx(0.5 * (0.5 + 0.0) / 2)


def test_hat_conditions_gradients_by_the_cumulative_attention_and_compensates_the_embedding():
    s, model = _hat()
    s.cumulative_ = torch.tensor([True, False, True, True, False])  # layer 1: units 0, 2; layer 2: unit 0
    s._freeze()
    l1, l2 = model.backbone.net[1], model.backbone.net[3]
    for p in (l1.weight, l1.bias, l2.weight, l2.bias):
        p.grad = torch.ones_like(p)
    e = torch.tensor([0.3, -0.2, 0.1, 0.05, -2.0])
    with torch.no_grad():
        s.embedding_.copy_(e)
    s.embedding_.grad = torch.ones(5)
    s.context.iteration = 0
    s.n_train_, s.batch_size_ = 288, 32
    s.before_step(None)
    assert l1.weight.grad[:, 0].tolist() == [0.0, 1.0, 0.0] and l1.bias.grad.tolist() == [0.0, 1.0, 0.0]
    # layer 2: weight (i, j) frozen when output unit i and input unit j are both used
    assert l2.weight.grad.tolist() == [[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]] and l2.bias.grad.tolist() == [0.0, 1.0]
    sv = 1 / 400
    want = 400 / sv * (torch.cosh(torch.clamp(sv * e, -50, 50)) + 1) / (torch.cosh(e) + 1)
    assert torch.allclose(s.embedding_.grad, want)


def test_hat_binary_gates_of_a_finished_task_and_the_clamp():
    s, model = _hat()
    with torch.no_grad():
        s.embedding_.copy_(torch.tensor([9.0, -0.001, 0.002, -7.0, 0.0]))
    s.after_step(None, None)
    assert s.embedding_.tolist() == pytest.approx([6.0, -0.001, 0.002, -6.0, 0.0])  # thres_emb
    s.after_experience(_stream()[0])
    assert s.gates_[0].tolist() == [True, False, True, False, True]
    assert s.cumulative_.tolist() == [True, False, True, False, True]
    x = _stream()[0].test.x[:4]
    h = torch.relu(model.backbone.net[1](x.flatten(1))) * torch.tensor([1.0, 0.0, 1.0])
    h = torch.relu(model.backbone.net[3](h)) * torch.tensor([0.0, 1.0])
    want = model.head(h, torch.zeros(4, dtype=torch.long))
    assert torch.allclose(s.predict(x, torch.zeros(4, dtype=torch.long)), want)


# -- refusals ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, value", [("packnet_prune", 0.0), ("packnet_prune", 1.0), ("packnet_retrain", 1.0),
                                        ("packnet_retrain", -0.1), ("hat_smax", 0.0), ("hat_smax", 0.5),
                                        ("hat_c", -1.0), ("hat_anneal", "batch")])
def test_bad_values_are_refused(key, value):
    name = key.split("_")[0]
    with pytest.raises(ConfigError, match=f"config key 'strategy.{key}'"):
        validate_strategy_params(StrategyConfig(name=name, **{key: value}))


@pytest.mark.parametrize("cls", [PackNet, HAT, get_strategy_class("dstcl")])
def test_models_they_cannot_isolate_are_refused(cls):
    stream = _stream()
    model = build_model("mlp", stream.input_shape, stream.n_classes, "task", hidden=[8], norm="batch")
    with pytest.raises(ConfigError, match="norm"):
        cls().setup(model, "cpu", 0)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "task", head="single", hidden=[8])
    with pytest.raises(ConfigError, match="one output head per task"):
        cls().setup(model, "cpu", 0)
    assert cls.scenarios == ("task",)


def test_hat_refuses_a_backbone_that_is_not_a_gated_chain():
    from torch import nn

    from lifelong.models import ContinualModel, MultiHead

    class Odd(nn.Module):  # a Linear with no ReLU after it
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out_features = nn.Linear(64, 8), nn.Linear(8, 8), 8

        def forward(self, x):
            return torch.relu(self.b(self.a(x.flatten(1))))

    with pytest.raises(ConfigError, match="not followed by one|ReLU"):
        HAT().setup(ContinualModel(Odd(), MultiHead(8, 10)), "cpu", 0)

    class Reordered(nn.Module):  # layers registered in another order than they run
        def __init__(self):
            super().__init__()
            self.b, self.r2 = nn.Linear(8, 8), nn.ReLU()
            self.a, self.r1 = nn.Linear(64, 8), nn.ReLU()
            self.out_features = 8

        def forward(self, x):
            return self.r2(self.b(self.r1(self.a(x.flatten(1)))))

    with pytest.raises(ConfigError, match="registered|take"):
        s = HAT().setup(ContinualModel(Reordered(), MultiHead(8, 10)), "cpu", 0)
        s.predict(torch.zeros(2, 1, 8, 8), None)


@pytest.mark.parametrize("cls", [PackNet, HAT])
def test_a_task_arriving_twice_is_refused(cls):
    stream = _stream()
    model = build_model("mlp", stream.input_shape, stream.n_classes, "task", hidden=[8])
    s = cls().setup(model, "cpu", 0)
    s.before_experience(stream[0])
    s.after_experience(stream[0])
    with pytest.raises(ConfigError, match="arrives a second time"):
        s.before_experience(stream[0])


@pytest.mark.parametrize("pair, hook", [("packnet+hat", "predict"), ("hat+icarl", "predict"),
                                        ("fetril+hat", "forward"), ("ncm+packnet", "predict")])
def test_compositions_with_another_owner_are_refused(pair, hook):
    a, b = pair.split("+")
    with pytest.raises(ConfigError, match=re.escape(f"strategy '{pair}'") + f".*define {hook}"):
        Compose(get_strategy_class(a)(), get_strategy_class(b)())
