"""Contrastive online replay (SCR, PCR, HPCR, UER) and the tensor augmentations they use: the
losses against hand-computed values, HPCR's switches, the augmentations' guarantees, and the
claim the papers share at small scale: each beats fine-tuning in class-IL (Split digits)."""
import functools
import math

import pytest
import torch
import torch.nn.functional as F

from lifelong.augment import Augment
from lifelong.config import StrategyConfig, validate_strategy_params
from lifelong.data import digits
from lifelong.errors import ConfigError
from lifelong.models import build_model
from lifelong.strategies import STRATEGIES, Batch
from lifelong.strategies._contrastive import proxy_contrastive_loss, supcon_loss
from lifelong.strategies.hpcr import HPCR
from lifelong.strategies.uer import UER, angle_norm
from lifelong.streams import Stream, split_stream
from lifelong.training import train


# -- augmentations -----------------------------------------------------------------------------
def _images(n=6, c=1, s=8, seed=0):
    return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(seed)) * 0.8 + 0.1


@pytest.mark.parametrize("crop", ["resized", "pad", "none"])
@pytest.mark.parametrize("c", [1, 3])
def test_augment_is_deterministic_under_a_generator_and_keeps_shape_and_range(crop, c):
    x = _images(c=c)
    before = x.clone()
    aug = Augment(crop=crop, crop_padding=1)
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    other = aug(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, other)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= x.min() and a.max() <= x.max()
    assert torch.equal(x, before)  # the input is never modified


def test_augment_parts_switch_off_and_flip_and_pad_crop_do_what_they_say():
    x, g = _images(), torch.Generator().manual_seed(0)
    assert torch.equal(Augment(crop="none", flip_p=0, jitter_p=0)(x, g), x)
    assert torch.equal(Augment(crop="none", flip_p=1, jitter_p=0)(x, g), x.flip(3))
    out = Augment(crop="pad", crop_padding=2, flip_p=0, jitter_p=0)(x, g)
    padded = F.pad(x, (2, 2, 2, 2), value=float(x.min()))
    for i in range(len(x)):  # each output is an 8x8 window of the image padded with the batch's minimum
        assert any(torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8]) for dy in range(5) for dx in range(5))
    j = Augment(crop="none", flip_p=0, jitter_p=1, brightness=0.4, contrast=0.0)(x, g)
    ratio = j / x  # brightness only: each image scaled by one factor in [0.6, 1.4] (before clamping)
    inside = (j > x.min()) & (j < x.max())
    for i in range(len(x)):
        r = ratio[i][inside[i]]
        assert 0.6 <= r.min() and r.max() <= 1.4 and torch.allclose(r, r[0].expand_as(r), atol=1e-5)


@pytest.mark.parametrize("bad", [dict(crop="rotate"), dict(crop_scale=(0.0, 1.0)), dict(crop_scale=(0.9, 0.5)),
                                 dict(crop_padding=-1), dict(flip_p=1.5), dict(jitter_p=-0.1),
                                 dict(brightness=1.0), dict(contrast=-0.2), dict(grayscale_p=2)])
def test_augment_refuses_bad_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        Augment(**bad)
    with pytest.raises(ValueError, match="B, C, H, W"):
        Augment()(torch.rand(4, 64), torch.Generator())


# -- the losses, by hand -------------------------------------------------------------------------
def test_supcon_loss_equals_the_hand_computed_value():
    z = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]]), dim=1)
    y = torch.tensor([0, 0, 1, 2])  # anchor 3 has no positive: skipped
    T = 0.5
    s = (z @ z.T).tolist()

    def term(i, p):
        return s[i][p] / T - math.log(sum(math.exp(s[i][a] / T) for a in range(4) if a != i))

    want = -(term(0, 1) + term(1, 0)) / 2  # anchors 0 and 1, one positive each; anchor 2, 3: none
    assert supcon_loss(z, y, T).item() == pytest.approx(want, rel=1e-6)


