"""Issue 14, per-step cost of OnPro at batch 10: the faster step computes the numbers of the
former one. The former computation is kept here as the reference: APF's per-pick loop (bit for
bit equal), one augmentation call, backbone forward and projection per view (equal to 1e-5:
merging the forwards changes only the matrix products' summation order), from the same state,
with the same random draws (the generator ends in the same state). The views computed together
equal one augmentation call each, bit for bit."""
import copy

import pytest
import torch
import torch.nn.functional as F

from lifelong.augment import Augment
from lifelong.data import digits
from lifelong.models import build_model
from lifelong.strategies import Batch
from lifelong.strategies._contrastive import supcon_loss
from lifelong.strategies.onpro import _PER_CLASS, OnPro, ope_loss
from lifelong.streams import split_stream
from lifelong.training import train


# -- OnPro -----------------------------------------------------------------------------------------
class _ReferenceOnPro(OnPro):
    """OnPro's loss and APF as first written: a Python loop over the pair picks and one backbone
    forward (and projection) per view."""

    def feedback(self, x, y):
        from lifelong.strategies.onpro import _mix, pair_probabilities
        n_base = int(len(y) * self.onpro_mixup_base_rate)
        partner = torch.randperm(n_base, generator=self.generator).to(self.device)
        lam = self._lam(n_base, beta=False)
        xs = [_mix(x[:n_base], x[:n_base][partner], lam)]
        ya, yb, lams = [y[:n_base]], [y[:n_base][partner]], [lam]
        n_pair = len(y) - n_base
        mem = self.buffer_.get()
        stored = torch.bincount(mem["y"], minlength=len(self.classes_mean_)) > 0
        known = (self.classes_mean_.abs().sum(1) > 0) & stored.to(self.classes_mean_.device)
        classes = known.nonzero().flatten()
        if n_pair > 0 and len(classes) >= 2:
            pairs, p = pair_probabilities(self.classes_mean_[classes])
            drawn = classes[pairs[torch.multinomial(p.cpu(), n_pair, replacement=True, generator=self.generator)]]
            picks = []
            for c in drawn.flatten().tolist():
                where = (mem["y"] == c).nonzero().flatten()
                picks.append(where[torch.randint(len(where), (1,), generator=self.generator).item()])
            picks = torch.stack(picks).view(n_pair, 2)
            lam = self._lam(n_pair, beta=True)
            xs.append(_mix(mem["x"][picks[:, 0]], mem["x"][picks[:, 1]], lam))
            ya.append(mem["y"][picks[:, 0]]), yb.append(mem["y"][picks[:, 1]]), lams.append(lam)
        elif n_pair > 0:
            xs.append(x[n_base:]), ya.append(y[n_base:]), yb.append(y[n_base:]), lams.append(x.new_zeros(n_pair))
        return torch.cat(xs), torch.cat(ya), torch.cat(yb), torch.cat(lams)

    def _two_views(self, x, h=None):
        h1 = self.model.features(x) if h is None else h
        z = F.normalize(self.proj_(torch.cat([h1, self.model.features(self.view(x))])), dim=1)
        return z[:len(x)], z[len(x):]

    def loss(self, logits, batch):
        x, y = batch.x, batch.y
        z1, z2 = self._two_views(x, self.features_of(batch))
        loss = supcon_loss(torch.cat([z1, z2]), torch.cat([y, y]), self.onpro_ins_temperature)
        loss = loss + ope_loss(z1, z2, y, self.onpro_proto_temperature)[0]
        ce_x, ce_a, ce_b, ce_lam = self.view(x), y, y, y.new_zeros(len(y), dtype=torch.float)
        if len(self.buffer_) > 0:
            n_seen = int((torch.bincount(self.buffer_.y[:len(self.buffer_)]) > 0).sum())
            mx, my, _ = self.buffer_.sample(min(self.replay_batch_size or len(y), _PER_CLASS * n_seen), self.generator)
            m1, m2 = self._two_views(mx)
            loss = loss + supcon_loss(torch.cat([m1, m2]), torch.cat([my, my]), self.onpro_ins_temperature)
            seen, means = ope_loss(m1, m2, my, self.onpro_proto_temperature)
            fx, fa, fb, flam = self.feedback(mx, my)
            self.classes_mean_.zero_()[:len(means)] = means
            loss = loss + seen
            ce_x, ce_a, ce_b = torch.cat([ce_x, self.view(fx)]), torch.cat([ce_a, fa]), torch.cat([ce_b, fb])
            ce_lam = torch.cat([ce_lam, flam])
        out = self.masked(self.model.head(self.model.features(ce_x)))
        ce_a, ce_b = F.cross_entropy(out, ce_a, reduction="none"), F.cross_entropy(out, ce_b, reduction="none")
        return loss + ((1 - ce_lam) * ce_a + ce_lam * ce_b).mean()


