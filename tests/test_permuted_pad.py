"""``benchmark.pad`` of permuted-mnist: zero padding *before* the pixel permutation.

van de Ven's reference code (data/load.py, 'MNIST32') pads MNIST by 2 pixels to 32x32 and then
permutes the 1024 pixels, so the always-zero border lands in other places in every context. The
vandeven2022-permutedmnist protocol sets ``pad: 2``. Fast: digits (8x8) or synthetic images.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lifelong import reproduce as rp
from lifelong.config import parse_config
from lifelong.data import digits
from lifelong.data.base import DatasetSplits, TensorDataset
from lifelong.errors import ConfigError
from lifelong.models import build_model
from lifelong.streams import permuted_stream, split_stream
from lifelong.streams import presets as presets_mod
from lifelong.streams.presets import build_benchmark


def _ids(h: int = 4, w: int = 4, n: int = 3) -> DatasetSplits:
    """Images whose pixel k holds value k + 1 (uint8), so a permuted image spells out where each
    pixel went; padding pixels are the only zeros."""
    x = (torch.arange(h * w, dtype=torch.uint8) + 1).reshape(1, 1, h, w).repeat(n, 1, 1, 1)
    y = torch.arange(n) % 2
    return DatasetSplits(TensorDataset("ids", x, y), TensorDataset("ids", x[:2], y[:2]))


def test_pad_shape_and_model_input():
    s = permuted_stream(digits(), n_experiences=2, permute_first=True, pad=2, seed=0)
    assert s.input_shape == (1, 12, 12)  # 8x8 + 2 on each side
    assert all(e.train.x.shape[1:] == (1, 12, 12) and e.test.x.shape[1:] == (1, 12, 12) for e in s)
    model = build_model("mlp", s.input_shape, s.n_classes, s.scenario, None, hidden=[16])
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert first.in_features == 144
    assert model(s[0].train.x[:5]).shape == (5, 10)


def test_pad_then_permute_is_one_fixed_bijection_of_the_padded_image():
    data = _ids()
    s = permuted_stream(data, n_experiences=3, permute_first=False, pad=1, seed=3)
    padded = F.pad(data.train.to_float(), (1, 1, 1, 1))
    # the first context keeps the image: padded, not permuted
    assert torch.equal(s[0].train.x, padded)
    ref = (padded.flatten(1)[0] * 255).round().long()  # 36 values: 20 border zeros, then 1..16 inside
    assert int((ref == 0).sum()) == 36 - 16
    places = set()
    for e in s:
        v = (e.train.x.flatten(1) * 255).round().long()
        assert (v == v[0]).all()  # the same permutation for every image
        assert torch.equal(v.sort(1).values[0], ref.sort().values)  # a bijection of the 36 padded pixels
        assert torch.equal((e.test.x.flatten(1) * 255).round().long(), v[:2])  # and the test set shares it
        places.add(tuple(torch.nonzero(v[0] == 0).flatten().tolist()))
    # the zero border is permuted with the rest: it sits in other places in other contexts
    assert len(places) == 3


def test_pad_zero_is_the_unpadded_stream():
    a = permuted_stream(digits(), n_experiences=3, permute_first=True, seed=1)
    b = permuted_stream(digits(), n_experiences=3, permute_first=True, seed=1, pad=0)
    assert a.input_shape == b.input_shape == (1, 8, 8)
    for ea, eb in zip(a, b):
        assert torch.equal(ea.train.x, eb.train.x) and torch.equal(ea.test.x, eb.test.x)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_pad_bad_values_refused_by_the_builder(bad):
    with pytest.raises(ConfigError, match="pad"):
        permuted_stream(_ids(), n_experiences=2, pad=bad)


@pytest.mark.parametrize("bad", [-1, 65, 1.5, "two"])
def test_pad_bad_values_refused_by_the_config(bad):
    with pytest.raises(ConfigError, match="pad"):
        parse_config({"benchmark": {"name": "permuted-mnist", "pad": bad}})


def test_pad_refused_where_it_does_not_apply():
    with pytest.raises(ConfigError, match="benchmark.pad' does not apply to 'split-digits'"):
        build_benchmark(parse_config({"benchmark": {"name": "split-digits", "pad": 2}}).benchmark)


def test_preset_passes_pad(monkeypatch):
    monkeypatch.setattr(presets_mod, "load_dataset", lambda name, *a: digits())  # digits in place of MNIST
    cfg = parse_config({"benchmark": {"name": "permuted-mnist", "n_experiences": 2, "pad": 2,
                                      "permute_first": True}}).benchmark
    s = build_benchmark(cfg, seed=0)
    assert s.input_shape == (1, 12, 12) and len(s) == 2
    unpadded = build_benchmark(parse_config({"benchmark": {"name": "permuted-mnist", "n_experiences": 2}}).benchmark)
    assert unpadded.input_shape == (1, 8, 8)


def test_protocol_pads_like_the_reference():
    pm = rp.load_protocol("vandeven2022-permutedmnist")
    specs = rp.expand(pm, seeds=1, scenarios=["domain"], methods=["none"])
    assert [s.config["benchmark"]["pad"] for s in specs] == [2]


def test_split_stream_is_untouched_by_pad_option():
    s = split_stream(digits(), n_experiences=5, seed=0)
    assert s.input_shape == (1, 8, 8)