def test_proxy_loss_equals_the_hand_computed_value_and_ignores_proxies_of_absent_classes():
    z = F.normalize(torch.tensor([[1.0, 0.2], [0.1, 1.0], [0.7, 0.7]]), dim=1)
    y = torch.tensor([0, 1, 0])
    w = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])  # class 2 is not in the batch
    T = 0.09
    wn = F.normalize(w, dim=1)
    want = 0.0
    for i in range(3):  # denominator: one term per SAMPLE j, with its label's proxy
        c = [float(z[i] @ wn[y[j]]) / T for j in range(3)]
        want += -(float(z[i] @ wn[y[i]]) / T - math.log(sum(math.exp(v) for v in c)))
    got = proxy_contrastive_loss(z, y, w, T)
    assert got.item() == pytest.approx(want / 3, rel=1e-6)
    w2 = w.clone()
    w2[2] = torch.tensor([-5.0, 9.0])  # the absent class's proxy: no effect (anchor-to-proxy restriction)
    assert proxy_contrastive_loss(z, y, w2, T).item() == pytest.approx(got.item(), rel=1e-6)
    full_softmax = F.cross_entropy(z @ wn.T / T, y)  # an ordinary cosine classifier over all classes differs
    assert abs(full_softmax.item() - got.item()) > 1e-3


def test_uer_splits_dot_product_logits_into_angle_and_norm():
    h, w = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    cos, norm = angle_norm(h, w)
    assert torch.allclose(cos, torch.tensor([[0.6, 0.8]])) and torch.allclose(norm, torch.tensor([[5.0, 10.0]]))
    assert torch.allclose(cos * norm, h @ w.T)


def test_uer_learns_new_samples_by_the_angle_only_and_replays_by_angle_and_norm():
    torch.manual_seed(0)
    model = build_model("mlp", (4,), 3, "class", hidden=[5])
    model.observe([0, 1, 2], 0)
    uer = UER(uer_temperature=0.5).setup(model)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    b = Batch(x, y, torch.zeros(6, dtype=torch.long), n_new=3)
    h = model.features(x)
    W = model.head.linear.weight
    cos = F.normalize(h, dim=1) @ F.normalize(W, dim=1).T
    want = F.cross_entropy(cos[:3] / 0.5, y[:3]) + F.cross_entropy(h[3:] @ W.T, y[3:])
    assert uer.loss(uer.forward(b), b).item() == pytest.approx(want.item(), rel=1e-5)
    new_only = Batch(x[:3], y[:3], torch.zeros(3, dtype=torch.long))
    before_new, before_all = uer.loss(uer.forward(new_only), new_only).item(), uer.loss(uer.forward(b), b).item()
    with torch.no_grad():
        W.mul_(torch.tensor([[3.0], [0.5], [1.0]]))  # change the proxies' norms, not their angles
    assert uer.loss(uer.forward(new_only), new_only).item() == pytest.approx(before_new, rel=1e-5)
    assert abs(uer.loss(uer.forward(b), b).item() - before_all) > 1e-3
    assert torch.equal(uer.predict(x).argmax(1), (model.features(x) @ W.T).argmax(1))  # dot-product predictions


# -- HPCR's components -------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _digits():
    return split_stream(digits(), scenario="class", n_experiences=5, seed=0)


def _fit(strategy, seed=0, n_experiences=5, iterations=30):
    full = _digits()
    stream = Stream(full.name, "class", full.experiences[:n_experiences], full.n_classes, full.input_shape)
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "class", hidden=[64])
    strategy.setup(model, "cpu", seed)
    res = train(stream, strategy, lambda p: torch.optim.Adam(p, lr=1e-2), batch_size=10, iterations=iterations,
                seed=seed)
    return strategy, res


def test_hpcr_temperature_schedule_matches_the_code():
    h = HPCR()
    assert h.tau_s(0) == pytest.approx(0.5625) and h.tau_s(250) == pytest.approx(1.8)
    assert h.tau_s(125) == pytest.approx((1.8 - 0.5625) / 2 + 0.5625) and h.tau_s(500) == pytest.approx(0.5625)


