"""Replay: the buffers' sampling guarantees, herding, A-GEM's projection, state round trips,
and the behaviour the papers claim on Split MNIST (replay beats fine-tuning)."""
import functools
import io

import pytest
import torch

from lifelong.buffers import ClassBalancedBuffer, ReservoirBuffer, make_buffer
from lifelong.data import digits, mnist
from lifelong.models import build_model
from lifelong.strategies import STRATEGIES, Batch, Compose
from lifelong.strategies.agem import AGEM
from lifelong.strategies.er import ER
from lifelong.strategies.icarl import ICaRL, herding
from lifelong.streams import Stream, split_stream
from lifelong.training import evaluate, train


def _ids(n, start=0):
    """A batch whose x encodes the sample id, so stored rows can be checked against y and t."""
    ids = torch.arange(start, start + n)
    return ids.float().unsqueeze(1).repeat(1, 3), ids, torch.zeros(n, dtype=torch.long)


# -- (a) reservoir -------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [7, 64])  # 64 > capacity: several samples of a batch hit one slot
def test_reservoir_keeps_every_sample_with_probability_capacity_over_n(batch):
    N, cap, runs = 512, 50, 300
    hits = torch.zeros(N)
    for seed in range(runs):
        buf = ReservoirBuffer(cap, seed=seed)
        for s in range(0, N, batch):
            x, y, t = _ids(min(batch, N - s), s)
            buf.add(x, y, t)
        assert len(buf) == cap and buf.n_seen == N
        stored = buf.y[:len(buf)]
        assert len(torch.unique(stored)) == cap                     # no sample stored twice
        assert torch.equal(buf.x[:cap, 0].long(), stored)           # rows stay aligned
        hits[stored] += 1
    freq, p = hits / runs, cap / N
    sd = (p * (1 - p) / runs) ** 0.5
    assert (freq - p).abs().max() < 5 * sd                          # every single sample
    assert abs(freq[:N // 8].mean() - p) < 0.02                     # early samples: no bias
    assert abs(freq[-N // 8:].mean() - p) < 0.02                    # late samples: no bias


def test_reservoir_fills_in_order_then_never_reallocates():
    buf = ReservoirBuffer(100, seed=0)
    x, y, t = _ids(30)
    buf.add(x, y, t, logits=torch.randn(30, 5))
    assert len(buf) == 30 and torch.equal(buf.y[:30], y)
    ptrs = [buf.x.data_ptr(), buf.y.data_ptr(), buf.t.data_ptr(), buf.extras["logits"].data_ptr()]
    assert buf.x.shape == (100, 3) and buf.extras["logits"].shape == (100, 5)
    for s in range(30, 5000, 30):
        x, y, t = _ids(30, s)
        buf.add(x, y, t, logits=y.float().unsqueeze(1).repeat(1, 5))
    assert [buf.x.data_ptr(), buf.y.data_ptr(), buf.t.data_ptr(), buf.extras["logits"].data_ptr()] == ptrs
    assert len(buf) == 100
    late = buf.y[:100] >= 30
    assert torch.equal(buf.extras["logits"][:100][late, 0].long(), buf.y[:100][late])
    with pytest.raises(ValueError):
        buf.add(x, y, t)  # extras must stay the same


def test_reservoir_sample_is_distinct_and_bounded():
    buf = ReservoirBuffer(20, seed=0)
    assert len(buf) == 0
    buf.add(*_ids(12))
    x, y, t = buf.sample(50, torch.Generator().manual_seed(0))
    assert len(y) == 12 and len(torch.unique(y)) == 12
    x, y, t = buf.sample(5)
    assert len(y) == 5 and torch.equal(x[:, 0].long(), y)


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_buffer_state_dict_round_trip(policy):
    buf = make_buffer(policy, 40, seed=3)
    for s in range(0, 300, 25):
        x, y, t = _ids(25, s)
        buf.add(x, y % 4, t)
    f = io.BytesIO()
    torch.save(buf.state_dict(), f)
    f.seek(0)
    other = make_buffer(policy, 1)
    other.load_state_dict(torch.load(f, weights_only=True))
    for k, v in buf.get().items():
        assert torch.equal(other.get()[k], v)
    assert len(other) == len(buf) and other.n_seen == buf.n_seen
    x, y, t = _ids(25, 1000)            # same future: the generator state travels too
    buf.add(x, y % 4, t)
    other.add(x, y % 4, t)
    assert torch.equal(buf.y, other.y) and torch.equal(buf.x, other.x)
    assert torch.equal(buf.sample(10)[0], other.sample(10)[0])


# -- (b) class-balanced -------------------------------------------------------------------
def _experience(classes, n_per_class=100, task=0):
    y = torch.tensor(classes).repeat_interleave(n_per_class)
    x = (y * 1000 + torch.arange(len(y))).float().unsqueeze(1)
    return x, y, torch.full_like(y, task)


@pytest.mark.parametrize("online", [False, True])
def test_class_balanced_equal_share_after_each_experience(online):
    buf = ClassBalancedBuffer(60, seed=0)
    expected = [{0: 30, 1: 30}, {c: 15 for c in range(4)}, {c: 10 for c in range(6)}]
    for e, classes in enumerate([[0, 1], [2, 3], [4, 5]]):
        x, y, t = _experience(classes)
        if online:  # minibatches of mixed classes
            perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(e))
            for s in range(0, len(y), 16):
                i = perm[s:s + 16]
                buf.add(x[i], y[i], t[i])
                assert len(buf) <= 60
        else:       # the whole experience at its end
            buf.add(x, y, t)
        assert {c: n for (_, c), n in buf.counts().items()} == expected[e]
        assert len(buf) == sum(expected[e].values()) <= 60
        assert torch.equal((buf.x[:len(buf), 0] // 1000).long(), buf.y[:len(buf)])  # rows aligned
        assert len(torch.unique(buf.x[:len(buf), 0])) == len(buf)


def test_class_balanced_quota_rounds_down_and_never_reallocates():
    buf = ClassBalancedBuffer(50, seed=0)
    buf.add(*_experience([0]))
    ptr = buf.x.data_ptr()
    assert buf.counts() == {(0, 0): 50}
    buf.add(*_experience([1, 2]))
    assert sorted(buf.counts().values()) == [16, 16, 16] and len(buf) == 48
    assert buf.x.data_ptr() == ptr and buf.x.shape[0] == 50


def test_class_balanced_per_class_quota_grows_with_classes():
    buf = ClassBalancedBuffer(per_class=7, seed=0)
    for e, classes in enumerate([[0, 1], [2, 3], [4, 5]]):
        buf.add(*_experience(classes))
        assert buf.counts() == {(0, c): 7 for c in range(2 * (e + 1))}
        assert len(buf) == 14 * (e + 1) <= buf.capacity


def test_class_balanced_counts_contexts_separately():
    """Domain-IL: every context reuses labels 0 and 1; each (context, label) keeps its share."""
    buf = make_buffer("class_balanced", 40, mem_per_class=5)
    for task in range(3):
        buf.add(*_experience([0, 1], task=task))
    assert buf.counts() == {(task, c): 5 for task in range(3) for c in (0, 1)}


def test_class_balanced_keeps_a_uniform_subset_within_each_class():
    runs, hits = 300, torch.zeros(2, 100)
    for seed in range(runs):
        buf = ClassBalancedBuffer(20, seed=seed)
        x, y, t = _experience([0], 100)
        for s in range(0, 100, 9):
            buf.add(x[s:s + 9], y[s:s + 9], t[s:s + 9])
        hits[0, (buf.x[:len(buf), 0] % 1000).long()] += 1        # 20 of 100
        buf.add(*_experience([1], 100))                           # quota 20 -> 10
        keep = buf.y[:len(buf)] == 0
        hits[1, (buf.x[:len(buf), 0][keep] % 1000).long()] += 1  # 10 of 100
    for row, p in ((0, 0.2), (1, 0.1)):
        sd = (p * (1 - p) / runs) ** 0.5
        assert ((hits[row] / runs) - p).abs().max() < 5 * sd


# -- (c) herding ----------------------------------------------------------------------------
def test_herding_picks_the_known_greedy_order():
    # mean 3.2: first 3; then (3+x)/2 ~ 3.2 -> 2; (5+x)/3 -> 1; (6+x)/4 -> 10; then 0.
    f = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
    assert herding(f, 5).tolist() == [3, 2, 1, 4, 0]
    assert herding(f, 2).tolist() == [3, 2]
    assert herding(f, 99).tolist() == [3, 2, 1, 4, 0]  # never repeats a sample


def test_herding_first_pick_is_the_sample_nearest_the_mean():
    g = torch.Generator().manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(200, 8, generator=g), dim=1)
    first = herding(f, 1).item()
    assert first == (f - f.mean(0)).norm(dim=1).argmin().item()
    idx = herding(f, 20)
    rnd = torch.randperm(200, generator=g)[:20]
    assert (f[idx].mean(0) - f.mean(0)).norm() < (f[rnd].mean(0) - f.mean(0)).norm()


# -- strategies on a tiny stream --------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _digits(scenario):
    return split_stream(digits(), scenario=scenario, n_experiences=5, seed=0)


def _fit(strategy, scenario="class", iterations=15, seed=0, n_experiences=5):
    full = _digits(scenario)
    stream = Stream(full.name, scenario, full.experiences[:n_experiences], full.n_classes, full.input_shape)
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.n_classes, scenario, hidden=[32])
    strategy.setup(model, "cpu", seed)
    train(stream, strategy, lambda p: torch.optim.Adam(p, lr=1e-2), batch_size=16, iterations=iterations,
          seed=seed)
    return strategy, stream


def test_er_replays_a_batch_of_the_stream_size_and_stores_only_stream_samples():
    er, stream = _fit(ER(mem_size=50))
    assert len(er.buffer_) == 50 and er.buffer_.n_seen == 5 * 15 * 16
    b = Batch(*(_digits("class")[4].train.x[:16], _digits("class")[4].train.y[:16], torch.full((16,), 4)))
    out = er.augment(b)
    assert len(out.y) == 32 and out.n_new == 16
    assert len(ER(replay_batch_size=5).setup(er.model).augment(b).y) == 16  # empty buffer: unchanged
    er.replay_batch_size = 5
    assert len(er.augment(b).y) == 21


def test_er_class_balanced_fills_at_experience_end():
    er, stream = _fit(ER(mem_per_class=6))
    assert er.buffer_.n_seen == sum(len(e.train) for e in stream)
    assert {c for (_, c) in er.buffer_.counts()} == set(range(10))
    assert set(er.buffer_.counts().values()) == {6}


def test_agem_never_trains_on_memory_and_projects_violating_gradients():
    agem, stream = _fit(AGEM(mem_per_class=3))
    assert len(agem.buffer_) == 30
    model = agem.model
    b = Batch(stream[4].train.x[:16], stream[4].train.y[:16], torch.full((16,), 4))
    assert agem.augment(b) is b
    params = [p for p in model.parameters() if p.requires_grad]

    def flat(gs):
        return torch.cat([g.flatten() for g in gs])

    x, y, t = agem.buffer_.get()["x"], agem.buffer_.get()["y"], agem.buffer_.get()["t"]
    ref = flat(torch.autograd.grad(agem.loss(model(x, t), Batch(x, y, t)), params))
    found = {True: False, False: False}
    for s in range(0, 160, 16):  # some batches conflict with the memory, some do not
        b = Batch(stream[4].train.x[s:s + 16], stream[4].train.y[s:s + 16], torch.full((16,), 4))
        model.zero_grad()
        agem.loss(model(b.x, b.t), b).backward()
        g = flat([p.grad for p in params]).clone()
        agem.before_step(b)  # samples all 30 stored (< agem_sample_size): the same g_ref
        new = flat([p.grad for p in params])
        violated = bool(g @ ref < 0)
        found[violated] = True
        if violated:
            assert abs((new @ ref).item()) < 1e-4 * (g.norm() * ref.norm()).item()
            assert torch.allclose(new, g - (g @ ref) / (ref @ ref) * ref, atol=1e-6)
        else:
            assert torch.equal(new, g)
    assert found[True], "no batch conflicted with the memory: the test saw no projection"


def test_icarl_memory_split_herding_prefix_and_nearest_mean_scores():
    icarl, stream = _fit(ICaRL(mem_size=40), iterations=5)
    e = icarl.exemplars_
    counts = torch.bincount(e["y"], minlength=10)
    assert counts.tolist() == [4] * 10                       # 40 // 10 classes
    assert sorted(e["rank"].tolist()) == sorted(list(range(4)) * 10)
    train_x = torch.cat([s.train.x for s in stream])
    assert all((train_x == row).flatten(1).all(1).any() for row in e["x"][:5])
    x = stream[0].test.x[:7]
    scores = icarl.predict(x)
    assert scores.shape == (7, 10) and torch.isfinite(scores).all()
    assert torch.allclose(icarl.class_means_.norm(dim=1), torch.ones(10))
    # Shrinking keeps each class's first exemplars (herding is a prefix order).
    icarl2 = ICaRL(mem_size=40).setup(build_model("mlp", stream.input_shape, 10, "class", hidden=[32]))
    icarl2.model.observe(stream[0].classes, 0)
    icarl2.after_experience(stream[0])
    before = {c: icarl2.exemplars_["x"][icarl2.exemplars_["y"] == c] for c in stream[0].classes}
    assert all(len(v) == 20 for v in before.values())
    scores = icarl2.predict(stream[0].test.x[:3])
    assert torch.isinf(scores[:, 2:]).all() and torch.isfinite(scores[:, :2]).all()
    icarl2.model.observe(stream[1].classes, 1)
    icarl2.after_experience(stream[1])
    for c, xs in before.items():
        assert torch.equal(icarl2.exemplars_["x"][icarl2.exemplars_["y"] == c], xs[:10])


def test_icarl_loss_distils_old_classes_and_uses_labels_for_new():
    icarl, _ = _fit(ICaRL(mem_size=40), iterations=5, n_experiences=4)
    last = _digits("class")[4]
    model = icarl.model
    model.observe(last.classes, 4)
    b = Batch(last.train.x[:8], last.train.y[:8], torch.full((8,), 4))
    logits = model(b.x, b.t)
    assert torch.isfinite(logits).all()
    old = torch.sigmoid(icarl.old_model_(b.x, b.t))
    old_cols = torch.isfinite(icarl.old_model_(b.x, b.t)).all(0)
    assert old_cols.sum() == 8  # the four previous experiences; classes 8, 9 are new
    target = torch.nn.functional.one_hot(b.y, 10).float()
    target[:, old_cols] = old[:, old_cols]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    assert torch.allclose(icarl.loss(logits, b), bce.sum(1).mean())


# -- (e) extra_state round trip ---------------------------------------------------------------
def _round_trip(make, scenario):
    a, stream = _fit(make(), scenario)
    f = io.BytesIO()
    torch.save({"model": a.model.state_dict(), "extra": a.extra_state()}, f)
    f.seek(0)
    state = torch.load(f, weights_only=True)  # plain tensors and dicts only
    torch.manual_seed(99)
    model = build_model("mlp", stream.input_shape, stream.n_classes, scenario, hidden=[32])
    for e in stream:
        model.observe(e.classes, e.task_id)
    model.load_state_dict(state["model"])
    b = make().setup(model, "cpu", 0)
    b.load_extra_state(state["extra"])
    x = stream[0].test.x[:50]
    assert torch.equal(a.predict(x), b.predict(x))
    assert evaluate(a, stream.experiences) == evaluate(b, stream.experiences)
    return a, b, stream


@pytest.mark.parametrize("make, scenario", [
    (lambda: ER(mem_size=30), "class"),
    (lambda: ER(mem_policy="class_balanced", mem_size=30), "domain"),
    (lambda: ER(mem_per_class=4), "task"),
    (lambda: AGEM(mem_per_class=4), "task"),
    (lambda: AGEM(mem_policy="reservoir", mem_size=30), "domain"),
])
def test_replay_state_round_trip(make, scenario):
    a, b, stream = _round_trip(make, scenario)
    for k, v in a.buffer_.get().items():
        assert torch.equal(b.buffer_.get()[k], v)
    batch = Batch(stream[0].train.x[:8], stream[0].train.y[:8], torch.zeros(8, dtype=torch.long))
    assert torch.equal(a.augment(batch).y, b.augment(batch).y)  # same next replay draw


def test_icarl_state_round_trip():
    a, b, stream = _round_trip(lambda: ICaRL(mem_size=30), "class")
    for k, v in a.exemplars_.items():
        assert torch.equal(b.exemplars_[k], v)
    batch = Batch(stream[4].train.x[:8], stream[4].train.y[:8], torch.full((8,), 4))
    logits = b.model(batch.x, batch.t)
    assert torch.equal(a.loss(logits, batch), b.loss(logits, batch))  # same old model


# -- (f) composition -----------------------------------------------------------------------
@pytest.mark.parametrize("other", ["ewc", "lwf"])
def test_er_composes_with_a_regulariser(other):
    if other not in STRATEGIES:
        pytest.skip(f"{other} is not implemented")
    make = lambda: Compose(ER(mem_size=30), STRATEGIES[other]())  # noqa: E731
    a, b, _ = _round_trip(make, "class")
    assert len(a.members[0].buffer_) == 30
    params = a.get_params()
    assert params["mem_size"] == 30 and set(STRATEGIES[other]().get_params()) <= set(params)


# -- (d) the papers' claims on Split MNIST -----------------------------------------------------
# van de Ven et al.'s Split MNIST set-up (batch 128, Adam 1e-3, MLP 784-400-400) with 100 iterations per
# experience instead of 2000, to fit the time budget; the margins below hold with room to spare.
ITERS = 100


@functools.lru_cache(maxsize=None)
def _split_mnist(scenario):
    return split_stream(mnist(), scenario=scenario, n_experiences=5, seed=0)


@functools.lru_cache(maxsize=None)
def _avg_acc(name, scenario, seed, **params):
    stream = _split_mnist(scenario)
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.n_classes, scenario, hidden=[400, 400])
    strategy = STRATEGIES[name](**params).setup(model, "cpu", seed)
    res = train(stream, strategy, lambda p: torch.optim.Adam(p, lr=1e-3), batch_size=128, iterations=ITERS,
                seed=seed)
    return res.metrics()["average_accuracy"]


def _finetune(scenario, seed):
    return _avg_acc("finetune", scenario, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", ["er", "icarl"])
def test_replay_beats_finetuning_in_class_il(name, seed):
    ft = _finetune("class", seed)
    acc = _avg_acc(name, "class", seed)  # defaults: 2000 samples (reservoir / herding)
    assert ft < 0.3  # fine-tuning forgets everything but the last experience
    assert acc > 0.6 and acc > ft + 0.4, (name, acc, ft)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_agem_beats_finetuning_in_domain_il(seed):
    # van de Ven et al. 2022 (Split MNIST): A-GEM 98.6 task / 64 domain / 23 class-IL; domain-IL
    # gives the widest margin over fine-tuning here (task-IL fine-tuning is already ~95).
    ft = _finetune("domain", seed)
    acc = _avg_acc("agem", "domain", seed, mem_per_class=100)
    assert acc > ft + 0.1, (acc, ft)


def test_er_new_weight_weighs_new_and_replayed_losses():
    import torch.nn.functional as F

    from lifelong.strategies.base import Batch
    from lifelong.strategies.er import ER

    torch.manual_seed(0)
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    b = Batch(logits, y, torch.zeros(6, dtype=torch.long), n_new=2)
    s = ER(er_new_weight=0.3)
    want = 0.3 * F.cross_entropy(logits[:2], y[:2]) + 0.7 * F.cross_entropy(logits[2:], y[2:])
    assert torch.allclose(s.loss(logits, b), want)
    assert torch.allclose(ER().loss(logits, b), F.cross_entropy(logits, y))
