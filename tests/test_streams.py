"""Stream builders: class/task/domain splits, validation carving, permuted, rotated, sequences.

Fast: digits (8x8) or small synthetic datasets where possible, subsets of the MNIST-like datasets
for the 28x28 checks.
"""
from __future__ import annotations

import pytest
import torch

from lifelong.data import animal_mnist, digits, fashion_mnist, mnist
from lifelong.data.base import DatasetSplits, TensorDataset
from lifelong.errors import ConfigError
from lifelong.streams import (Split, carve_validation, permuted_stream, rotate, rotated_stream, sequence_stream,
                              split_stream)


@pytest.fixture(scope="module")
def dig():
    return digits()


def _subset(d: DatasetSplits, n_train: int, n_test: int) -> DatasetSplits:
    """A class-balanced subset (the first samples of each class), in the original order."""
    def pick(ds, n):
        k = n // ds.n_classes
        idx = torch.cat([torch.nonzero(ds.y == c).flatten()[:k] for c in range(ds.n_classes)])
        return ds.subset(idx.sort().values)

    return DatasetSplits(pick(d.train, n_train), pick(d.test, n_test))


def _id_data(n_per_class=(10, 20, 30, 40), n_test=5) -> DatasetSplits:
    """Feature dataset whose first feature is the sample's id, to track samples through a stream."""
    ys = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    ys = ys[torch.randperm(len(ys), generator=torch.Generator().manual_seed(0))]
    x = torch.stack([torch.arange(len(ys)).float(), ys.float()], 1)
    yt = torch.arange(len(n_per_class)).repeat_interleave(n_test)
    xt = torch.stack([-1 - torch.arange(len(yt)).float(), yt.float()], 1)
    return DatasetSplits(TensorDataset("ids", x, ys), TensorDataset("ids", xt, yt))


def _ids(split: Split) -> set[int]:
    return set(split.x[:, 0].long().tolist())


# ----------------------------------------------------------------------------------------------
# split_stream
# ----------------------------------------------------------------------------------------------

def test_split_class(dig):
    s = split_stream(dig, "class", n_experiences=5)
    assert len(s) == 5 and s.scenario == "class" and s.n_classes == 10 and s.input_shape == (1, 8, 8)
    assert s.info["class_groups"] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    xtr = dig.train.to_float()
    for i, e in enumerate(s):
        assert e.index == i and e.task_id == i and e.classes == [2 * i, 2 * i + 1]
        assert set(e.train.y.tolist()) == set(e.classes)
        assert set(e.test.y.tolist()) == set(e.classes)  # test aligned with train
        mask = torch.isin(dig.train.y, torch.tensor(e.classes))
        assert torch.equal(e.train.x, xtr[mask]) and torch.equal(e.train.y, dig.train.y[mask])
        assert e.train.x.dtype == torch.float32 and float(e.train.x.max()) <= 1.0
        assert len(e.valid) == 0
    assert sum(len(e.train) for e in s) == len(dig.train)
    assert sum(len(e.test) for e in s) == len(dig.test)


def test_split_task(dig):
    s = split_stream(dig, "task", n_experiences=5)
    assert [e.task_id for e in s] == [0, 1, 2, 3, 4]
    assert s.n_classes == 10  # global labels; multi-head models take task_classes
    assert s.task_classes == {i: [2 * i, 2 * i + 1] for i in range(5)}
    assert set(s[3].train.y.tolist()) == {6, 7} and set(s[3].test.y.tolist()) == {6, 7}