def test_each_hpcr_component_switch_changes_the_loss():
    s, _ = _fit(HPCR(mem_size=100, hpcr_sample_min_batch=1), n_experiences=2, iterations=10)
    assert s.experience_.index == 1 and len(s.buffer_) == 100
    e = _digits()[1].train
    batch = Batch(e.x[:10], e.y[:10], torch.ones(10, dtype=torch.long))
    s.context.iteration = 100  # tau_s != 1
    g, gb = s.generator.get_state(), s.buffer_.generator.get_state()

    def loss(**flags):
        for k, v in flags.items():
            setattr(s, k, v)
        s.generator.set_state(g)
        s.buffer_.generator.set_state(gb)
        b = s.augment(batch)
        out = s.loss(s.forward(b), b).item()
        for k in flags:
            setattr(s, k, True)
        return out

    full = loss()
    assert loss() == full  # the same draws give the same loss
    for flag in ("hpcr_contrastive", "hpcr_temperature", "hpcr_distill"):
        assert abs(loss(**{flag: False}) - full) > 1e-4, flag
    plain = loss(hpcr_contrastive=False, hpcr_temperature=False, hpcr_distill=False)
    s.generator.set_state(g)
    s.buffer_.generator.set_state(gb)
    b = s.augment(batch)
    h = torch.cat([s.model.features(b.x), s.model.features(s.view(b.x))])
    pcr = proxy_contrastive_loss(F.normalize(h, dim=1), torch.cat([b.y, b.y]), s.proxies, 0.09)
    assert plain == pytest.approx(pcr.item(), rel=1e-5)  # all components off: PCR's loss
    assert s.buffer_.extras["logits"].shape[1] == 10 and s.buffer_.extras["feats"].shape[1] == 64


# -- the papers' claim, small --------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _acc(name, seed, **params):
    return _fit(STRATEGIES[name](**params), seed)[1].metrics()["average_accuracy"]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", ["scr", "pcr", "hpcr", "uer"])
def test_contrastive_replay_beats_finetuning_in_class_il(name, seed):
    ft = _acc("finetune", seed)
    acc = _acc(name, seed, mem_size=200)
    assert ft < 0.3 and acc > 0.7 and acc > ft + 0.4, (name, acc, ft)


def test_scr_and_pcr_beat_er_on_average():
    er = sum(_acc("er", s, mem_size=200) for s in (0, 1)) / 2
    for name in ("scr", "pcr"):
        acc = sum(_acc(name, s, mem_size=200) for s in (0, 1)) / 2
        assert acc > er + 0.02, (name, acc, er)


# -- bad values ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, key, value", [("scr", "scr_aug_crop", "rotate"), ("pcr", "pcr_temperature", 0.0),
                                              ("hpcr", "hpcr_tau_period", 0), ("uer", "uer_temperature", -1.0),
                                              ("scr", "replay_batch_size", 0), ("hpcr", "hpcr_distill", "maybe")])
def test_bad_values_are_refused(name, key, value):
    with pytest.raises(ConfigError, match=key):
        validate_strategy_params(StrategyConfig(name=name, **{key: value}))


def test_hpcr_refuses_a_temperature_range_upside_down():
    model = build_model("mlp", (4,), 4, "class", hidden=[8])
    with pytest.raises(ConfigError, match="hpcr_tau_min"):
        HPCR(hpcr_tau_min=2.0, hpcr_tau_max=1.0).setup(model)


@pytest.mark.parametrize("name", ["scr", "pcr", "hpcr", "uer"])
def test_a_head_without_one_linear_layer_is_refused(name):
    model = build_model("mlp", (4,), 4, "task", hidden=[8])  # per-task heads: no single proxy matrix
    with pytest.raises(ConfigError, match="head"):
        STRATEGIES[name]().setup(model)
