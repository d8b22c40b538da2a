"""Generalized class-incremental (blurry) streams and data-incremental streams.

Samples carry their id as the first feature, so every test can follow each sample through a
stream: where it went, and that it went to exactly one place.
"""
from __future__ import annotations

import math

import pytest
import torch

from lifelong.config import parse_config
from lifelong.data import digits
from lifelong.data.base import DatasetSplits, TensorDataset
from lifelong.errors import ConfigError
from lifelong.evaluation import evaluate
from lifelong.models import build_model
from lifelong.runner import run
from lifelong.strategies.finetune import FineTune
from lifelong.streams import Split, blurry_stream, data_incremental_stream
from lifelong.streams.presets import build_benchmark


def _id_data(n_classes=10, n_train=(40, 41, 42, 43, 44, 45, 46, 47, 48, 49), n_test=7) -> DatasetSplits:
    """Features [id, label]: train ids 0..N-1, test ids -1..-M (labels shuffled in the file order)."""
    ytr = torch.cat([torch.full((n,), c) for c, n in enumerate(n_train[:n_classes])])
    ytr = ytr[torch.randperm(len(ytr), generator=torch.Generator().manual_seed(0))]
    xtr = torch.stack([torch.arange(len(ytr)).float(), ytr.float()], 1)
    yte = torch.arange(n_classes).repeat_interleave(n_test)
    xte = torch.stack([-1 - torch.arange(len(yte)).float(), yte.float()], 1)
    return DatasetSplits(TensorDataset("ids", xtr, ytr), TensorDataset("ids", xte, yte))


def _ids(split: Split) -> list[int]:
    return split.x[:, 0].long().tolist()


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)
    return _id_data()


# ----------------------------------------------------------------------------------------------
# blurry_stream: the configured overlap, every sample exactly once
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("blurry,disjoint", [(0.1, 0.0), (0.25, 0.5), (0.5, 0.0)])
def test_blurry_overlap_is_exactly_the_configured_fraction(data, blurry, disjoint):
    s = blurry_stream(data, n_experiences=5, blurry=blurry, blurry_disjoint=disjoint, seed=3)
    T, groups = len(s), s.info["class_groups"]
    assert T == 5 and s.scenario == "class" and s.n_classes == 10
    assert groups == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    home = {c: i for i, g in enumerate(groups) for c in g}
    disjoint_classes = set(s.info["disjoint_classes"])
    assert len(disjoint_classes) == int(round(disjoint * 2)) * 5  # per group of 2
    # every training sample in exactly one experience, with its own label
    ids = [i for e in s for i in _ids(e.train)]
    assert sorted(ids) == list(range(len(data.train)))
    for e in s:
        assert torch.equal(e.train.y, data.train.y[e.train.x[:, 0].long()])
    for c in range(10):
        n_c = int((data.train.y == c).sum())
        where = torch.tensor([sum(int((e.train.y == c).sum()) for e in s if e.index == j) for j in range(T)])
        away = int(where.sum() - where[home[c]])
        if c in disjoint_classes:
            assert away == 0, c
        else:
            k = int(round(blurry * n_c))
            assert away == k == s.info["blurred"][c], c  # exactly the configured fraction leaves home
            others = [int(where[j]) for j in range(T) if j != home[c]]
            assert max(others) - min(others) <= 1 and sum(others) == k  # dealt evenly to the others
            assert min(others) == k // (T - 1)
    # blurry classes reappear: the experience's classes are every label of its data
    for e in s:
        assert e.classes == sorted(set(e.train.y.tolist()) | set(groups[e.index]))
        if disjoint < 1:
            assert set(e.classes) > set(groups[e.index])
        # test sets: the home classes only, every test sample once
        assert set(e.test.y.tolist()) == set(groups[e.index])
    test_ids = [i for e in s for i in _ids(e.test)]
    assert sorted(test_ids) == sorted(_ids(Split(data.test.x, data.test.y)))


def test_blurry_with_validation_keeps_every_sample_once(data):
    s = blurry_stream(data, n_experiences=5, blurry=0.2, val_fraction=0.2, seed=0)
    ids = [i for e in s for part in (e.train, e.valid) for i in _ids(part)]
    assert sorted(ids) == list(range(len(data.train)))
    assert all(len(e.valid) > 0 for e in s)


def test_blurry_is_deterministic_per_seed_and_varies_across_seeds(data):
    a = blurry_stream(data, n_experiences=5, blurry=0.2, seed=1)
    b = blurry_stream(data, n_experiences=5, blurry=0.2, seed=1)
    c = blurry_stream(data, n_experiences=5, blurry=0.2, seed=2)
    assert all(_ids(x.train) == _ids(y.train) for x, y in zip(a, b))
    assert any(_ids(x.train) != _ids(y.train) for x, y in zip(a, c))


