"""Orderings of a stream's experiences: random, curriculum (easiest first), anti-curriculum.

Vahidian et al., "When Do Curricula Work in Federated Learning?" (ICCV 2023) compare the three
orders by a difficulty score. Ours, per experience (document of the choice):

- with ``scores`` (one number per class, larger = harder): the mean score of the
  experience's classes;
- otherwise the final training loss of a *probe*: a linear softmax classifier over the
  experience's own classes, fitted on its training split from zero weights by 100 full-batch
  gradient steps on the flattened inputs (step size 1 / the mean squared input norm, within
  the stable range of the softmax loss's curvature). Zero initialisation and full batches make
  it deterministic without any random draw; a higher loss means the experience's classes are
  harder to tell apart. (The paper scores samples with a pretrained expert model; ours scores
  whole experiences, as the stream's order is what changes.)

``"curriculum"`` sorts by ascending difficulty, ``"anti-curriculum"`` descending (ties keep
the original order), ``"random"`` is a permutation drawn from ``seed``. The experiences are
renumbered in their new order (``index``; task ids in order of first appearance), and
``stream.info`` records ``order`` and ``difficulty`` (in the new order).
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import Experience, Stream

ORDERS = ("random", "curriculum", "anti-curriculum")


def probe_difficulty(exp: Experience, steps: int = 100) -> float:
    """Final training cross-entropy of a linear probe on ``exp``'s classes (see the module doc)."""
    x = exp.train.x.flatten(1).double()
    classes = sorted(set(exp.train.y.tolist()))
    if len(classes) < 2:
        return 0.0
    remap = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([remap[c] for c in exp.train.y.tolist()])
    lr = 1.0 / (float((x * x).sum(1).mean()) + 1.0)  # below 2 / the loss's curvature bound
    w = torch.zeros(x.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    for _ in range(steps):
        loss = F.cross_entropy(x @ w + b, y)
        gw, gb = torch.autograd.grad(loss, (w, b))
        with torch.no_grad():
            w -= lr * gw
            b -= lr * gb
    with torch.no_grad():
        return float(F.cross_entropy(x @ w + b, y))


def difficulties(stream: Stream, scores: list[float] | None = None) -> list[float]:
    if scores is None:
        return [probe_difficulty(e) for e in stream]
    if len(scores) != stream.n_classes:
        raise ConfigError(f"order_scores needs one score per class ({stream.n_classes}), got {len(scores)}")
    return [sum(float(scores[c]) for c in e.classes) / len(e.classes) for e in stream]


def reorder_stream(stream: Stream, order: str, scores: list[float] | None = None, seed: int = 0) -> Stream:
    """``stream`` with its experiences in ``order`` (see the module doc); the data are not copied."""
    if order not in ORDERS:
        raise ConfigError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    T = len(stream)
    diff = difficulties(stream, scores) if (order != "random" or scores is not None) else None
    if order == "random":
        perm = torch.randperm(T, generator=torch.Generator().manual_seed(seed + 3571)).tolist()
    else:
        sign = 1.0 if order == "curriculum" else -1.0  # ties keep the original order
        perm = sorted(range(T), key=lambda i: (sign * diff[i], i))
    tasks: dict[int, int] = {}
    exps = []
    for new, old in enumerate(perm):
        e = stream[old]
        tid = tasks.setdefault(e.task_id, len(tasks))
        exps.append(replace(e, index=new, task_id=tid))
    info = dict(stream.info)
    if "class_groups" in info:
        info["class_groups"] = [info["class_groups"][i] for i in perm]
    info["order"] = order
    info["order_permutation"] = perm
    if diff is not None:
        info["difficulty"] = [diff[i] for i in perm]
    return Stream(stream.name, stream.scenario, exps, stream.n_classes, stream.input_shape, info)