def _trained_onpro(norm=None, iterations=6):
    """OnPro after a short online run on split digits: a memory of 5 classes, prototypes known."""
    stream = split_stream(digits(), scenario="class", n_experiences=5, seed=0)
    stream.experiences = stream.experiences[:3]
    torch.manual_seed(0)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "class", hidden=[64, 64], norm=norm)
    s = OnPro(mem_size=60).setup(model, "cpu", 0)
    train(stream, s, lambda p: torch.optim.SGD(p, lr=0.05), batch_size=10, iterations=iterations, seed=0)
    model.train()
    return s, stream.experiences[-1].train


def _twin(s):
    """A reference OnPro in the same state as ``s``, on a copy of its model."""
    ref = _ReferenceOnPro(mem_size=s.mem_size).setup(copy.deepcopy(s.model), "cpu", 0)
    ref.load_extra_state(copy.deepcopy(s.extra_state()))
    ref.generator.set_state(s.generator.get_state())
    return ref


def _loss_and_grads(s, batch):
    s.model.zero_grad(set_to_none=True), s.proj_.zero_grad(set_to_none=True)
    loss = s.loss(s.forward(batch), batch)
    loss.backward()
    params = list(s.model.parameters()) + list(s.proj_.parameters())
    return loss.detach(), [p.grad for p in params]


def test_onpro_apf_picks_are_the_per_sample_loops_bit_for_bit():
    s, _ = _trained_onpro()
    ref = _twin(s)
    for _ in range(5):
        mx, my, _ = s.buffer_.sample(40, s.generator)
        rx, ry, _ = ref.buffer_.sample(40, ref.generator)
        got, want = s.feedback(mx, my), ref.feedback(rx, ry)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
        assert (got[1] != got[2]).any()  # pairs of two classes were mixed
        assert torch.equal(s.generator.get_state(), ref.generator.get_state())


@pytest.mark.parametrize("norm", [None, "batch"])
def test_onpro_loss_and_gradients_equal_the_one_forward_per_view_computation(norm):
    s, data = _trained_onpro(norm)
    opt = torch.optim.SGD(list(s.model.parameters()) + list(s.proj_.parameters()), lr=0.05)
    g = torch.Generator().manual_seed(1)
    for step in range(4):  # each comparison from the same state; then the new one takes the step
        ref = _twin(s)
        idx = torch.randperm(len(data), generator=g)[:10]
        batch = Batch(data.x[idx], data.y[idx], torch.zeros(10, dtype=torch.long))
        loss, grads = _loss_and_grads(s, batch)
        ref_loss, ref_grads = _loss_and_grads(ref, batch)
        assert torch.allclose(loss, ref_loss, rtol=1e-5, atol=1e-5), (step, loss, ref_loss)
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(grads, ref_grads))
        assert torch.allclose(s.classes_mean_, ref.classes_mean_, atol=1e-5)
        assert torch.equal(s.generator.get_state(), ref.generator.get_state())  # the same draws, in order
        if norm:  # batch norm: the same forwards in the same order, so the same running statistics
            bn = [(a, b) for a, b in zip(s.model.modules(), ref.model.modules()) if isinstance(a, torch.nn.BatchNorm1d)]
            assert bn and all(torch.equal(a.running_mean, b.running_mean) for a, b in bn)
        opt.step()


def test_onpro_step_makes_one_backbone_forward_and_one_projection_without_batch_norm():
    s, data = _trained_onpro()
    calls = {"backbone": [], "proj": []}
    hooks = [s.model.backbone.register_forward_hook(lambda m, i, o: calls["backbone"].append(len(o))),
             s.proj_.register_forward_hook(lambda m, i, o: calls["proj"].append(len(o)))]
    batch = Batch(data.x[:10], data.y[:10], torch.zeros(10, dtype=torch.long))
    s.loss(s.forward(batch), batch)
    for h in hooks:
        h.remove()
    k = min(64, _PER_CLASS * 6)  # the memory batch: 7 per stored class (6 classes by now), at most 64
    assert calls["backbone"] == [10, 10 + 10 + k + k + k]  # the loop's forward; every view at once
    assert calls["proj"] == [10 + 10 + 2 * k]


# -- augmentation: views drawn one by one, computed together --------------------------------------
@pytest.mark.parametrize("params, channels", [
    ({"crop": "resized", "crop_scale": (0.3, 1.0), "flip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.25}, 1),
    ({}, 3), ({"crop": "pad", "crop_padding": 2}, 3), ({"crop": "none", "grayscale_p": 0.7}, 3)])
def test_augment_views_computed_together_equal_one_call_each_bit_for_bit(params, channels):
    g = torch.Generator().manual_seed(0)
    # three batches with different value ranges (each view is clamped to its own batch's range)
    xs = [torch.rand(n, channels, 8, 8, generator=g) * s - o
          for n, s, o in [(10, 1.0, 0.0), (64, 2.0, 0.5), (7, 0.5, -1.0)]]
    aug = Augment(**params)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    one_by_one = [aug(x, g1) for x in xs]
    together = aug.apply(xs, [aug.draw(x, g2) for x in xs])
    assert all(torch.equal(a, b) for a, b in zip(one_by_one, together))
    assert torch.equal(g1.get_state(), g2.get_state())
    assert not torch.equal(together[0], xs[0])