def test_blurry_follows_the_split_keys(data):
    s = blurry_stream(data, n_experiences=None, classes_per_experience=2, first_experience_classes=4, blurry=0.1,
                      class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    assert s.info["class_groups"] == [[9, 8, 7, 6], [5, 4], [3, 2], [1, 0]]


def test_blurry_bad_values(data):
    with pytest.raises(ConfigError, match="blurry must be in"):
        blurry_stream(data, blurry=0.0)
    with pytest.raises(ConfigError, match="blurry must be in"):
        blurry_stream(data, blurry=1.0)
    with pytest.raises(ConfigError, match="blurry_disjoint"):
        blurry_stream(data, blurry=0.1, blurry_disjoint=1.5)
    with pytest.raises(ConfigError, match="at least 2 experiences"):
        blurry_stream(data, n_experiences=1, blurry=0.1)


def test_blurry_config_keys_and_errors():
    cfg = parse_config({"benchmark": {"name": "split-digits", "blurry": 0.1, "blurry_disjoint": 0.5}})
    s = build_benchmark(cfg.benchmark, seed=0)
    assert s.info["blurry"] == 0.1 and len(s.info["disjoint_classes"]) == 5
    with pytest.raises(ConfigError, match="scenario 'class'"):
        build_benchmark(parse_config({"benchmark": {"name": "split-digits", "blurry": 0.1,
                                                    "scenario": "task"}}).benchmark)
    with pytest.raises(ConfigError, match="blurry_disjoint needs benchmark.blurry"):
        build_benchmark(parse_config({"benchmark": {"name": "split-digits", "blurry_disjoint": 0.5}}).benchmark)
    with pytest.raises(ConfigError, match="benchmark.blurry"):
        parse_config({"benchmark": {"name": "split-digits", "blurry": 1.5}})
    with pytest.raises(ConfigError, match="does not apply to 'permuted-mnist'"):
        build_benchmark(parse_config({"benchmark": {"name": "permuted-mnist", "blurry": 0.1}}).benchmark)


# ----------------------------------------------------------------------------------------------
# reappearing classes: the incremental head, evaluation and a whole run still work
# ----------------------------------------------------------------------------------------------

def test_reappearing_classes_head_evaluation_and_run():
    s = blurry_stream(digits(), n_experiences=5, blurry=0.2, seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", s.input_shape, s.n_classes, "class", hidden=[16])
    seen: set[int] = set()
    for e in s:
        model.observe(e.classes, e.task_id)
        seen |= set(e.classes)
        assert set(torch.nonzero(model.head.active).flatten().tolist()) == seen
    assert seen == set(range(10))  # every class active after the first blurred samples arrived
    agnostic, aware = evaluate(FineTune().setup(model), list(s))
    assert all(0.0 <= a <= 1.0 for a in agnostic + aware)

    cfg = {"benchmark": {"name": "split-digits", "blurry": 0.2}, "model": {"hidden": [32]},
           "strategy": {"name": "finetune"}, "train": {"iterations": 10, "batch_size": 32}, "eval": {"every": 5}}
    r1, r2 = run(cfg), run(cfg)
    R = r1["accuracy_matrix"]
    assert len(R) == 5 and all(len(row) == 5 and all(math.isfinite(v) for v in row) for row in R)
    assert R == r2["accuracy_matrix"]  # deterministic
    classes = [set(e["classes"]) for e in r1["experiences"]]
    assert any(classes[i] & classes[j] for i in range(5) for j in range(i + 1, 5))  # classes reappear


# ----------------------------------------------------------------------------------------------
# data_incremental_stream
# ----------------------------------------------------------------------------------------------

def test_data_incremental_chunks_partition_the_data_with_every_class_in_every_chunk(data):
    s = data_incremental_stream(data, n_experiences=4, seed=0)
    assert len(s) == 4 and s.scenario == "domain" and s.n_classes == 10
    assert sorted(i for e in s for i in _ids(e.train)) == list(range(len(data.train)))
    assert sorted(i for e in s for i in _ids(e.test)) == sorted(_ids(Split(data.test.x, data.test.y)))
    for e in s:
        assert e.classes == list(range(10))
        assert set(e.train.y.tolist()) == set(range(10))
        for c in range(10):  # stratified: each chunk holds a quarter of each class (+-1)
            n_c = int((data.train.y == c).sum())
            assert abs(int((e.train.y == c).sum()) - n_c / 4) < 1
    assert data_incremental_stream(data, n_experiences=4, scenario="class").scenario == "class"


def test_data_incremental_errors(data):
    with pytest.raises(ConfigError, match="not 'task'"):
        data_incremental_stream(data, n_experiences=4, scenario="task")
    with pytest.raises(ConfigError, match="fewer than n_experiences"):
        data_incremental_stream(data, n_experiences=8)  # 7 test samples per class
