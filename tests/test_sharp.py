"""SHARP: masks keep their density through prune/regrow; stored hidden activations replayed
through the upper layers give the full model's logits, and stay valid while other layers learn;
the k-NN scores are the hand-computed neighbour vote; unit ages grow at each boundary and gate
updates (and keep the stored k-NN representations exact); it beats fine-tuning and ER in online
class-IL on split digits; bad values and backbones are refused."""
import pytest
import torch

from lifelong.data import digits
from lifelong.errors import ConfigError
from lifelong.models import build_model
from lifelong.runner import run
from lifelong.strategies import STRATEGIES
from lifelong.strategies.base import Batch
from lifelong.strategies.sharp import SHARP
from lifelong.streams import split_stream
from lifelong.training import train

SMALL = {"benchmark": {"name": "split-digits", "scenario": "class"}, "model": {"hidden": [32]},
         "eval": {"every": None}, "train": {"optimizer": "sgd", "lr": 0.05}}


def _stream():
    return split_stream(digits(), scenario="class", n_experiences=5, seed=0)


def _setup(stream, hidden, seed=0, **kw):
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "class", hidden=hidden)
    return model, SHARP(**kw).setup(model, "cpu", seed)


def _sgd(p):
    return torch.optim.SGD(p, lr=0.1)


def test_masks_keep_their_density_through_prune_and_regrow():
    stream = _stream()
    model, s = _setup(stream, [32, 32], sharp_density=0.3, sharp_rewire_every=1, sharp_rewire_fraction=0.3)
    before = [m.clone() for m in s.masks_]
    want = [round(0.3 * m.numel()) for m in before]
    assert [int(m.sum()) for m in before] == want
    train(split_stream(digits(), scenario="class", n_experiences=5, seed=0), s, _sgd, batch_size=10, epochs=1)
    assert [int(m.sum()) for m in s.masks_] == want  # same number of connections per layer
    assert all((m != b).any() for m, b in zip(s.masks_, before))  # ... but rewired
    for lin, m in zip(s._linears, s.masks_):
        assert (lin.weight[~m] == 0).all()  # pruned connections carry no weight
    assert (s.ages_[0] > 0).sum() > 0  # units were made stable at the boundaries


