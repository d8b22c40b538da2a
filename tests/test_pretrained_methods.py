"""Methods for continual learning from a pre-trained backbone: SLCA, PRD, L2 toward the
pre-trained weights. Behaviour, not just "runs".

The "pre-trained features" are synthetic: Gaussian class clusters (as cached frozen-backbone
features would be) fed to a small trainable MLP backbone, 10 classes in 5 class-IL experiences.
On this stream (SGD, lr 0.01, momentum 0.9, 3 epochs, batch 32; seeds 0 / 1) the final average
accuracy is: fine-tuning .354 / .306, SLCA's slow learner without alignment .761 / .721, SLCA
.969 / .980, PRD .972 / .970, joint training .997 / .996.
"""
import io

import pytest
import torch
import torch.nn.functional as F

from lifelong.config import TrainConfig
from lifelong.models import build_model
from lifelong.runner import make_optimizer_factory
from lifelong.strategies import STRATEGIES, Strategy
from lifelong.strategies.base import Batch
from lifelong.strategies.l2 import L2
from lifelong.strategies.prd import PRD, supcon_loss
from lifelong.strategies.slca import SLCA
from lifelong.streams import Experience, Split, Stream
from lifelong.training import train

torch.set_num_threads(1)

SGD = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9)


def gaussian_stream(seed=0, n_classes=10, d=32, per_exp=2, n_train=100, n_test=100, sep=1.0):
    """Class-IL stream of Gaussian clusters: class c ~ N(mu_c, I), mu_c ~ N(0, sep^2 I)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_classes, d, generator=g) * sep
    exps = []
    for i in range(n_classes // per_exp):
        cls = list(range(i * per_exp, (i + 1) * per_exp))

        def draw(n):
            x = torch.cat([centers[c] + torch.randn(n, d, generator=g) for c in cls])
            return Split(x, torch.tensor(cls).repeat_interleave(n))

        tr, te = draw(n_train), draw(n_test)
        exps.append(Experience(i, i, cls, tr, Split(tr.x[:0], tr.y[:0]), te))
    return Stream("gaussian-features", "class", exps, n_classes, (d,))


def _setup(strategy, stream, seed=0, hidden=(64,)):
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.n_classes, stream.scenario, hidden=list(hidden))
    return strategy.setup(model, "cpu", seed)


def _run(strategy, stream, seed=0, tc=SGD, epochs=3, **kw):
    _setup(strategy, stream, seed, kw.pop("hidden", (64,)))
    return train(stream, strategy, make_optimizer_factory(tc), batch_size=32, epochs=epochs, seed=seed, **kw)


def _avg(res):
    row = res.accuracy_matrix[-1]
    return sum(row) / len(row)


def _round_trip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.fixture(scope="module")
def finetune_acc():
    return {seed: _avg(_run(Strategy(), gaussian_stream(seed), seed)) for seed in (0, 1)}


# -- SLCA: slow learner ------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_slca_param_groups_give_the_backbone_lr_times_scale_and_the_head_the_lr(optimizer):
    stream = gaussian_stream(n_classes=4)
    slca = SLCA(slca_backbone_lr_scale=0.01)
    built, make = [], make_optimizer_factory(TrainConfig(optimizer=optimizer, lr=0.1))

    def factory(params):
        built.append(make(params))
        return built[-1]

    _setup(slca, stream)
    model = slca.model
    grads = []
    slca.before_step = lambda batch: grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                                                   if p.grad is not None})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(Stream(stream.name, "class", stream.experiences[:1], 4, (32,)), slca, factory, batch_size=32, iterations=1)
    opt = built[0]
    groups = {frozenset(id(p) for p in g["params"]): g["lr"] for g in opt.param_groups}
    backbone = frozenset(id(p) for p in model.backbone.parameters())
    head = frozenset(id(p) for p in model.head.parameters())
    assert groups == {backbone: pytest.approx(0.1 * 0.01), head: pytest.approx(0.1)}
    if optimizer == "sgd":  # plain SGD: the step is lr * gradient in each group
        for n, p in model.named_parameters():
            lr = 0.1 if n.startswith("head.") else 0.001
            torch.testing.assert_close(before[n] - p.detach(), lr * grads[0][n])


def test_slca_trains_only_the_current_classes_outputs():
    stream = gaussian_stream(n_classes=4)
    slca = _setup(SLCA(), stream)
    model = slca.model
    for e in stream.experiences[:2]:
        model.observe(e.classes, e.task_id)
    slca.before_experience(stream[1])
    x, y = stream[1].train.x[:16], stream[1].train.y[:16]
    slca.loss(model(x), Batch(x, y, torch.ones_like(y))).backward()
    g = model.head.linear.weight.grad
    assert g[stream[0].classes].abs().sum() == 0 and g[stream[1].classes].abs().sum() > 0


# -- SLCA: classifier alignment ------------------------------------------------------------------
def test_slca_stores_class_statistics_and_samples_from_them():
    stream = gaussian_stream(n_classes=4, d=6)
    slca = _setup(SLCA(slca_ca_epochs=0), stream, hidden=(5,))
    model = slca.model
    for e in stream.experiences:
        model.observe(e.classes, e.task_id)
        slca.before_experience(e)
        slca.after_experience(e)
    assert slca.stat_classes_.tolist() == [0, 1, 2, 3] and slca.stat_groups_.tolist() == [0, 0, 1, 1]
    with torch.no_grad():
        f = model.features(stream[1].train.x[stream[1].train.y == 3]).double()
    torch.testing.assert_close(slca.means_[3], f.mean(0).float())
    torch.testing.assert_close(slca.covs_[3], (torch.cov(f.T) + 1e-4 * torch.eye(5, dtype=torch.float64)).float())
    x, y = slca.sample_features(20000, generator=torch.Generator().manual_seed(0))
    assert y.tolist() == [0] * 20000 + [1] * 20000 + [2] * 20000 + [3] * 20000
    for k in range(4):
        xk = x[y == k].double()
        scale = slca.covs_[k].diagonal().double().sqrt()
        assert ((xk.mean(0) - slca.means_[k]) / scale).abs().max() < 0.05  # ~ 7 standard errors
        torch.testing.assert_close(torch.cov(xk.T), slca.covs_[k].double(), atol=0.04 * scale.max() ** 2, rtol=0.05)


def test_slca_samples_even_from_a_covariance_that_is_not_quite_positive_definite():
    slca = SLCA().setup(build_model("mlp", (3,), 2, "class", hidden=[]))
    v = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))[0]
    good = v @ torch.diag(torch.tensor([4.0, 1.0, 0.25])) @ v.T
    bad = v @ torch.diag(torch.tensor([4.0, 1.0, -1e-6])) @ v.T  # what float32 rounding can leave
    slca.means_, slca.covs_ = torch.zeros(2, 3), torch.stack([good, bad])
    slca.stat_classes_ = torch.tensor([0, 1])
    info = torch.linalg.cholesky_ex(slca.covs_.double())[1]
    assert info[0] == 0 and info[1] != 0  # plain Cholesky fails on the second
    x, y = slca.sample_features(40000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(torch.cov(x[y == 0].T), good, atol=0.08, rtol=0.05)
    torch.testing.assert_close(torch.cov(x[y == 1].T), bad, atol=0.08, rtol=0.05)


def test_slca_logit_normalisation_is_the_mean_of_per_experience_norms():
    slca = SLCA(slca_logit_temperature=0.5)
    logits = torch.tensor([[3.0, 4.0, 0.0, 5.0, 12.0]])
    groups = [torch.tensor([0, 1]), torch.tensor([2, 3, 4])]  # norms 5 and 13
    torch.testing.assert_close(slca._normalised(logits, groups), logits / 9.0 / 0.5, atol=1e-5, rtol=1e-5)
    assert SLCA(slca_logit_temperature=0)._normalised(logits, groups) is logits


def test_slca_alignment_retrains_the_head_on_samples_of_every_seen_class_only():
    stream = gaussian_stream(n_classes=6)
    slca = SLCA(slca_ca_epochs=2, slca_ca_samples=32)
    _run(slca, Stream(stream.name, "class", stream.experiences[:2], 6, (32,)), epochs=1)
    drawn, inner = [], slca.sample_features
    slca.sample_features = lambda n, **kw: drawn.append(inner(n, **kw)) or drawn[-1]
    model = slca.model
    backbone = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    model.observe(stream[2].classes, 2)
    slca.before_experience(stream[2])
    head_before = model.head.linear.weight.detach().clone()
    torch.testing.assert_close(head_before, slca.head_backup_["linear.weight"])  # the recalled head
    slca.after_experience(stream[2])
    assert len(drawn) == 2  # one draw per alignment epoch
    assert torch.bincount(drawn[0][1]).tolist() == [32] * 6
    assert all(torch.equal(p, backbone[n]) for n, p in model.backbone.named_parameters())
    assert not torch.equal(model.head.linear.weight, head_before)
    torch.testing.assert_close(slca.head_backup_["linear.weight"], head_before)  # kept for the recall


@pytest.mark.parametrize("seed", [0, 1])
def test_slca_alignment_beats_the_slow_learner_alone_and_finetuning(finetune_acc, seed):
    stream = gaussian_stream(seed)
    slca = _avg(_run(SLCA(), stream, seed))
    slow = _avg(_run(SLCA(slca_ca_epochs=0), stream, seed))
    assert slca > slow + 0.1 and slow > finetune_acc[seed] + 0.2, (slca, slow, finetune_acc[seed])


def test_slca_state_round_trip():
    stream = gaussian_stream(n_classes=6)
    slca = SLCA(slca_ca_epochs=1)
    _run(slca, stream, epochs=1)
    state = _round_trip({"model": slca.model.state_dict(), "extra": slca.extra_state()})
    fresh = _setup(SLCA(slca_ca_epochs=1), stream, seed=5)
    for e in stream:
        fresh.model.observe(e.classes, e.task_id)
    fresh.model.load_state_dict(state["model"])
    fresh.load_extra_state(state["extra"])
    for a in ("stat_classes_", "stat_groups_", "means_", "covs_"):
        assert torch.equal(getattr(fresh, a), getattr(slca, a))
    x = stream[0].test.x
    assert torch.equal(fresh.predict(x), slca.predict(x))
    for s in (slca, fresh):  # the next experience starts from the same recalled head
        s.before_experience(stream[0])
    assert torch.equal(fresh.model.head.linear.weight, slca.model.head.linear.weight)


# -- PRD ------------------------------------------------------------------------------------------
def _prd_after_one_experience(**kw):
    stream = gaussian_stream(n_classes=6, d=8)
    prd = _setup(PRD(prd_proj_hidden=16, prd_proj_dim=8, **kw), stream, hidden=(12,))
    model = prd.model
    model.observe(stream[0].classes, 0)
    prd.before_experience(stream[0])
    prd.after_experience(stream[0])
    model.observe(stream[1].classes, 1)
    prd.before_experience(stream[1])
    return prd, stream


def _manual_relation_kl(old, new, over, groups):
    """The KL written out with loops: per old prototype over samples, or per sample over prototypes."""
    total = 0.0
    if over == "samples":
        for c in range(old.shape[1]):
            q, p = F.softmax(old[:, c], 0), F.softmax(new[:, c], 0)
            total += (q * (q.log() - p.log())).sum() / old.shape[1]
        return total
    for g in set(groups):
        cols = [j for j, gj in enumerate(groups) if gj == g]
        for i in range(len(old)):
            q, p = F.softmax(old[i, cols], 0), F.softmax(new[i, cols], 0)
            total += (q * (q.log() - p.log())).sum() / len(old)
    return total


@pytest.mark.parametrize("over", ["samples", "prototypes"])
def test_prd_relation_distillation_is_zero_for_the_old_model_and_positive_after_it_moves(over):
    prd, stream = _prd_after_one_experience(prd_distill_over=over, prd_distill_temperature=0.5)
    x = stream[1].train.x[:20]
    assert prd.relation_distillation(x, prd.model.features(x)).item() == 0.0
    with torch.no_grad():
        for p in prd.model.backbone.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        prd.protos_[0].mul_(-1.0)
    h = prd.model.features(x)
    got = prd.relation_distillation(x, h)
    old_cls = prd.old_classes_.tolist()
    assert old_cls == stream[0].classes
    with torch.no_grad():
        old = prd.old_model_.features(x) @ F.normalize(prd.old_protos_[old_cls], dim=1).T / 0.5
        new = h @ F.normalize(prd.protos_[old_cls], dim=1).T / 0.5
    want = _manual_relation_kl(old, new, over, prd.group_[old_cls].tolist())
    assert got.item() > 1e-3
    torch.testing.assert_close(got.detach(), torch.as_tensor(want, dtype=got.dtype), rtol=1e-4, atol=1e-6)
    got.backward()  # it trains the backbone and the old prototypes
    assert prd.protos_.grad[old_cls].abs().sum() > 0
    assert all(p.grad is not None for p in prd.model.backbone.parameters())


def test_prd_prototype_loss_moves_only_the_current_classes_prototypes():
    prd, stream = _prd_after_one_experience()
    d0, d1 = stream[0].train, stream[1].train
    # samples of both current classes and (as if replayed) of an old class
    x = torch.cat([d1.x[:5], d1.x[-5:], d0.x[:10]])
    y = torch.cat([d1.y[:5], d1.y[-5:], d0.y[:10]])
    h = prd.model.features(x)
    loss = prd.prototype_loss(h, y)
    cur = y[:10]
    want = (1 - F.cosine_similarity(h[:10].detach(), prd.protos_[cur], dim=1)).mean()
    torch.testing.assert_close(loss, want)
    loss.backward()
    g = prd.protos_.grad
    assert g[stream[1].classes].abs().sum(1).gt(0).all()
    others = [c for c in range(6) if c not in stream[1].classes]
    assert g[others].abs().sum() == 0
    assert all(p.grad is None for p in prd.model.parameters())  # features are a stop-gradient


def test_supcon_loss_matches_the_written_out_formula():
    torch.manual_seed(0)
    z = F.normalize(torch.randn(6, 4), dim=1)
    y = torch.tensor([0, 1, 0, 2, 1, 0])
    want = 0.0
    for i in range(6):
        others = [j for j in range(6) if j != i]
        log_den = torch.logsumexp(torch.stack([z[i] @ z[j] / 0.1 for j in others]), 0)
        pos = [j for j in others if y[j] == y[i]]
        if pos:
            want += -(0.1 / 0.07) * sum(z[i] @ z[j] / 0.1 - log_den for j in pos) / len(pos)
    torch.testing.assert_close(supcon_loss(z, y, 0.1), want / 5)  # 5 anchors have a positive


def test_prd_predicts_the_nearest_seen_prototype():
    prd, stream = _prd_after_one_experience()
    x = stream[0].test.x[:8]
    scores = prd.predict(x)
    unseen = [c for c in range(6) if c not in stream[0].classes + stream[1].classes]
    assert torch.isinf(scores[:, unseen]).all()
    with torch.no_grad():
        cos = F.cosine_similarity(prd.model.features(x)[:, None], prd.protos_[None], dim=2)
    seen = stream[0].classes + stream[1].classes
    torch.testing.assert_close(scores[:, seen], cos[:, seen])


def test_prd_augmentation_is_random_label_free_and_leaves_the_input_alone():
    prd, stream = _prd_after_one_experience()
    x = stream[0].train.x[:8].clone()
    a, b = prd.augment_view(x), prd.augment_view(x)
    assert torch.equal(x, stream[0].train.x[:8]) and a.shape == x.shape and not torch.equal(a, b)
    img = torch.rand(4, 1, 16, 16)
    prd.prd_aug_drop = prd.prd_aug_noise = 0.0
    view = prd.augment_view(img)  # translation only: each image moved by up to 16/8 = 2 pixels, zero-filled
    padded = F.pad(img, (2, 2, 2, 2))
    for i in range(4):
        shifts = [(dy, dx) for dy in range(5) for dx in range(5)
                  if torch.equal(view[i], padded[i, :, dy:dy + 16, dx:dx + 16])]
        assert shifts, i
    assert not torch.equal(view, img)


@pytest.mark.parametrize("seed", [0, 1])
def test_prd_beats_finetuning_in_class_il(finetune_acc, seed):
    acc = _avg(_run(PRD(), gaussian_stream(seed), seed))
    assert acc > finetune_acc[seed] + 0.3, (acc, finetune_acc[seed])


def test_prd_state_round_trip():
    stream = gaussian_stream(n_classes=6, d=8)
    prd = PRD(prd_proj_hidden=16, prd_proj_dim=8)
    _run(prd, stream, epochs=1, hidden=(12,))
    state = _round_trip({"model": prd.model.state_dict(), "extra": prd.extra_state()})
    fresh = _setup(PRD(prd_proj_hidden=16, prd_proj_dim=8), stream, seed=7, hidden=(12,))
    for e in stream:
        fresh.model.observe(e.classes, e.task_id)
    fresh.model.load_state_dict(state["model"])
    fresh.load_extra_state(state["extra"])
    x = stream[2].test.x
    assert torch.equal(fresh.predict(x), prd.predict(x))
    for s in (prd, fresh):
        s.before_experience(stream[2])
        with torch.no_grad():  # move away from the old model (its copy at the end of training)
            for p in s.model.parameters():
                p.add_(0.05)
    with torch.no_grad():
        want = prd.relation_distillation(x, prd.model.features(x))
        got = fresh.relation_distillation(x, fresh.model.features(x))
        assert torch.equal(fresh.proj_(x.new_ones(1, 12)), prd.proj_(x.new_ones(1, 12)))
    assert want > 0 and torch.equal(got, want)


# -- L2 toward the pre-trained weights ------------------------------------------------------------
def test_l2_pretrained_anchor_is_the_setup_backbone_and_the_penalty_grows_from_zero():
    stream = gaussian_stream(n_classes=4, d=5)
    l2 = _setup(L2(l2_lambda=2.0, l2_anchor="pretrained"), stream, hidden=(3,))
    model = l2.model
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert set(l2.anchor_) == {n for n, _ in model.named_parameters() if n.startswith("backbone.")}
    assert all(torch.equal(l2.anchor_[n], init[n]) for n in l2.anchor_)
    assert l2.penalty(None, None).item() == 0.0  # step 0: at the anchor
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.add_(0.5 if n.startswith("backbone.") else 3.0)  # the head is not anchored
    n_backbone = sum(p.numel() for p in model.backbone.parameters())  # 5*3 + 3 = 18
    assert n_backbone == 18
    torch.testing.assert_close(l2.penalty(None, None), torch.tensor(2.0 / 2 * 18 * 0.25))  # 4.5
    l2.after_experience(None)  # the anchor never moves
    assert all(torch.equal(l2.anchor_[n], init[n]) for n in l2.anchor_)


def test_l2_pretrained_penalty_is_on_from_the_first_step_of_training():
    stream = gaussian_stream(n_classes=4)
    l2 = L2(l2_lambda=1.0, l2_anchor="pretrained")
    log, inner = [], l2.penalty
    l2.penalty = lambda logits, batch: log.append(float(inner(logits, batch).detach())) or inner(logits, batch)
    _run(l2, stream, epochs=1)
    steps = len(log) // 2
    assert log[0] == 0.0 and all(p > 0 for p in log[1:])
    assert log[steps - 1] > log[1]  # grows as the backbone leaves the pre-trained weights
    assert log[steps] > 0  # and stays on in the next experience (never re-anchored)


# -- parameters -----------------------------------------------------------------------------------
@pytest.mark.parametrize("make, match", [
    (lambda: SLCA(slca_backbone_lr_scale=-0.1), "slca_backbone_lr_scale"),
    (lambda: SLCA(slca_ca_epochs=-1), "slca_ca_epochs"),
    (lambda: SLCA(slca_ca_samples=1), "slca_ca_samples"),
    (lambda: SLCA(slca_ca_lr=0), "slca_ca_lr"),
    (lambda: SLCA(slca_logit_temperature=-1), "slca_logit_temperature"),
    (lambda: PRD(prd_supcon_temperature=0), "prd_supcon_temperature"),
    (lambda: PRD(prd_distill_over="batch"), "prd_distill_over"),
    (lambda: PRD(prd_distill_temperature=0), "prd_distill_temperature"),
    (lambda: PRD(prd_proj_dim=0), "prd_proj_dim"),
    (lambda: PRD(prd_aug_drop=1.0), "prd_aug_drop"),
    (lambda: PRD(prd_proto_weight=-1), "prd_proto_weight"),
    (lambda: L2(l2_anchor="imagenet"), "l2_anchor"),
])
def test_bad_parameters_raise_one_clear_error(make, match):
    stream = gaussian_stream(n_classes=4)
    with pytest.raises(ValueError, match=match):
        _setup(make(), stream)


def test_parameter_names_do_not_clash_with_other_methods():
    mine = {n: set(STRATEGIES[n].get_param_names()) for n in ("slca", "prd")}
    for name, cls in STRATEGIES.items():
        for m, params in mine.items():
            if name != m:
                assert not params & set(cls.get_param_names()), (m, name)
