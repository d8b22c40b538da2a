"""OnPro (Wei et al., ICCV 2023): the OPE loss against hand-computed values, APF's class-pair
distribution and its draws on a constructed memory, the prototypes it keeps, bad values, and the
claims at small scale on split digits (class-IL, one pass, minibatches of 10)."""
import functools
import math

import pytest
import torch

from lifelong.config import StrategyConfig, validate_strategy_params
from lifelong.data import digits
from lifelong.errors import ConfigError
from lifelong.models import build_model
from lifelong.strategies import STRATEGIES, Batch
from lifelong.strategies.onpro import OnPro, ope_loss, pair_probabilities
from lifelong.streams import split_stream
from lifelong.training import train


# -- OPE -------------------------------------------------------------------------------------------
def test_ope_loss_equals_the_hand_computed_value_when_both_views_agree():
    # two classes, orthogonal prototypes, identical views: every anchor has similarity 1 to its
    # positive and 0 to the two other prototypes -> loss = log(2 + e^(1/T)) - 1/T
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    y = torch.tensor([0, 1, 0])
    for t in (1.0, 0.5):
        loss, means = ope_loss(z, z.clone(), y, t)
        assert loss.item() == pytest.approx(math.log(2 + math.exp(1 / t)) - 1 / t, rel=1e-6)
    assert torch.allclose(means, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_ope_loss_uses_normalised_class_means_of_each_view():
    s = 1 / math.sqrt(2)
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])   # class 0: mean (0.5, 0.5); class 2: (0, 1)
    z2 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])   # class 0: (1, 0);           class 2: (0, 1)
    y = torch.tensor([0, 0, 2])
    loss, means = ope_loss(z1, z2, y, 1.0)
    u = [(s, s), (0.0, 1.0), (1.0, 0.0), (0.0, 1.0)]           # p0, p2, q0, q2 (normalised)
    pos = [2, 3, 0, 1]
    dot = lambda a, b: a[0] * b[0] + a[1] * b[1]
    terms = [dot(u[i], u[pos[i]]) - math.log(sum(math.exp(dot(u[i], u[j])) for j in range(4) if j != i))
             for i in range(4)]
    assert loss.item() == pytest.approx(-sum(terms) / 4, rel=1e-6)
    assert torch.allclose(means, torch.tensor([[0.75, 0.25], [0.0, 0.0], [0.0, 1.0]]))  # class 1 absent: zeros


def test_ope_loss_falls_when_the_views_prototypes_agree_and_classes_separate():
    y = torch.tensor([0, 1])
    apart = ope_loss(torch.eye(2), torch.eye(2), y, 0.5)[0]
    confused = ope_loss(torch.eye(2), torch.eye(2).flip(0), y, 0.5)[0]
    assert apart < confused


# -- APF -------------------------------------------------------------------------------------------
def test_pair_probabilities_are_softmax_of_inverse_distances():
    means = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])   # d(0,1)=1, d(0,2)=3, d(1,2)=2
    pairs, p = pair_probabilities(means)
    assert pairs.tolist() == [[0, 1], [0, 2], [1, 2]]
    e = [math.exp(1.0), math.exp(1 / 3), math.exp(1 / 2)]
    assert p.tolist() == pytest.approx([v / sum(e) for v in e], rel=1e-6)


def _onpro_with_memory(**params):
    s = OnPro(mem_size=30, **params)
    s.setup(build_model("mlp", (1, 8, 8), 10, "class", hidden=[16]), "cpu", seed=0)
    y = torch.tensor([0, 1, 2] * 10)
    s.buffer_.add(y.float().view(-1, 1, 1, 1).expand(-1, 1, 8, 8).clone(), y, torch.zeros_like(y))
    s.classes_mean_.zero_()
    s.classes_mean_[[0, 1, 2], 0] = torch.tensor([1e-3, 1.0, 3.0])   # pair distances 1, 3, 2 (class 0 nonzero)
    return s, y


