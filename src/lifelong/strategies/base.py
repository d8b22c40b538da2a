"""The strategy interface: the few named places where a method changes training.

The training loop (``lifelong.training``) calls, in this order::

    strategy.before_experience(exp)            # once, before training on exp
    data = strategy.train_data(exp)            # what to iterate (joint training widens it)
    for each minibatch:
        batch  = strategy.augment(batch)       # replay adds stored samples
        logits = strategy.forward(batch)       # default model(batch.x, batch.t)
        loss   = strategy.loss(logits, batch) + strategy.penalty(logits, batch)
        loss.backward()
        strategy.before_step(batch)            # gradient surgery (A-GEM)
        optimizer.step()
        strategy.after_step(batch, logits)     # online statistics (SI), reservoir insertion
    strategy.after_experience(exp)             # importance (EWC), buffer update, old-model copy (LwF)

and ``strategy.predict(x)`` for evaluation. A method overrides only what it needs; state it
learns is stored in attributes ending in ``_`` and saved by ``state_dict``.

Composition (``Compose``, or ``"er+ewc"`` in a config) runs several strategies' hooks in
order and sums their penalties, so replay and a regulariser combine without new code.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..streams import Experience, Split


@dataclass
class Batch:
    """A training minibatch. ``n_new`` counts the leading samples that come from the stream
    (samples after them were added by ``augment``)."""

    x: torch.Tensor
    y: torch.Tensor
    t: torch.Tensor
    n_new: int = -1

    def __post_init__(self):
        if self.n_new < 0:
            self.n_new = len(self.y)

    def cat(self, x, y, t) -> "Batch":
        return Batch(torch.cat([self.x, x]), torch.cat([self.y, y]), torch.cat([self.t, t]), self.n_new)


class Strategy:
    """Base class: plain fine-tuning. Subclasses set ``name``, ``paper`` and ``scenarios``."""

    name: ClassVar[str] = "finetune"
    paper: ClassVar[str] = ""
    scenarios: ClassVar[tuple[str, ...]] = ("class", "task", "domain")

    def __init__(self):
        self.model = None
        self.device = torch.device("cpu")
        self.experience_ = None

    # -- set-up -------------------------------------------------------------------------
    def setup(self, model: torch.nn.Module, device: torch.device | str = "cpu", seed: int = 0) -> "Strategy":
        """Attach the model; called once by the loop before the first experience."""
        self.model, self.device = model, torch.device(device)
        self.generator = torch.Generator(device="cpu").manual_seed(seed + 1)
        return self

    @classmethod
    def get_param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        return [p for p in sig.parameters if p != "self" and sig.parameters[p].kind == kind]

    def get_params(self) -> dict[str, Any]:
        return {p: getattr(self, p) for p in self.get_param_names()}

    def param_groups(self) -> list[dict]:
        """The optimizer's parameter groups: ``{"params": [...]}`` dicts, optionally with an
        ``lr_scale`` that multiplies the configured learning rate (SLCA's slow backbone).
        Default: every parameter of the model at the configured rate."""
        return [{"params": list(self.model.parameters())}]

    # -- hooks (see module docstring for the order) -------------------------------------
    def before_experience(self, exp: Experience) -> None:
        self.experience_ = exp

    def train_data(self, exp: Experience) -> Split | None:
        """What the loop iterates over; ``None`` skips gradient training for this experience
        (a method that fits in closed form does so in ``after_experience``)."""
        return exp.train

    def augment(self, batch: Batch) -> Batch:
        return batch

    def forward(self, batch: Batch) -> torch.Tensor:
        """The training logits of a minibatch: the model on its inputs. A method whose training
        data are stored features rather than inputs (FeTrIL) feeds them to the head only."""
        return self.model(batch.x, batch.t)

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(logits, batch.y)

    def penalty(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor | float:
        return 0.0

    def before_step(self, batch: Batch) -> None:
        pass

    def after_step(self, batch: Batch, logits: torch.Tensor) -> None:
        pass

    def after_experience(self, exp: Experience) -> None:
        pass

    @torch.no_grad()
    def predict(self, x: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        """Scores over the label space (argmax = prediction); ``task`` None = task-agnostic."""
        return self.model(x, task)

    # -- state ----------------------------------------------------------------------------
    def extra_state(self) -> dict:
        """Learned state beyond the model's parameters (buffers, importances, old models)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class Compose(Strategy):
    """Run several strategies together: hooks in order, penalties summed.

    The first member that overrides ``forward``, ``loss``, ``predict`` or ``train_data`` decides it.
    """

    def __init__(self, *members: Strategy):
        super().__init__()
        self.members = list(members)
        self.name = "+".join(m.name for m in members)
        sets = [set(m.scenarios) for m in members]
        self.scenarios = tuple(sorted(set.intersection(*sets)))

    def get_params(self):
        out = {}
        for m in self.members:
            out.update(m.get_params())
        return out

    def _first(self, hook: str) -> Strategy:
        for m in self.members:
            if getattr(type(m), hook) is not getattr(Strategy, hook):
                return m
        return self.members[0]

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        for m in self.members:
            m.setup(model, device, seed)
        return self

    def before_experience(self, exp):
        super().before_experience(exp)
        for m in self.members:
            m.before_experience(exp)

    def train_data(self, exp):
        return self._first("train_data").train_data(exp)

    def param_groups(self):
        return self._first("param_groups").param_groups()

    def augment(self, batch):
        for m in self.members:
            batch = m.augment(batch)
        return batch

    def forward(self, batch):
        return self._first("forward").forward(batch)

    def loss(self, logits, batch):
        return self._first("loss").loss(logits, batch)

    def penalty(self, logits, batch):
        return sum((m.penalty(logits, batch) for m in self.members), 0.0)

    def before_step(self, batch):
        for m in self.members:
            m.before_step(batch)

    def after_step(self, batch, logits):
        for m in self.members:
            m.after_step(batch, logits)

    def after_experience(self, exp):
        for m in self.members:
            m.after_experience(exp)

    def predict(self, x, task=None):
        return self._first("predict").predict(x, task)

    def extra_state(self):
        return {str(i): m.extra_state() for i, m in enumerate(self.members)}

    def load_extra_state(self, state):
        for i, m in enumerate(self.members):
            m.load_extra_state(state[str(i)])

    def __repr__(self):
        return " + ".join(repr(m) for m in self.members)


def frozen_copy(model: torch.nn.Module, state: dict | None = None) -> torch.nn.Module:
    """An eval-mode copy of ``model`` with gradients off (the "old model" of distillation
    methods); with ``state``, load that saved copy into it. The current model may have heads
    the saved one lacked (never queried); a saved key the model lacks is an error."""
    old = copy.deepcopy(model).eval()
    for p in old.parameters():
        p.requires_grad_(False)
    if state is not None:
        unexpected = old.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"saved old model does not fit the current model: {unexpected}")
    return old
