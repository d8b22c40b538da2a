"""Shared machinery of the exemplar-free methods that classify frozen features (NCM, FeTrIL,
ACIL, G-ACIL): the papers' optional base training, freezing, feature extraction, and the mask
that turns per-class scores into the label-space scores the loop expects.

Base training. ACIL and FeTrIL train the whole network by gradient descent on the first
experience (their "base" phase) and freeze the feature extractor afterwards; on pretrained,
frozen features (cached pretrained features with ``model: {name: mlp, hidden: []}``) there is
nothing to train. The flag ``<method>_base_training`` selects this: when it is set and the
backbone has parameters that require gradients, ``train_data`` returns the first experience's
data (the loop trains backbone and head with its optimizer and the strategy's loss); otherwise
the first experience is not trained by gradient. After the first experience the backbone is
frozen (``requires_grad`` off) for the rest of the stream, and features are always computed in
eval mode without autograd.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import Strategy


def check(ok: bool, message: str) -> None:
    """One clear user-facing error for a bad hyper-parameter or a misuse."""
    if not ok:
        raise ConfigError(message)


def check_choice(name: str, value, allowed: tuple) -> None:
    check(value in allowed, f"strategy parameter '{name}' must be one of {', '.join(map(str, allowed))}; "
                            f"got {value!r}")


class FrozenFeatureStrategy(Strategy):
    """Base class. Subclasses set ``prefix`` (their parameter prefix, e.g. ``"acil"``) and store
    ``<prefix>_base_training``; learned state lives in attributes ending in ``_``."""

    prefix: str = ""

    @property
    def gradient_free(self) -> bool:
        """Closed form: at most the optional base phase trains by gradient (a composed member's
        training hooks would run there only), so composition with training hooks is refused."""
        return True

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        self.validate()
        if not (hasattr(model, "features") and hasattr(model, "backbone") and hasattr(model, "head")):
            raise ConfigError(f"strategy '{self.name}' needs a ContinualModel (backbone + head with features())")
        self.frozen_ = False
        self.task_classes_: dict[int, list[int]] = {}
        self.seen_ = None  # (n_out,) bool: labels with training data so far; None before any experience
        self._feature_cache = None  # (experience index, features of its training inputs); not state
        return self

    def validate(self) -> None:
        """Check the hyper-parameters; raise ``ConfigError`` with one clear message."""
        check(isinstance(self.base_training, bool), f"'{self.prefix}_base_training' must be true or false")

    @property
    def base_training(self) -> bool:
        return getattr(self, f"{self.prefix}_base_training")

    # -- base training and freezing ----------------------------------------------------------
    def trains_backbone_now(self) -> bool:
        """True during the base phase: first experience, base training on, backbone trainable."""
        return (not self.frozen_ and self.base_training
                and any(p.requires_grad for p in self.model.backbone.parameters()))

    def train_data(self, exp):
        return exp.train if self.trains_backbone_now() else None

    def freeze(self) -> None:
        self.frozen_ = True
        for p in self.model.backbone.parameters():
            p.requires_grad_(False)

    def before_experience(self, exp):
        super().before_experience(exp)
        known = self.task_classes_.get(exp.task_id, [])
        self.task_classes_[exp.task_id] = sorted(set(known) | set(exp.classes))

    def after_experience(self, exp):
        if not self.frozen_:
            self.freeze()
        labels = torch.unique(exp.train.y)
        if self.seen_ is None:
            self.seen_ = torch.zeros(self.n_outputs(exp.train.x), dtype=torch.bool, device=self.device)
        self.seen_[labels.to(self.device)] = True

    # -- features --------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Features of the frozen extractor, (n, d), computed in eval mode."""
        was_training = self.model.training
        self.model.eval()
        out = torch.cat([self.model.features(x[s:s + batch_size]).flatten(1)
                         for s in range(0, max(len(x), 1), batch_size)])
        self.model.train(was_training)
        return out

    def train_features(self, exp) -> torch.Tensor:
        """Features of ``exp.train.x``, computed once per experience (train_data and
        after_experience may both need them)."""
        if self._feature_cache is None or self._feature_cache[0] != exp.index:
            self._feature_cache = (exp.index, self.features(exp.train.x))
        return self._feature_cache[1]

    @torch.no_grad()
    def n_outputs(self, x: torch.Tensor) -> int:
        """Size of the label space: the model's output width."""
        was_training = self.model.training
        self.model.eval()
        n = self.model(x[:1]).shape[1]
        self.model.train(was_training)
        return n

    # -- scores ------------------------------------------------------------------------------
    def mask(self, scores: torch.Tensor, task: torch.Tensor | None) -> torch.Tensor:
        """``-inf`` for labels never trained on and, with task ids, for labels outside each
        sample's task (task-IL)."""
        allowed = self.seen_.unsqueeze(0).expand(len(scores), -1)
        if task is not None:
            task = torch.as_tensor(task, device=scores.device)
            if task.ndim == 0:
                task = task.expand(len(scores))
            in_task = torch.zeros_like(scores, dtype=torch.bool)
            for t in torch.unique(task).tolist():
                rows = torch.nonzero(task == t).flatten()
                cols = torch.as_tensor(self.task_classes_.get(t, []), dtype=torch.long, device=scores.device)
                in_task[rows.unsqueeze(1), cols.unsqueeze(0)] = True
            allowed = allowed & in_task
        return scores.masked_fill(~allowed, float("-inf"))

    # -- state -------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {"frozen": self.frozen_, "task_classes": {int(k): list(v) for k, v in self.task_classes_.items()},
                "seen": self.seen_}

    def load_extra_state(self, state: dict) -> None:
        self.task_classes_ = {int(k): list(v) for k, v in state["task_classes"].items()}
        self.seen_ = None if state["seen"] is None else state["seen"].to(self.device)
        self.frozen_ = False
        if state["frozen"]:
            self.freeze()