def test_split_domain_remaps_labels(dig):
    s = split_stream(dig, "domain", n_experiences=5, class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    assert s.n_classes == 2
    xtr, xte = dig.train.to_float(), dig.test.to_float()
    for e, (a, b) in zip(s, s.info["class_groups"]):
        assert e.classes == [0, 1] and e.task_id == e.index
        for part, x, y in ((e.train, xtr, dig.train.y), (e.test, xte, dig.test.y)):
            assert set(part.y.tolist()) == {0, 1}
            assert torch.equal(part.x[part.y == 0], x[y == a])  # position inside the group: first -> 0
            assert torch.equal(part.x[part.y == 1], x[y == b])
    assert s.info["class_groups"][0] == [9, 8]


def test_split_class_order_given(dig):
    order = [3, 1, 4, 0, 5, 9, 2, 6, 8, 7]
    s = split_stream(dig, "class", n_experiences=5, class_order=order)
    assert s.info["class_groups"] == [[3, 1], [4, 0], [5, 9], [2, 6], [8, 7]]
    assert s[0].classes == [1, 3]
    for e in s:
        assert set(e.train.y.tolist()) == set(e.classes) == set(e.test.y.tolist())


def test_split_class_order_random(dig):
    def groups(seed):
        return split_stream(dig, "class", n_experiences=5, class_order="random", seed=seed).info["class_groups"]

    g0 = groups(0)
    assert sorted(sum(g0, [])) == list(range(10))
    assert g0 == groups(0)  # same seed, same order
    assert g0 != groups(1)  # another seed, another order
    assert g0 != [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def test_split_first_experience_classes(dig):
    s = split_stream(dig, "class", n_experiences=4, first_experience_classes=4)
    assert s.info["class_groups"] == [[0, 1, 2, 3], [4, 5], [6, 7], [8, 9]]
    assert set(s[0].train.y.tolist()) == {0, 1, 2, 3} and set(s[0].test.y.tolist()) == {0, 1, 2, 3}
    s2 = split_stream(dig, "class", n_experiences=None, classes_per_experience=2, first_experience_classes=4)
    assert s2.info["class_groups"] == s.info["class_groups"]
    s3 = split_stream(dig, "class", n_experiences=None, classes_per_experience=3, first_experience_classes=4,
                      class_order=list(range(9, -1, -1)))
    assert s3.info["class_groups"] == [[9, 8, 7, 6], [5, 4, 3], [2, 1, 0]]


def test_split_classes_per_experience(dig):
    s = split_stream(dig, "class", n_experiences=None, classes_per_experience=5)
    assert s.info["class_groups"] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert len(split_stream(dig, "class", n_experiences=10)) == 10


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_experiences=3), "cannot split 10 classes evenly into 3"),
    (dict(n_experiences=None, classes_per_experience=3), "does not divide"),
    (dict(n_experiences=None), "give n_experiences or classes_per_experience"),
    (dict(n_experiences=3, classes_per_experience=2), "does not match the split"),
    (dict(n_experiences=0), "cannot split"),
    (dict(n_experiences=None, classes_per_experience=0), "does not divide"),
    (dict(n_experiences=4, first_experience_classes=3), "cannot split 7 classes evenly into 3"),
    (dict(n_experiences=2, first_experience_classes=10), "first_experience_classes must be in 1..9"),
    (dict(n_experiences=None, classes_per_experience=2, first_experience_classes=12), "first_experience_classes"),
    (dict(n_experiences=4, first_experience_classes=4, scenario="domain"), "same number of classes"),
    (dict(class_order=[0, 0, 1, 2, 3, 4, 5, 6, 7, 8]), "permutation of 0..9"),
    (dict(class_order=list(range(9))), "permutation of 0..9"),
    (dict(class_order="shuffled"), "class_order must be 'random' or a list"),
    (dict(scenario="online"), "unknown scenario 'online'"),
])
def test_split_invalid(dig, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        split_stream(dig, **{"scenario": "class", **kwargs})


# ----------------------------------------------------------------------------------------------
# validation split
# ----------------------------------------------------------------------------------------------

def test_validation_fraction_per_class_and_disjoint():
    data = _id_data()
    s = split_stream(data, "class", n_experiences=2, val_fraction=0.2, seed=3)
    for e in s:
        for c in e.classes:
            n = int((data.train.y == c).sum())
            assert int((e.valid.y == c).sum()) == round(0.2 * n)
            assert int((e.train.y == c).sum()) == n - round(0.2 * n)
        assert not (_ids(e.train) & _ids(e.valid))  # disjoint
        all_ids = set(torch.nonzero(torch.isin(data.train.y, torch.tensor(e.classes))).flatten().tolist())
        assert _ids(e.train) | _ids(e.valid) == all_ids  # nothing lost
        assert all(i < 0 for i in e.test.x[:, 0].tolist())  # valid comes from train, never from test
        assert len(e.test) == 10
        # labels follow their samples
        assert torch.equal(e.valid.y, data.train.y[e.valid.x[:, 0].long()])


def test_validation_seeds():
    data = _id_data()

    def valid_ids(seed):
        return [_ids(e.valid) for e in split_stream(data, "class", n_experiences=2, val_fraction=0.3, seed=seed)]

    assert valid_ids(0) == valid_ids(0)
    assert valid_ids(0) != valid_ids(1)


def test_validation_domain_and_digits(dig):
    s = split_stream(dig, "domain", n_experiences=5, val_fraction=0.25, seed=0)
    for e, (a, b) in zip(s, s.info["class_groups"]):
        assert set(e.valid.y.tolist()) == {0, 1}
        na, nb = int((dig.train.y == a).sum()), int((dig.train.y == b).sum())
        assert int((e.valid.y == 0).sum()) == round(0.25 * na) and int((e.valid.y == 1).sum()) == round(0.25 * nb)
        assert len(e.train) + len(e.valid) == na + nb


def test_carve_validation_edge_cases():
    g = torch.Generator().manual_seed(0)
    empty = Split(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    tr, va = carve_validation(empty, 0.2, g)
    assert len(tr) == 0 and len(va) == 0
    full = Split(torch.arange(10.0)[:, None], torch.zeros(10, dtype=torch.long))
    tr, va = carve_validation(full, 0.0, g)
    assert tr is full and len(va) == 0 and va.x.shape == (0, 1)
    with pytest.raises(ValueError, match="val_fraction"):
        carve_validation(full, 1.0, g)


# ----------------------------------------------------------------------------------------------
# permuted_stream
# ----------------------------------------------------------------------------------------------

def test_permuted_first_unpermuted_and_bijection(dig):
    s = permuted_stream(dig, n_experiences=3, seed=0)
    assert s.scenario == "domain" and s.n_classes == 10 and len(s) == 3
    xtr, xte = dig.train.to_float(), dig.test.to_float()
    assert torch.equal(s[0].train.x, xtr) and torch.equal(s[0].test.x, xte)
    for e in s:
        assert e.classes == list(range(10)) and e.task_id == e.index
        assert torch.equal(e.train.y, dig.train.y) and torch.equal(e.test.y, dig.test.y)
        assert e.train.x.shape == xtr.shape
        # same pixels, other places: the multiset of pixel values of every image is unchanged
        assert torch.equal(e.train.x.flatten(1).sort(1).values, xtr.flatten(1).sort(1).values)
        assert torch.equal(e.test.x.flatten(1).sort(1).values, xte.flatten(1).sort(1).values)
    assert not torch.equal(s[1].train.x, xtr) and not torch.equal(s[1].train.x, s[2].train.x)


def test_permuted_is_one_fixed_permutation_per_experience():
    # images holding 0..63: a permuted image spells out the permutation itself
    x = torch.arange(64, dtype=torch.uint8).reshape(1, 1, 8, 8).repeat(6, 1, 1, 1)
    y = torch.arange(6) % 2
    data = DatasetSplits(TensorDataset("ids", x, y), TensorDataset("ids", x[:2], y[:2]))
    s = permuted_stream(data, n_experiences=3, seed=5)
    for e in s:
        perm = (e.train.x.flatten(1) * 255).round().long()
        assert torch.equal(perm.sort(1).values[0], torch.arange(64))  # a bijection of the 64 pixels
        assert (perm == perm[0]).all()  # the same for every image
        assert torch.equal((e.test.x.flatten(1) * 255).round().long(), perm[:2])  # and for the test set
    assert torch.equal((s[0].train.x.flatten(1) * 255).round().long()[0], torch.arange(64))


def test_permuted_seeds_and_permute_first(dig):
    a = permuted_stream(dig, n_experiences=3, seed=0)
    b = permuted_stream(dig, n_experiences=3, seed=0)
    c = permuted_stream(dig, n_experiences=3, seed=1)
    for ea, eb in zip(a, b):
        assert torch.equal(ea.train.x, eb.train.x) and torch.equal(ea.test.x, eb.test.x)
    assert not torch.equal(a[1].train.x, c[1].train.x)
    p = permuted_stream(dig, n_experiences=2, permute_first=True, seed=0)
    assert not torch.equal(p[0].train.x, dig.train.to_float())


def test_permuted_class_and_task_scenarios(dig):
    s = permuted_stream(dig, n_experiences=3, scenario="class")
    assert s.n_classes == 30
    for i, e in enumerate(s):
        assert e.classes == list(range(10 * i, 10 * i + 10))
        assert torch.equal(e.train.y, dig.train.y + 10 * i) and torch.equal(e.test.y, dig.test.y + 10 * i)
    t = permuted_stream(dig, n_experiences=3, scenario="task")
    assert t.n_classes == 10 and [e.task_id for e in t] == [0, 1, 2]
    with pytest.raises(ConfigError, match="unknown scenario"):
        permuted_stream(dig, n_experiences=2, scenario="instance")


def test_permuted_validation(dig):
    s = permuted_stream(dig, n_experiences=2, val_fraction=0.1, seed=0)
    for e in s:
        assert len(e.train) + len(e.valid) == len(dig.train)
        assert torch.equal(e.valid.y.bincount(), torch.round(dig.train.y.bincount() * 0.1).long())


# ----------------------------------------------------------------------------------------------
# rotated_stream
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_mnist():
    return _subset(mnist(), 500, 100)


def test_rotate_identity_and_rot90(small_mnist):
    x = small_mnist.train.to_float()[:64]
    assert torch.equal(rotate(x, 0), x) and torch.equal(rotate(x, 360), x)
    r = rotate(x, 90)
    assert r.shape == x.shape
    # 28x28 pixel centres map onto pixel centres: equal to rot90 up to interpolation round-off
    assert torch.allclose(r, torch.rot90(x, 1, dims=(2, 3)), atol=1e-4)
    assert torch.allclose(rotate(x, -90), torch.rot90(x, -1, dims=(2, 3)), atol=1e-4)
    assert torch.allclose(rotate(x, 180), torch.rot90(x, 2, dims=(2, 3)), atol=1e-4)
    # any angle: rotating back nearly restores the image (bilinear blur only)
    back = rotate(rotate(x, 30), -30)
    assert (back - x).abs().mean() < 0.05 < (rotate(x, 30) - x).abs().mean()
    r45 = rotate(x, 45)
    assert float(r45.min()) >= 0 and float(r45.max()) <= 1 + 1e-6
    assert not torch.allclose(r45, x, atol=0.1)


def test_rotated_stream(small_mnist):
    s = rotated_stream(small_mnist, n_experiences=3, seed=0)
    assert [e.name for e in s] == ["rotation 0 deg", "rotation 60 deg", "rotation 120 deg"]
    xtr = small_mnist.train.to_float()
    assert torch.equal(s[0].train.x, xtr)  # angle 0 is the identity
    assert torch.allclose(s[1].train.x, rotate(xtr, 60))
    assert s.n_classes == 10 and all(torch.equal(e.train.y, small_mnist.train.y) for e in s)
    r = rotated_stream(small_mnist, n_experiences=2, angles=[0, 90])
    assert torch.allclose(r[1].train.x, torch.rot90(xtr, 1, dims=(2, 3)), atol=1e-4)
    assert torch.allclose(r[1].test.x, torch.rot90(small_mnist.test.to_float(), 1, dims=(2, 3)), atol=1e-4)
    c = rotated_stream(small_mnist, n_experiences=2, angles=[0, 90], scenario="class")
    assert c.n_classes == 20 and c[1].classes == list(range(10, 20))
    with pytest.raises(ConfigError, match="angles has 2 values but n_experiences=3"):
        rotated_stream(small_mnist, n_experiences=3, angles=[0, 90])


# ----------------------------------------------------------------------------------------------
# sequence_stream
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def three():
    return [_subset(d(), 300, 100) for d in (mnist, fashion_mnist, animal_mnist)]


def test_sequence_domain(three):
    s = sequence_stream(three, "domain")
    assert s.name == "mnist+fashion_mnist+animal_mnist" and s.n_classes == 10 and s.input_shape == (1, 28, 28)
    for e, d in zip(s, three):
        assert e.name == d.name and e.classes == list(range(10)) and e.task_id == e.index
        assert torch.equal(e.train.y, d.train.y) and torch.equal(e.test.y, d.test.y)
        assert torch.equal(e.train.x, d.train.to_float()) and torch.equal(e.test.x, d.test.to_float())


@pytest.mark.parametrize("scenario", ["class", "task"])
def test_sequence_class_offsets(three, scenario):
    s = sequence_stream(three, scenario)
    assert s.n_classes == 30
    for i, (e, d) in enumerate(zip(s, three)):
        assert e.classes == list(range(10 * i, 10 * i + 10))
        assert torch.equal(e.train.y, d.train.y + 10 * i) and torch.equal(e.test.y, d.test.y + 10 * i)
    assert s.task_classes[2] == list(range(20, 30))


def test_sequence_validation_and_errors(three, dig):
    s = sequence_stream(three, "class", val_fraction=0.2, seed=0)
    for i, e in enumerate(s):
        assert len(e.valid) == 60 and len(e.train) == 240
        assert set(e.valid.y.tolist()) == set(range(10 * i, 10 * i + 10))
    with pytest.raises(ConfigError, match="one input shape"):
        sequence_stream([three[0], dig])
    with pytest.raises(ConfigError, match="unknown scenario"):
        sequence_stream(three, "joint")
