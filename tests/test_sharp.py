"""SHARP: masks keep their density through prune/regrow; stored hidden activations replayed
through the upper layers give the full model's logits, and stay valid while other layers learn;
it beats fine-tuning in online class-IL on split digits; bad values and backbones are refused."""
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
    assert s.stable_[0].sum() > 0  # units were made stable at the boundaries


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
    opt = _sgd(model.parameters())
    for i in range(0, 100, 10):
        batch = Batch(exp1.train.x[i:i + 10], exp1.train.y[i:i + 10], torch.zeros(10, dtype=torch.long))
        batch = s.augment(batch)
        logits = s.forward(batch)
        loss = s.loss(logits, batch) + s.penalty(logits, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        s.after_step(batch, logits.detach())
    with torch.no_grad():
        assert torch.allclose(s.lower(x[match]), s.mem_h_, atol=1e-6)
    assert not torch.equal(model.backbone.net[3].weight, upper_before)


def _online(name, seed, **kw):
    stream = _stream()
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "class", hidden=[100, 100])
    s = STRATEGIES[name](**kw).setup(model, "cpu", seed)
    res = train(stream, s, _sgd, batch_size=10, epochs=1, seed=seed)
    return res.metrics()["average_accuracy"]


def test_beats_finetuning_in_online_class_il():
    for seed in (0, 1):
        ft, sharp = _online("finetune", seed), _online("sharp", seed)
        assert sharp > ft + 0.05, (seed, ft, sharp)


@pytest.mark.parametrize("bad", [{"sharp_density": 0}, {"sharp_density": 1.5}, {"sharp_rewire_every": 0},
                                 {"sharp_rewire_fraction": -0.1}, {"sharp_stable_fraction": 2},
                                 {"sharp_replay_layer": 0}, {"sharp_per_class": 0},
                                 {"sharp_recent_experiences": 0}, {"sharp_replay_batch_size": 0}])
def test_bad_values_are_refused(bad):
    with pytest.raises(ConfigError, match="strategy.sharp_"):
        run({**SMALL, "strategy": {"name": "sharp", **bad}})


def test_other_backbones_and_a_replay_layer_above_the_network_are_refused():
    with pytest.raises(ConfigError, match="needs the 'mlp' backbone"):
        run({**SMALL, "model": {"name": "cnn", "hidden": [16], "channels": [4, 8]}, "strategy": {"name": "sharp"}})
    with pytest.raises(ConfigError, match="sharp_replay_layer"):
        run({**SMALL, "strategy": {"name": "sharp", "sharp_replay_layer": 2}})
