"""The on-disk feature cache: hits do not recompute, key changes miss, stale and corrupt files are
detected, reported and rebuilt, and nothing outside the cache's own files is ever written.

A tiny counting extractor keeps these fast; the real backbones are in test_pretrained.py.
"""
from __future__ import annotations

import json
import struct
import sys
import warnings

import pytest
import torch
from torch import nn

from lifelong.config import parse_config
from lifelong.data.base import DatasetSplits, TensorDataset
from lifelong.errors import ConfigError, LifelongError
from lifelong.pretrained import (CACHE_ENV, FeatureCache, FeatureCacheWarning, FeatureExtractor, default_cache_dir,
                                 feature_key, featurize)
from lifelong.pretrained.cache import MAGIC
from lifelong.runner import run
from lifelong.streams.presets import build_benchmark


class Counting(FeatureExtractor):
    """Deterministic 'pretrained' features: a fixed random projection of the resized images."""

    name = "counting"

    def __init__(self, image_size: int = 8, weights: str = "w1"):
        super().__init__()
        self.image_size, self.weights = image_size, weights
        self.calls = 0  # inputs embedded
        g = torch.Generator().manual_seed(0)
        self.proj = nn.Linear(image_size * image_size, 6)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(6, image_size * image_size, generator=g))
            self.proj.bias.zero_()

    @property
    def out_dim(self):
        return 6

    def identity(self):
        return {"backbone": self.name, "weights_sha256": self.weights, "image_size": self.image_size}

    def preprocess(self, x):
        x = x.float().div(255)
        return torch.nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear")

    def embed(self, x):
        self.calls += len(x)
        return self.proj(x.flatten(1))


def _data(n_train=60, n_test=20, seed=0, name="toy") -> DatasetSplits:
    g = torch.Generator().manual_seed(seed)
    def ds(n):
        return TensorDataset(name, torch.randint(0, 256, (n, 1, 12, 12), generator=g, dtype=torch.uint8),
                             torch.arange(n) % 4, ["a", "b", "c", "d"])
    return DatasetSplits(ds(n_train), ds(n_test))


def _quiet_featurize(data, ex, cache):
    return featurize(data, ex, cache, batch_size=16, log=None)


