"""Experiences and streams: tensors and metadata, nothing about training.

A :class:`Stream` is a list of :class:`Experience` objects plus the scenario it was built
for. Each experience carries aligned train / validation / test tensors, the output labels it
contains and its task id. Streams know nothing of strategies (as in Continuum): iterate them
with any training code.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

SCENARIOS = ("class", "task", "domain")


@dataclass
class Split:
    """Inputs (float32) and labels (int64) of one part of an experience."""

    x: torch.Tensor
    y: torch.Tensor
    t: torch.Tensor | None = None  # per-sample task ids, when samples of several tasks are mixed

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> "Split":
        return Split(self.x.to(device), self.y.to(device), None if self.t is None else self.t.to(device))

    @staticmethod
    def cat(splits: list["Split"], task_ids: list[int] | None = None) -> "Split":
        """Concatenate; with ``task_ids``, record each part's task id per sample."""
        t = None
        if task_ids is not None:
            t = torch.cat([torch.full((len(s),), tid, dtype=torch.long, device=s.y.device)
                           for s, tid in zip(splits, task_ids)])
        return Split(torch.cat([s.x for s in splits]), torch.cat([s.y for s in splits]), t)


@dataclass
class Experience:
    index: int
    task_id: int
    classes: list[int]
    train: Split
    valid: Split
    test: Split
    name: str = ""
    iterations: int | None = None  # this experience's own iteration budget (None: the run's)

    def to(self, device) -> "Experience":
        return Experience(self.index, self.task_id, self.classes, self.train.to(device),
                          self.valid.to(device), self.test.to(device), self.name, self.iterations)


@dataclass
class Stream:
    name: str
    scenario: str
    experiences: list[Experience]
    n_classes: int  # number of output units the model needs (label space size)
    input_shape: tuple[int, ...]
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, got {self.scenario!r}")

    def __len__(self) -> int:
        return len(self.experiences)

    def __iter__(self):
        return iter(self.experiences)

    def __getitem__(self, i: int) -> Experience:
        return self.experiences[i]

    @property
    def task_classes(self) -> dict[int, list[int]]:
        """task id -> output labels of that task (used by multi-head models)."""
        out: dict[int, list[int]] = {}
        for e in self.experiences:
            out.setdefault(e.task_id, [])
            out[e.task_id] = sorted(set(out[e.task_id]) | set(e.classes))
        return out

    def without_test(self) -> "Stream":
        """This stream with every test split replaced by an empty one (a model-selection run:
        what a hyper-parameter search may see). The test tensors are not read."""
        def empty(s: Split) -> Split:
            return Split(s.x[:0], s.y[:0], None if s.t is None else s.t[:0])

        exps = [Experience(e.index, e.task_id, e.classes, e.train, e.valid, empty(e.valid), e.name, e.iterations)
                for e in self.experiences]
        return Stream(self.name, self.scenario, exps, self.n_classes, self.input_shape, dict(self.info))

    def to(self, device) -> "Stream":
        return Stream(self.name, self.scenario, [e.to(device) for e in self.experiences], self.n_classes,
                      self.input_shape, dict(self.info))


def carve_validation(split: Split, fraction: float, generator: torch.Generator) -> tuple[Split, Split]:
    """Split ``split`` into (train, valid), stratified by label, ``fraction`` of each class to valid."""
    if fraction <= 0:
        return split, Split(split.x[:0], split.y[:0])
    if fraction >= 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    val_idx = []
    for c in torch.unique(split.y):
        idx = torch.nonzero(split.y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        val_idx.append(idx[: int(round(len(idx) * fraction))])
    mask = torch.zeros(len(split), dtype=torch.bool, device=split.y.device)
    if val_idx:  # an empty split has no classes
        mask[torch.cat(val_idx)] = True
    return Split(split.x[~mask], split.y[~mask]), Split(split.x[mask], split.y[mask])
