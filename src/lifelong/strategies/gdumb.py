"""GDumb: a greedy class-balanced memory, and a model trained from scratch on it alone.

Prabhu, Torr & Dokania (2020), "GDumb: A Simple Approach that Questions Our Progress in
Continual Learning" (ECCV), github.com/drimpossible/GDumb.

GDumb has two parts: a greedy sampler that keeps a class-balanced memory of ``mem_size``
samples from the stream, and a learner that, whenever a prediction is needed, trains a fresh
network on the memory only (the stream itself is never trained on). Its sampler, per stream
sample ``(x, y)``: store it while the memory is not full; once full, store it only if class
``y`` holds fewer than ``mem_size // (number of classes seen)`` samples, evicting a random
sample of the largest class (ours: the largest class with the lowest (task, label) key on a
tie; the eviction draw comes from the memory's generator).

How it fits the hooks (evaluation here happens at the end of each experience):

- ``before_experience``: the experience's training samples pass through the greedy sampler,
  in their order, then the model is re-initialised (``reset_parameters`` of every module with
  trainable parameters, drawn from the strategy's generator; frozen, e.g. pretrained, modules
  are kept);
- ``train_data`` returns the memory, so the fresh model trains on the memory only: ``passes``
  passes over it when set (``train_passes``; the run's ``train.iterations``, ``train.epochs``
  and ``train.schedule`` are then refused, as they would set the same budget), else the
  run's whole budget (``train.iterations`` or ``train.epochs`` passes; one pass online);
- the head already restricts predictions to the classes seen, i.e. those in memory (the
  paper's masking).

Paper defaults (MNIST, its Table 3 settings): memory k = 300 or 500 (``mem_size=500``), an MLP
400-400, SGD with a cosine schedule with warm restarts (lr 0.05 down to 0.0005), batch 16,
gradient clipping at 10, many passes over the memory (its code's ``--num_passes``: 128 for
MNIST in its ``scripts/replicate.sh``, 256 for CIFAR-10) -- ``passes`` (or the run's
``train.epochs``/``train.iterations``) and ``train.grad_clip_norm`` for that. The schedule: with
``passes`` set, ``train.schedule`` is refused (a run's schedule is sized from the stream's
experiences, not from the memory); without it, give the budget as ``train.iterations`` (a
schedule over ``train.epochs`` is sized from the experience's training set, not the memory).
``passes`` defaults to None (the run's budget) so that an offline run's budget keeps its meaning;
in online runs, where the run's budget is one pass over each experience, set ``passes=128`` for
the paper's setting (``benchmarks/online_grid.py`` does).
Online accuracy: GDumb never trains on (or predicts) the stream's incoming batches, so its online
accuracy is undefined (null in ``results.json``), not its training accuracy on the memory.
Where we differ: the learner is retrained at every experience end rather than at every
query, which is the same thing when queries come only at experience ends; with
``reset_optimizer=false`` (domain-IL's default) the optimizer's state is kept across resets.
"""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from ..buffers import _KEY, Buffer
from ..streams import Split
from .base import Strategy


class GreedyClassBalancedBuffer(Buffer):
    """GDumb's greedy sampler over a fixed ``capacity``. A class is the pair (task, label)."""

    name = "greedy_class_balanced"

    @torch.no_grad()
    def add(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None = None, **extras) -> None:
        n = len(y)
        if n == 0:
            return
        x, y, t = self._prepare(x, y, t, extras)
        keys = (t.long() * _KEY + y.long()).cpu().tolist()
        slot_key = (self.t[:self.size].long() * _KEY + self.y[:self.size].long()).cpu().tolist()
        members: dict[int, list[int]] = {}
        for s, k in enumerate(slot_key):
            members.setdefault(k, []).append(s)
        rows: dict[int, int] = {}  # slot -> batch row now stored there (the latest wins)
        size = self.size
        for i, k in enumerate(keys):
            members.setdefault(k, [])
            if size < self.capacity:
                slot, size = size, size + 1
            elif len(members[k]) < self.capacity // len(members):
                big = max(members, key=lambda c: (len(members[c]), -c))
                pick = int(torch.randint(len(members[big]), (1,), generator=self.generator))
                slot = members[big].pop(pick)
            else:
                continue
            members[k].append(slot)
            rows[slot] = i
        if rows:
            slots = torch.tensor(list(rows), dtype=torch.long)
            self._write(slots, torch.tensor(list(rows.values()), dtype=torch.long), x, y, t, extras)
        self.size = size
        self.n_seen += n

    def counts(self) -> dict[tuple[int, int], int]:
        """(task, label) -> number of stored samples."""
        keys = (self.t[:self.size].long() * _KEY + self.y[:self.size].long()).cpu()
        uniq, cnt = torch.unique(keys, return_counts=True)
        return {(int(k) // _KEY, int(k) % _KEY): int(c) for k, c in zip(uniq.tolist(), cnt.tolist())}


class GDumb(Strategy):
    name = "gdumb"
    epochs_from_stream = False  # trains on its memory, not on the experience
    paper = "Prabhu et al. 2020, GDumb: A Simple Approach that Questions Our Progress in CL (ECCV)"
    scenarios = ("class", "task", "domain")

    def __init__(self, mem_size: Annotated[int, Field(ge=1)] = 500,
                 passes: Annotated[int, Field(ge=1)] | None = None):
        super().__init__()
        self.mem_size = mem_size
        self.passes = passes

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        self.buffer_ = GreedyClassBalancedBuffer(self.mem_size, seed=seed + 2)
        return self

    def before_experience(self, exp):
        super().before_experience(exp)
        d = exp.train
        self.buffer_.add(d.x, d.y, d.t if d.t is not None else torch.full_like(d.y, exp.task_id))
        self.reinitialise()

    def reinitialise(self) -> None:
        """Fresh weights for every module with trainable parameters, from the strategy's
        generator (the global random state is left as it was)."""
        seed = int(torch.randint(2 ** 62, (1,), generator=self.generator))
        with torch.random.fork_rng():  # CPU and CUDA states restored afterwards
            torch.manual_seed(seed)
            for m in self.model.modules():
                if hasattr(m, "reset_parameters") and any(p.requires_grad for p in m.parameters(recurse=False)):
                    m.reset_parameters()

    def train_data(self, exp):
        m = self.buffer_.get()
        return Split(m["x"], m["y"], m["t"])

    def train_passes(self):
        return self.passes

    def extra_state(self):
        return {"buffer": self.buffer_.state_dict()}

    def load_extra_state(self, state):
        self.buffer_ = GreedyClassBalancedBuffer(self.mem_size)
        self.buffer_.load_state_dict(state["buffer"])
        self.buffer_.to(self.device)