def test_hit_returns_identical_tensors_without_recomputing(tmp_path):
    data, ex = _data(), Counting()
    first = _quiet_featurize(data, ex, FeatureCache(tmp_path))
    assert ex.calls == 80 and first.train.x.dtype == torch.float32 and first.train.x.shape == (60, 6)
    assert torch.equal(first.train.y, data.train.y) and first.train.class_names == data.train.class_names
    store = FeatureCache(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a hit warns about nothing
        second = _quiet_featurize(data, ex, store)
    assert ex.calls == 80  # nothing recomputed
    assert store.hits == 2 and store.misses == 0 and store.rebuilt == 0
    for s in ("train", "test"):
        assert torch.equal(getattr(first, s).x, getattr(second, s).x)
    # and the same as extracting without any cache
    assert torch.equal(_quiet_featurize(data, Counting(), False).train.x, second.train.x)


def test_key_changes_miss(tmp_path):
    data = _data()
    _quiet_featurize(data, Counting(image_size=8), FeatureCache(tmp_path))
    assert len(FeatureCache(tmp_path).files()) == 2
    # another image size: another file, a plain miss (no warning)
    ex = Counting(image_size=10)
    store = FeatureCache(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _quiet_featurize(data, ex, store)
    assert ex.calls == 80 and store.misses == 2 and len(store.files()) == 4
    # other weights (their sha256 changed): the file of these settings is stale -> warned, rebuilt
    ex = Counting(image_size=8, weights="w2")
    store = FeatureCache(tmp_path)
    with pytest.warns(FeatureCacheWarning, match=r"stale.*weights_sha256") as rec:
        _quiet_featurize(data, ex, store)
    assert ex.calls == 80 and store.rebuilt == 2 and len(store.files()) == 4
    assert {str(p) for p in store.files()} >= {w.message.args[0].split()[3] for w in rec}  # names the file
    # the rebuilt file now holds the new key: a hit
    again = FeatureCache(tmp_path)
    _quiet_featurize(data, Counting(image_size=8, weights="w2"), again)
    assert again.hits == 2
    # the dataset's content changed (one pixel): stale as well
    changed = _data()
    changed.train.x[0, 0, 0, 0] ^= 1
    with pytest.warns(FeatureCacheWarning, match=r"stale.*dataset.fingerprint"):
        _quiet_featurize(changed, Counting(image_size=8, weights="w2"), FeatureCache(tmp_path))


def _one_file(tmp_path):
    data, ex = _data(), Counting()
    ref = _quiet_featurize(data, ex, FeatureCache(tmp_path))
    path = FeatureCache(tmp_path).path_for(feature_key(data.train, "train", ex))
    assert path.is_file()
    return data, ref, path


@pytest.mark.parametrize("damage,reason", [
    ("flip_payload", "sha256 does not match"),
    ("truncate", "truncated"),
    ("truncate_header", "truncated"),
    ("empty", "bad magic"),
    ("garbage", "bad magic"),
    ("bad_header", "unreadable header"),
])
def test_corrupt_files_are_detected_reported_and_rebuilt(tmp_path, damage, reason):
    data, ref, path = _one_file(tmp_path)
    raw = bytearray(path.read_bytes())
    if damage == "flip_payload":
        raw[-20] ^= 0xFF
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "truncate_header":
        raw = raw[:30]
    elif damage == "empty":
        raw = bytearray()
    elif damage == "garbage":
        raw = bytearray(b"not a feature file at all" * 10)
    elif damage == "bad_header":
        (hlen,) = struct.unpack("<Q", raw[8:16])
        raw[16:16 + hlen] = b"{" * hlen
    path.write_bytes(bytes(raw))
    ex, store = Counting(), FeatureCache(tmp_path)
    with pytest.warns(FeatureCacheWarning, match="corrupt") as rec:
        out = _quiet_featurize(data, ex, store)
    msgs = [str(w.message) for w in rec]
    assert any(str(path) in m and reason in m for m in msgs), msgs
    assert ex.calls == 60  # the damaged train file was recomputed; the test file was a hit
    assert store.rebuilt == 1 and store.hits == 1
    assert torch.equal(out.train.x, ref.train.x)  # never the damaged bytes
    fresh = FeatureCache(tmp_path)  # the file was replaced by a good one
    _quiet_featurize(data, Counting(), fresh)
    assert fresh.hits == 2


def test_file_format_float32_with_key_and_checksum(tmp_path):
    data, _, path = _one_file(tmp_path)
    raw = path.read_bytes()
    assert raw[:8] == MAGIC
    (hlen,) = struct.unpack("<Q", raw[8:16])
    header = json.loads(raw[16:16 + hlen])
    assert header["x"] == {"dtype": "float32", "shape": [60, 6]} and header["y"]["dtype"] == "int64"
    assert header["key"]["dataset"]["name"] == "toy" and header["key"]["extractor"]["backbone"] == "counting"
    assert len(header["payload_sha256"]) == 64 and header["payload_bytes"] == len(raw) - 16 - hlen


def test_only_own_files_are_written(tmp_path):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    mine = cache_dir / "notes.txt"
    mine.write_text("the user's file")
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "data.bin").write_bytes(b"123")
    data = _data()
    before = data.train.x.clone()
    _quiet_featurize(data, Counting(), FeatureCache(cache_dir))
    with pytest.warns(FeatureCacheWarning, match="stale"):  # a stale rebuild replaces the file in place
        _quiet_featurize(data, Counting(weights="w9"), FeatureCache(cache_dir))
    names = sorted(p.name for p in cache_dir.iterdir())
    assert "notes.txt" in names and mine.read_text() == "the user's file"
    assert all(n == "notes.txt" or (n.endswith(".lfeat") and not n.startswith(".")) for n in names)  # no temp files
    assert len(names) == 3
    assert sorted(p.name for p in other.iterdir()) == ["data.bin"] and (other / "data.bin").read_bytes() == b"123"
    assert torch.equal(data.train.x, before)  # the dataset is not modified


def test_write_failure_warns_and_still_returns_features(tmp_path, monkeypatch):
    store = FeatureCache(tmp_path)

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(store, "_write", fail)
    with pytest.warns(FeatureCacheWarning, match="disk full"):
        out = _quiet_featurize(_data(), Counting(), store)
    assert out.train.x.shape == (60, 6) and store.files() == []


def test_default_cache_dir_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    _quiet_featurize(_data(), Counting(), None)  # None: the default folder
    assert len(list((tmp_path / "env-cache").glob("*.lfeat"))) == 2
    monkeypatch.delenv(CACHE_ENV)
    assert default_cache_dir() == default_cache_dir().home() / ".cache" / "lifelong" / "features"
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(LifelongError, match="not a folder"):
        FeatureCache(tmp_path / "a-file")


# ----------------------------------------------------------------------------------------------
# config integration: features replace the datasets before the split; runs stay deterministic
# ----------------------------------------------------------------------------------------------

_NET = '''
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, width=5):
        super().__init__()
        self.fc = nn.Linear(64, width)

    def forward(self, x):
        return torch.relu(self.fc(x.flatten(1)))
'''


@pytest.fixture
def tiny_module(tmp_path, write_user_module):
    tiny_feature_net = write_user_module("tiny_feature_net", _NET)
    torch.manual_seed(1)
    weights = tmp_path / "weights" / "tiny.pt"
    weights.parent.mkdir()
    torch.save(tiny_feature_net.Tiny(width=5).state_dict(), weights)
    return weights


def test_run_on_cached_features_is_deterministic(tmp_path, tiny_module):
    cache = tmp_path / "cache"
    cfg = {"benchmark": {"name": "split-digits",
                         "features": {"backbone": "local", "module": "tiny_feature_net:Tiny",
                                      "weights": str(tiny_module), "kwargs": {"width": 5},
                                      "cache_dir": str(cache)}},
           "model": {"name": "mlp", "hidden": []}, "strategy": {"name": "finetune"},
           "train": {"iterations": 5, "batch_size": 32}, "eval": {"every": None}}
    parsed = parse_config(cfg)
    stream = build_benchmark(parsed.benchmark, seed=0)
    assert stream.input_shape == (5,) and len(stream) == 5  # features, split after extraction
    files = sorted(cache.glob("*.lfeat"))
    assert len(files) == 2
    mtimes = [p.stat().st_mtime_ns for p in files]
    r1 = run(cfg)
    r2 = run(cfg)
    assert r1["accuracy_matrix"] == r2["accuracy_matrix"]
    assert [p.stat().st_mtime_ns for p in sorted(cache.glob("*.lfeat"))] == mtimes  # hits: never rewritten
    d = r1["config"]
    assert d["benchmark"]["features"]["backbone"] == "local" and d["benchmark"]["features"]["batch_size"] == 128
    assert parse_config(json.loads(json.dumps(d))).to_dict() == d  # serialisable, round trip
    assert sorted(p.name for p in tiny_module.parent.iterdir()) == ["tiny.pt"]  # the weights folder untouched
    with pytest.raises(ConfigError, match="model 'cnn' needs image inputs"):
        run({**cfg, "model": {"name": "cnn"}})


def test_sequence_preset_with_features(tmp_path, tiny_module, monkeypatch):
    import lifelong.streams.presets as P

    def fake(name, data_dir=None):  # small stand-ins for MNIST, Fashion-MNIST, Animal-MNIST
        g = torch.Generator().manual_seed(len(name))
        def ds(n):
            return TensorDataset(name, torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8),
                                 torch.arange(n) % 10)
        return DatasetSplits(ds(40), ds(20))

    monkeypatch.setattr(P, "load_dataset", fake)
    cfg = parse_config({"benchmark": {"name": "mnist-fashion-animal", "features": {
        "backbone": "local", "module": "tiny_feature_net:Tiny", "weights": str(tiny_module),
        "kwargs": {"width": 5}, "cache_dir": str(tmp_path / "c")}}})
    s = build_benchmark(cfg.benchmark, seed=0)
    assert len(s) == 3 and s.input_shape == (5,) and s.scenario == "domain"
    assert len(list((tmp_path / "c").glob("*.lfeat"))) == 6