def _steps(s, model, exp, n=60):
    """SGD steps on ``exp`` through the strategy's hooks, as the loop does."""
    opt = _sgd(model.parameters())
    for i in range(0, n, 10):
        batch = Batch(exp.train.x[i:i + 10], exp.train.y[i:i + 10], torch.zeros(10, dtype=torch.long))
        batch = s.augment(batch)
        logits = s.forward(batch)
        loss = s.loss(logits, batch) + s.penalty(logits, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        s.after_step(batch, logits.detach())


def test_replayed_activations_give_the_full_models_logits_and_stay_valid():
    stream = _stream()
    model, s = _setup(stream, [32, 32], sharp_stable_fraction=1.0, sharp_per_class=20)
    exp0, exp1 = stream.experiences[:2]
    model.observe(exp0.classes, 0)
    s.after_experience(exp0)  # stores the activations after the first hidden layer
    assert s.mem_h_.shape == (40, 32) and sorted(s.mem_y_.unique().tolist()) == exp0.classes
    x = exp0.train.x
    with torch.no_grad():
        h = s.lower(x)
        match = torch.cdist(s.mem_h_, h).argmin(1)  # which training input each stored row came from
        assert torch.equal(s.mem_h_, h[match])
        assert torch.allclose(s.upper(s.mem_h_), model(x[match]), atol=1e-6)
    upper_before = model.backbone.net[3].weight.clone()
    # SGD steps on the next experience with replay: every unit below the replay point is stable,
    # so the stored activations stay the model's activations of those inputs while the layers
    # above learn
    model.observe(exp1.classes, 0)
    _steps(s, model, exp1, n=100)
    with torch.no_grad():
        assert torch.allclose(s.lower(x[match]), s.mem_h_, atol=1e-6)
    assert not torch.equal(model.backbone.net[3].weight, upper_before)


def test_knn_prediction_is_the_hand_computed_neighbour_vote():
    stream = _stream()
    model, s = _setup(stream, [2])
    x = stream.experiences[0].test.x[:1]
    assert torch.equal(s.predict(x), model(x))  # nothing stored yet: the head predicts
    # query (3, 4) -> (.6, .8); stored, normalised on their class's units: e (5, 0) of class 2 compared on
    # unit 0 only: distance 0; d (4, 3), class 0: .283; c (1, 3), class 1: .321; b (0, 1), class 1: .632;
    # a (1, 0), class 0: .894
    s.knn_h_ = torch.tensor([[1., 0.], [0., 1.], [1., 3.], [4., 3.], [5., 0.]])
    s.knn_y_ = torch.tensor([0, 1, 1, 0, 2])
    s.knn_mask_ = torch.tensor([[True, True]] * 4 + [[True, False]])
    q = torch.tensor([[3., 4.]])
    d = {0: 0.08 ** 0.5, 1: 0.1029 ** 0.5, 2: 0.0}  # distance to each class's nearest stored sample
    for k, votes, want in [(3, {0: 1, 1: 1, 2: 1}, 2), (4, {0: 1, 1: 2, 2: 1}, 1), (5, {0: 2, 1: 2, 2: 1}, 0)]:
        s.sharp_knn_k = k
        scores = s.knn_scores(q, 10)
        assert int(scores.argmax()) == want  # ties: the class with the nearer sample
        expected = torch.tensor([votes[c] - 1e-3 * d[c] for c in range(3)])
        assert torch.allclose(scores[0, :3], expected, atol=1e-5)
        assert torch.isinf(scores[0, 3:]).all() and (scores[0, 3:] < 0).all()  # classes not stored


def test_unit_ages_grow_at_each_boundary_and_freeze_units_above_the_replay_point_when_old():
    stream = _stream()
    model, s = _setup(stream, [16, 16], sharp_stable_fraction=0.25, sharp_rewire_fraction=0)
    exps = stream.experiences
    model.observe(exps[0].classes, 0)
    _steps(s, model, exps[0])
    s.after_experience(exps[0])
    lower, upper = s._linears
    assert [int((a == 1).sum()) for a in s.ages_] == [4, 4] and all(int((a > 1).sum()) == 0 for a in s.ages_)
    assert s.frozen(0).sum() == 4 and s.frozen(1).sum() == 0  # below the replay point: frozen at once
    young = s.ages_[1] == 1
    w0, w1 = lower.weight.detach().clone(), upper.weight.detach().clone()
    model.observe(exps[1].classes, 0)
    _steps(s, model, exps[1])
    assert torch.equal(lower.weight[s.frozen(0)], w0[s.frozen(0)])
    assert not torch.equal(upper.weight[young], w1[young])  # age 1 <= sharp_recent_experiences: learns
    s.after_experience(exps[1])
    assert torch.equal(s.ages_[1][young], torch.full((4,), 2)) and int((s.ages_[1] == 1).sum()) == 4
    assert torch.equal(s.frozen(1), young)  # age 2 > 1: frozen from now on
    # the k-NN stores exp 1's classes on the units of age >= 1 and exp 0's (from their replayed
    # activations) on those of age >= 2: the frozen ones, whose values can no longer change
    old = torch.isin(s.knn_y_, torch.tensor(exps[0].classes))
    assert torch.equal(s.knn_mask_[old], young.expand(int(old.sum()), -1))
    assert torch.equal(s.knn_mask_[~old], (s.ages_[1] >= 1).expand(int((~old).sum()), -1))
    rep, b1 = s.knn_h_[old][:, young].clone(), upper.bias.detach().clone()
    w1 = upper.weight.detach().clone()
    model.observe(exps[2].classes, 0)
    _steps(s, model, exps[2])
    assert torch.equal(upper.weight[young], w1[young]) and torch.equal(upper.bias[young], b1[young])
    assert not torch.equal(upper.weight[~young], w1[~young])
    x0 = exps[0].train.x
    with torch.no_grad():  # the stored representations are still what the network computes
        feats = model.features(x0)[:, young]
        match = torch.cdist(rep, feats, compute_mode="donot_use_mm_for_euclid_dist").min(1).values
    assert float(match.max()) < 1e-5


def _online(name, seed, **kw):
    stream = _stream()
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "class", hidden=[100, 100])
    s = STRATEGIES[name](**kw).setup(model, "cpu", seed)
    res = train(stream, s, _sgd, batch_size=10, epochs=1, seed=seed)
    return res.metrics()["average_accuracy"]


def test_beats_finetuning_and_er_in_online_class_il():
    # measured (seeds 0 / 1): fine-tuning 17.2 / 17.5, ER (memory 100) 46.9 / 52.1, SHARP 87.7 / 83.0,
    # SHARP predicting with its head 22.1 / 30.7 (the k-NN is what keeps the old classes)
    for seed in (0, 1):
        ft, er, sharp = _online("finetune", seed), _online("er", seed, mem_size=100), _online("sharp", seed)
        assert sharp > ft + 0.05 and sharp > er + 0.1, (seed, ft, er, sharp)


@pytest.mark.parametrize("bad", [{"sharp_density": 0}, {"sharp_density": 1.5}, {"sharp_rewire_every": 0},
                                 {"sharp_rewire_fraction": -0.1}, {"sharp_stable_fraction": 2},
                                 {"sharp_replay_layer": 0}, {"sharp_per_class": 0},
                                 {"sharp_recent_experiences": 0}, {"sharp_replay_batch_size": 0},
                                 {"sharp_predict": "ncm"}, {"sharp_knn_k": 0}, {"sharp_knn_per_class": 0}])
def test_bad_values_are_refused(bad):
    with pytest.raises(ConfigError, match="strategy.sharp_"):
        run({**SMALL, "strategy": {"name": "sharp", **bad}})


def test_other_backbones_and_a_replay_layer_above_the_network_are_refused():
    with pytest.raises(ConfigError, match="needs the 'mlp' backbone"):
        run({**SMALL, "model": {"name": "cnn", "hidden": [16], "channels": [4, 8]}, "strategy": {"name": "sharp"}})
    with pytest.raises(ConfigError, match="sharp_replay_layer"):
        run({**SMALL, "strategy": {"name": "sharp", "sharp_replay_layer": 2}})
