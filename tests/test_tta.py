"""Test-time adaptation: corruptions, the TTA stream, the online protocol, Tent and CoTTA."""
import copy
import json

import pytest
import torch

from lifelong.errors import ConfigError
from lifelong.models import build_model
from lifelong.strategies import STRATEGIES, Strategy, _tta
from lifelong.strategies.cotta import CoTTA
from lifelong.strategies.tent import Tent
from lifelong.streams.corruptions import CORRUPTIONS, TTAStream, corrupt
from lifelong.tta import adapt_stream, parse_tta_config, run_tta, run_tta_to_folder, summarize, train_source


def _images(n=16, seed=0):
    """Digit-like images: a bright stroke on a dark background."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 28, 28)
    x[:, :, 6:22, 12:16] = 0.6 + 0.4 * torch.rand(n, 1, 16, 4, generator=g)
    return x


def _cnn(norm="batch", seed=0):
    torch.manual_seed(seed)
    return build_model("cnn", (1, 28, 28), 10, "domain", norm=norm, channels=[4, 8], hidden=16).eval()


# -- corruptions -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CORRUPTIONS))
@pytest.mark.parametrize("severity", [1, 5])
def test_corruption_is_deterministic_in_range_and_changes_the_image(name, severity):
    x = _images()
    before = x.clone()
    a = corrupt(x, name, severity, torch.Generator().manual_seed(3))
    b = corrupt(x, name, severity, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(x, before), "the input was modified"
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert (a - x).abs().mean() > 0.003, f"{name} at severity {severity} leaves the image (almost) unchanged"


def test_severity_grows_the_change():
    x = _images()
    for name in CORRUPTIONS:
        d = [float((corrupt(x, name, s, torch.Generator().manual_seed(0)) - x).abs().mean()) for s in (1, 5)]
        assert d[1] > d[0], name


def test_bad_corruption_arguments_are_refused():
    with pytest.raises(ConfigError, match="unknown corruption 'fog'; allowed: gaussian_noise"):
        corrupt(_images(), "fog")
    with pytest.raises(ConfigError, match="severity must be an integer 1..5, got 6"):
        corrupt(_images(), "contrast", 6)


def test_stream_is_a_pure_function_of_the_seed_and_batches_know_where_they_are():
    x, y = _images(50), torch.arange(50) % 10
    s1, s2, s3 = (TTAStream(x, y, ["contrast", "gaussian_noise"], cycles=2, per_corruption=10, batch_size=4, seed=s)
                  for s in (0, 0, 1))
    assert len(s1) == 2 * 2 * 3 and s1.n_images == 40
    b1, b2 = list(s1), list(s2)
    assert all(torch.equal(p.x, q.x) and torch.equal(p.y, q.y) for p, q in zip(b1, b2))
    assert not all(torch.equal(p.x, q.x) for p, q in zip(b1, s3))
    assert [(b.cycle, b.corruption, b.segment, len(b.y)) for b in b1[:6]] == [
        (0, "contrast", 0, 4), (0, "contrast", 0, 4), (0, "contrast", 0, 2),
        (0, "gaussian_noise", 1, 4), (0, "gaussian_noise", 1, 4), (0, "gaussian_noise", 1, 2)]
    assert [b.position for b in b1] == list(range(len(s1))) and b1[-1].cycle == 1
    b = b1[4]
    assert torch.equal(b.y, y[b.index])  # labels follow their images
    # consecutive segments take consecutive chunks of one permutation: no image twice in a cycle here
    first_cycle = torch.cat([b.index for b in b1 if b.cycle == 0])
    assert len(set(first_cycle.tolist())) == 20


# -- the protocol ------------------------------------------------------------------------------


class _Constant(torch.nn.Module):
    """Predicts class ``c`` for every input."""

    def __init__(self):
        super().__init__()
        self.c = 0

    def forward(self, x, task=None):
        return torch.nn.functional.one_hot(torch.full((len(x),), self.c), 10).float()


class _ShiftAfterPredicting(Strategy):
    """A TTA strategy whose adaptation changes the model: after predicting a batch it moves to
    the next class."""

    name = "_shift_test_only"

    def adapt(self, x):
        scores = self.predict(x)
        self.model.c = (self.model.c + 1) % 10
        return scores


def test_protocol_scores_the_predictions_made_before_adapting():
    x, y = _images(40), torch.zeros(40, dtype=torch.long)
    stream = TTAStream(x, y, ["contrast"], cycles=1, per_corruption=20, batch_size=5)
    strategy = _ShiftAfterPredicting().setup(_Constant())
    lines = []
    records = adapt_stream(strategy, stream, log_every=2, log=lines.append)
    assert lines == ["  batch 2/4: error 0.500 over the last 2 batches", "  batch 4/4: error 1.000 over the last 2 batches"]
    # batch 0 was predicted by the model before any adaptation (class 0 = the label): no error;
    # had the protocol scored after adapting, every batch would be wrong
    assert [r["errors"] for r in records] == [0, 5, 5, 5]
    assert [r["error"] for r in records] == [0.0, 1.0, 1.0, 1.0]
    summary = summarize(records, ["contrast"], 1)
    assert summary["error"] == pytest.approx(15 / 20) and summary["error_per_cycle"] == [pytest.approx(0.75)]


def test_summary_weights_by_images_per_corruption_and_cycle():
    recs = [{"cycle": 0, "corruption": "a", "n": 4, "errors": 1}, {"cycle": 0, "corruption": "b", "n": 2, "errors": 2},
            {"cycle": 1, "corruption": "a", "n": 4, "errors": 0}, {"cycle": 1, "corruption": "b", "n": 2, "errors": 1}]
    s = summarize(recs, ["a", "b"], 2)
    assert s["error"] == pytest.approx(4 / 12)
    assert s["error_per_cycle"] == [pytest.approx(3 / 6), pytest.approx(1 / 6)]
    assert s["error_per_corruption_per_cycle"] == {"a": [0.25, 0.0], "b": [1.0, 0.5]}
    assert s["error_first_cycle"] == pytest.approx(0.5) and s["error_last_cycle"] == pytest.approx(1 / 6)


# -- Tent --------------------------------------------------------------------------------------


def test_tent_updates_only_normalisation_affine_parameters_with_batch_statistics():
    model = _cnn()
    strategy = Tent(tent_lr=1e-2).setup(model)
    before = copy.deepcopy(model.state_dict())
    x = corrupt(_images(32), "contrast", 5)
    with torch.no_grad(), _tta.test_batch_statistics(model):
        expected = model(x)
    scores = strategy.adapt(x)
    assert torch.allclose(scores, expected)  # the predictions of the model before its step
    norm = {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d)}
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    affine = {f"{n}.{p}" for n in norm for p in ("weight", "bias")}
    assert changed and changed <= affine, changed - affine
    assert all(not m.training for m in model.modules()), "adapt must restore the modules' modes"
    assert all(p.requires_grad for p in model.parameters())


def test_tent_lowers_the_entropy_it_minimises():
    model = _cnn()
    strategy = Tent(tent_lr=5e-2).setup(model)
    x = corrupt(_images(32), "gaussian_noise", 5)
    entropies = [float(_tta.entropy(strategy.adapt(x)).mean()) for _ in range(10)]
    assert entropies[-1] < entropies[0]


def test_tent_refuses_a_model_without_normalisation_layers():
    strategy = Tent().setup(_cnn(norm=None))
    with pytest.raises(ConfigError, match="strategy 'tent' adapts the affine parameters of normalisation layers"):
        strategy.adapt(_images(4))
    with pytest.raises(ConfigError, match="model.norm: batch"):
        parse_tta_config({"model": {"norm": None}, "strategy": {"name": "tent"}})
    parse_tta_config({"model": {"norm": None}, "strategy": {"name": "cotta"}})  # CoTTA updates all parameters


def test_tent_state_round_trip_continues_identically():
    x1, x2 = corrupt(_images(16), "contrast", 3), corrupt(_images(16, 1), "contrast", 3)
    a = Tent().setup(_cnn())
    a.adapt(x1)
    b = Tent().setup(_cnn(seed=5))
    b.model.load_state_dict(a.model.state_dict())
    b.load_extra_state(copy.deepcopy(a.extra_state()))
    assert torch.equal(a.adapt(x2), b.adapt(x2))
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


# -- CoTTA -------------------------------------------------------------------------------------


def test_cotta_teacher_is_the_ema_of_the_student_and_predicts():
    model = _cnn()
    source = copy.deepcopy(model)
    strategy = CoTTA(cotta_restore=0.0, cotta_threshold=0.0, cotta_alpha=0.9, cotta_lr=1e-2).setup(model)
    x = corrupt(_images(32), "contrast", 5)
    with torch.no_grad(), _tta.test_batch_statistics(source):
        expected = source(x)
    scores = strategy.adapt(x)
    assert torch.allclose(scores, expected)  # first batch: the teacher is the source model
    for t, s, p in zip(strategy.teacher_.parameters(), source.parameters(), model.parameters()):
        assert torch.allclose(t, 0.9 * s + 0.1 * p, atol=1e-7)
    assert any(not torch.equal(s, p) for s, p in zip(source.parameters(), model.parameters()))
    assert strategy.n_augmented_ == 0


def test_cotta_averages_augmented_predictions_when_the_source_is_unsure():
    x = corrupt(_images(32), "contrast", 5)
    sure = CoTTA(cotta_threshold=0.0).setup(_cnn())
    unsure = CoTTA(cotta_threshold=1.0, cotta_augmentations=4).setup(_cnn())
    a, b = sure.adapt(x), unsure.adapt(x)
    assert (sure.n_augmented_, unsure.n_augmented_) == (0, 1)
    assert not torch.allclose(a, b)
    aug = unsure.augment_images(x)
    assert aug.shape == x.shape and aug.min() >= 0 and aug.max() <= 1 and not torch.equal(aug, x)


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_cotta_restores_weights_to_the_source_with_the_set_probability(p):
    x = corrupt(_images(32), "contrast", 5)

    def adapted(restore):
        model = _cnn()
        source = [q.detach().clone() for q in model.parameters()]
        CoTTA(cotta_restore=restore, cotta_threshold=0.0, cotta_lr=1e-2).setup(model, seed=0).adapt(x)
        return source, [q.detach() for q in model.parameters()]

    source, moved = adapted(0.0)
    _, restored = adapted(p)
    changed = torch.cat([(m != s).flatten() for m, s in zip(moved, source)])
    back = torch.cat([(r == s).flatten() for r, s in zip(restored, source)])
    n = int(changed.sum())
    assert n > 1000
    frac = float(back[changed].float().mean())
    # binomial: 4 standard deviations
    assert abs(frac - p) <= 4 * (p * (1 - p) / n) ** 0.5 + 1e-9, (frac, p)
    kept = ~back[changed]  # the others keep their adapted value
    assert torch.equal(torch.cat([r.flatten() for r in restored])[changed][kept],
                       torch.cat([m.flatten() for m in moved])[changed][kept])


def test_cotta_state_round_trip_continues_identically():
    x1, x2 = corrupt(_images(16), "contrast", 3), corrupt(_images(16, 1), "contrast", 3)
    a = CoTTA(cotta_augmentations=2, cotta_threshold=1.0).setup(_cnn(), seed=4)
    a.adapt(x1)
    b = CoTTA(cotta_augmentations=2, cotta_threshold=1.0).setup(_cnn(seed=5), seed=9)
    b.model.load_state_dict(a.model.state_dict())
    b.load_extra_state(copy.deepcopy(a.extra_state()))
    assert torch.equal(a.adapt(x2), b.adapt(x2))
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


def test_tent_and_cotta_are_registered_with_papers():
    assert STRATEGIES["tent"] is Tent and STRATEGIES["cotta"] is CoTTA
    assert (Tent().tent_lr, Tent().tent_optimizer, Tent().tent_steps) == (1e-3, "adam", 1)
    c = CoTTA()
    assert (c.cotta_alpha, c.cotta_restore, c.cotta_augmentations, c.cotta_threshold, c.cotta_lr) == (
        0.999, 0.01, 32, 0.92, 1e-3)


# -- models ------------------------------------------------------------------------------------


def test_models_take_a_batch_norm_option():
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in _cnn().modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in _cnn(norm=None).modules())
    mlp = build_model("mlp", (1, 28, 28), 10, "domain", hidden=[8], norm="batch")
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in mlp.modules())
    with pytest.raises(ConfigError, match="model.norm"):
        build_model("cnn", (1, 28, 28), 10, "domain", norm="layer")


# -- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, match", [
    ({"stream": {"fog": 1}}, "unknown config key 'stream.fog'; allowed keys here: corruptions"),
    ({"stream": {"severity": 6}}, "stream.severity"),
    ({"stream": {"cycles": 0}}, "stream.cycles"),
    ({"stream": {"corruptions": ["fog"]}}, "stream.corruptions.0"),
    ({"stream": {"corruptions": []}}, "stream.corruptions"),
    ({"stream": {"per_corruption": 65, "batch_size": 64}}, "batch of one image"),
    ({"stream": {"batch_size": 1}}, "stream.batch_size"),
    ({"model": {"norm": "layer"}}, "model.norm"),
    ({"model": {"name": "resnet"}}, "model.name"),
    ({"model": {"name": "mlp", "channels": [4]}}, "model.channels applies only to model 'cnn'"),
    ({"model": {"hidden": [8, 8]}}, "one width"),
    ({"train": {"lr": 0}}, "train.lr"),
    ({"train": {"lr": float("inf")}}, "'train.lr': must be a finite number"),
    ({"train": {"iterations": 0}}, "train.iterations"),
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"train": {"batch_size": 0}}, "train.batch_size"),
    ({"train": {"optimizer": "rmsprop"}}, "train.optimizer"),
    ({"train": {"momentum": -1}}, "train.momentum"),
    ({"train": {"weight_decay": -1}}, "train.weight_decay"),
    ({"threads": 0}, "threads"),
    ({"device": "tpu"}, "device"),
    ({"strategy": {"name": "tnet"}}, "unknown strategy 'tnet'"),
    ({"train": {"schedule": "cosine"}}, "unknown config key 'train.schedule'"),
    ({"seeds": 3}, "unknown config key 'seeds'"),
    ({"strategy": {"name": "tent", "tent_lr": -1}}, "strategy.tent_lr"),
    ({"strategy": {"name": "tent", "tent_optimizer": "rmsprop"}}, "strategy.tent_optimizer"),
    ({"strategy": {"name": "tent", "tent_momentum": 1.5}}, "strategy.tent_momentum"),
    ({"strategy": {"name": "tent", "tent_steps": 0}}, "strategy.tent_steps"),
    ({"strategy": {"name": "tent", "cotta_alpha": 0.5}}, "unknown parameter 'strategy.cotta_alpha'"),
    ({"strategy": {"name": "cotta", "cotta_lr": 0}}, "strategy.cotta_lr"),
    ({"strategy": {"name": "cotta", "cotta_optimizer": "lbfgs"}}, "strategy.cotta_optimizer"),
    ({"strategy": {"name": "cotta", "cotta_momentum": -0.1}}, "strategy.cotta_momentum"),
    ({"strategy": {"name": "cotta", "cotta_alpha": 1.2}}, "strategy.cotta_alpha"),
    ({"strategy": {"name": "cotta", "cotta_restore": -0.01}}, "strategy.cotta_restore"),
    ({"strategy": {"name": "cotta", "cotta_augmentations": 0}}, "strategy.cotta_augmentations"),
    ({"strategy": {"name": "cotta", "cotta_threshold": 2}}, "strategy.cotta_threshold"),
    ({"strategy": {"name": "tent+cotta"}}, "adapt"),
    ({"strategy": {"name": "tent"}, "model": {"norm": None}}, "normalisation"),
    ({"strategy": {"name": "tent+ewc"}, "model": {"norm": None}}, "normalisation"),  # a member's check runs too
])
def test_bad_config_values_are_refused_before_data_loads(bad, match, monkeypatch):
    import lifelong.data

    monkeypatch.setattr(lifelong.data, "mnist", lambda: pytest.fail("data loaded before the config was checked"))
    with pytest.raises(ConfigError, match=match):
        run_tta(bad)


# -- a short real run --------------------------------------------------------------------------

SMALL = {"stream": {"corruptions": ["gaussian_noise", "contrast", "defocus_blur"], "cycles": 2,
                    "per_corruption": 64, "batch_size": 32},
         "model": {"channels": [4, 8], "hidden": [32]}, "train": {"iterations": 120}, "seed": 0}


@pytest.fixture(scope="module")
def mnist():
    from lifelong.data import mnist

    return mnist()


@pytest.fixture(scope="module")
def source(mnist):
    return train_source(SMALL, mnist)


@pytest.mark.slow
def test_tent_and_cotta_beat_the_source_model_on_a_shifted_stream(source, mnist):
    err = {name: run_tta(dict(SMALL, strategy={"name": name, **params}), source=source, data=mnist)
           for name, params in (("finetune", {}), ("tent", {}), ("cotta", {"cotta_augmentations": 4}))}
    assert source.clean_accuracy > 0.9
    assert err["finetune"]["error"] > 0.4  # the corruptions hurt the source model
    assert err["tent"]["error"] < err["finetune"]["error"] - 0.2
    assert err["cotta"]["error"] < err["finetune"]["error"] - 0.2
    json.dumps(err["tent"])  # JSON-serialisable


@pytest.mark.slow
def test_run_is_deterministic_and_writes_its_folder(source, mnist, tmp_path):
    cfg = dict(SMALL, strategy={"name": "tent"})
    a = run_tta(cfg, source=source, data=mnist)
    b = run_tta_to_folder(cfg, tmp_path / "run", source=source, data=mnist)
    assert a["curve"] == b["curve"] and a["error_per_corruption_per_cycle"] == b["error_per_corruption_per_cycle"]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["error"] == a["error"] and "curve" not in saved
    lines = (tmp_path / "run" / "curve.csv").read_text().splitlines()
    assert lines[0] == "position,cycle,corruption,segment,n,errors,error" and len(lines) == 1 + len(a["curve"])
    again = run_tta_to_folder(cfg, tmp_path / "run", source=source, data=mnist)  # finished: reused as stored
    assert again == saved
    with pytest.raises(ConfigError, match="already exists and holds something else"):
        run_tta_to_folder(dict(cfg, seed=1), tmp_path / "run", source=source, data=mnist)
    with pytest.raises(ValueError, match="source model was trained with"):
        run_tta(dict(cfg, seed=1), source=source, data=mnist)


@pytest.mark.slow
def test_benchmark_script_runs(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import tta_mnist

    out = tta_mnist.main(["--seeds", "0", "--cycles", "2", "--per-corruption", "32", "--batch-size", "16",
                          "--corruptions", "contrast,pixelate", "--train-iterations", "20", "--methods", "source,tent",
                          "--out", str(tmp_path / "t.json"), "--figure", str(tmp_path / "t.png"), "--quiet"])
    assert set(out["summary"]) == {"source", "tent"} and len(out["summary"]["tent"]["error_per_cycle"]) == 2
    assert (tmp_path / "t.png").stat().st_size > 0
    assert json.loads((tmp_path / "t.json").read_text())["benchmark"] == "tta_mnist"


@pytest.mark.slow
def test_adapt_command_runs_and_prints_the_error_table(tmp_path, capsys):
    from _cli import run_cli

    code, out, err = run_cli(["adapt", "--strategy", "tent", "--set", "stream.cycles=2", "--set", "stream.per_corruption=32",
                              "--set", "stream.corruptions=[gaussian_noise,contrast]", "--set", "train.iterations=20",
                              "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    assert "gaussian_noise" in out and "cycle 2" in out
    assert json.loads((tmp_path / "a" / "results.json").read_text())["stream"]["cycles"] == 2


def test_adapt_command_refuses_a_bad_value_before_loading_data(tmp_path, capsys):
    from _cli import run_cli

    code, _, err = run_cli(["adapt", "--set", "stream.severity=9", "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "stream.severity" in err and not (tmp_path / "a").exists()