@pytest.mark.parametrize("name", ["permuted-mnist", "rotated-mnist"])
def test_features_refused_on_pixel_transform_benchmarks(name):
    cfg = parse_config({"benchmark": {"name": name, "features": {"backbone": "efficientnet_lite0"}}})
    with pytest.raises(ConfigError, match="transform the pixels"):
        build_benchmark(cfg.benchmark)


def test_feature_cache_benchmark_script_runs(tmp_path):
    """benchmarks/feature_cache.py with tiny settings (no timing asserted)."""
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        import feature_cache
    finally:
        sys.path.remove(str(bench))
    md = tmp_path / "fc.md"
    out = feature_cache.main(["--datasets", "animal_mnist", "--subset", "40", "--repeats", "1",
                              "--cache-dir", str(tmp_path / "cache"), "--md", str(md), "--quiet"])
    (r,) = out["runs"]
    assert r["identical"] and r["n"] == 80 and r["dim"] == 1280 and not r["cold_in_temp_dir"]
    assert "| animal_mnist |" in md.read_text() and len(list((tmp_path / "cache").glob("*.lfeat"))) == 2
    again = feature_cache.main(["--datasets", "animal_mnist", "--subset", "40", "--repeats", "1",
                                "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert again["runs"][0]["cold_in_temp_dir"]  # the cache existed: extraction timed elsewhere
    assert len(list((tmp_path / "cache").glob("*.lfeat"))) == 2