def test_feedback_draws_class_pairs_from_the_prototype_distribution():
    s, _ = _onpro_with_memory(onpro_mixup_base_rate=0.0, onpro_mixup_p=0.0)
    x = torch.zeros(4000, 1, 8, 8)
    fx, ya, yb, lam = s.feedback(x, torch.zeros(4000, dtype=torch.long))
    assert torch.equal(lam, torch.zeros(4000)) and (ya < yb).all()   # no mixing: the first class's sample
    assert torch.equal(fx[:, 0, 0, 0], ya.float())
    freq = torch.stack([((ya == a) & (yb == b)).float().mean() for a, b in [(0, 1), (0, 2), (1, 2)]])
    _, p = pair_probabilities(s.classes_mean_[:3])
    assert torch.allclose(freq, p, atol=0.03), (freq, p)
    assert p[0] > p[2] > p[1]   # the two closest classes are replayed most


def test_feedback_mixes_inputs_with_the_returned_weights():
    s, _ = _onpro_with_memory(onpro_mixup_base_rate=0.5, onpro_mixup_p=1.0)
    mx, my, _ = s.buffer_.sample(20, s.generator)
    fx, ya, yb, lam = s.feedback(mx, my)
    assert len(fx) == 20 and (lam[:10] <= 0.6).all() and (lam > 0).all()   # base part: U(0, 0.6)
    assert torch.allclose(fx[:, 0, 0, 0], (1 - lam) * ya.float() + lam * yb.float(), atol=1e-6)


def test_loss_keeps_the_memory_batchs_prototypes():
    s, y = _onpro_with_memory()
    s.model.head.active[:3] = True
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    batch = Batch(x, torch.tensor([0, 0, 1, 1, 2, 2]), torch.zeros(6, dtype=torch.long))
    loss = s.loss(s.forward(batch), batch)
    assert torch.isfinite(loss) and loss.requires_grad
    seen = s.classes_mean_.abs().sum(1) > 0
    assert seen[:3].all() and not seen[3:].any()


# -- claims at small scale -------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _acc(name, seed, optimizer="sgd"):
    """benchmarks/online_replay.py's setting: MLP 100-100, one pass, minibatch 10, memory 100
    (``optimizer="sgd"``: SGD lr 0.1 as there; ``"adam"``: Adam lr 0.003)."""
    stream = split_stream(digits(), scenario="class", n_experiences=5, seed=0)
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "class", hidden=[100, 100])
    params = {"mem_size": 100} if name != "finetune" else {}
    strategy = STRATEGIES[name](**params).setup(model, "cpu", seed)
    opt = (lambda p: torch.optim.SGD(p, lr=0.1)) if optimizer == "sgd" else (lambda p: torch.optim.Adam(p, lr=3e-3))
    res = train(stream, strategy, opt, batch_size=10, epochs=1, seed=seed)
    return res.metrics()["average_accuracy"]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_onpro_beats_finetuning_in_online_class_il(seed, optimizer):
    ft, acc = _acc("finetune", seed, optimizer), _acc("onpro", seed, optimizer)
    assert ft < 0.25 and acc > ft + 0.1, (acc, ft)


def test_onpro_is_at_er_level_but_does_not_beat_it_reliably_here():
    """Measured, not the paper's claim: with Adam in the benchmark setting OnPro is within a few
    points of ER on average over two seeds (see docs/methods-online.md)."""
    er = sum(_acc("er", s, "adam") for s in (0, 1)) / 2
    onpro = sum(_acc("onpro", s, "adam") for s in (0, 1)) / 2
    assert onpro > er - 0.05, (onpro, er)


# -- bad values ------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, value", [("onpro_proto_temperature", 0.0), ("onpro_ins_temperature", -1.0),
                                        ("onpro_mixup_base_rate", 1.5), ("onpro_mixup_p", -0.1),
                                        ("onpro_mixup_upper", 2.0), ("onpro_mixup_alpha", 0.0),
                                        ("onpro_proj_dim", 0), ("onpro_aug_crop", "rotate"),
                                        ("replay_batch_size", 0), ("mem_size", 0)])
def test_bad_values_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        validate_strategy_params(StrategyConfig(name="onpro", **{key: value}))


def test_a_model_without_a_class_il_head_is_refused():
    with pytest.raises(ConfigError, match="head"):
        OnPro().setup(torch.nn.Linear(4, 2), "cpu", 0)
