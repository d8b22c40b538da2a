"""LwF: Learning without Forgetting.

Li & Hoiem (2017), "Learning without Forgetting" (IEEE TPAMI), as implemented by van de Ven,
Tuytelaars & Tolias (2022), "Three types of incremental learning" (Nature Machine
Intelligence), github.com/GMvandeVen/continual-learning (``replay="current"``, soft targets).

At the end of each experience a frozen copy of the model is kept. While training on the next
ones, the current inputs are fed to both models and the new model's outputs are distilled
toward the old model's, with temperature ``lwf_temperature`` (2, both papers' value)::

    KD(old, new) = -T^2 * mean_batch sum_c softmax(old/T)_c * log_softmax(new/T)_c
    loss = CE(current task) + lwf_alpha * sum over old output heads of KD

(the T^2 factor is the reference code's, after Hinton et al. 2015; Li & Hoiem omit it).

- The old model is queried with the task id of every previous experience. Its logits are -inf
  for outputs that were inactive, so each query's finite outputs are its old head: one per old
  task in task-IL (multi-head, as Li & Hoiem); identical queries (a shared head: class-IL,
  domain-IL) are distilled once.
- Both softmaxes run over the old head's outputs only (Li & Hoiem's L_old over Y_o). In
  class-IL van de Ven's code instead takes the new model's softmax over all active classes
  with zero targets for the new ones, which pushes the new classes down on their own data.
- ``lwf_alpha = 1``: Li & Hoiem's lambda_o = 1 and the reference code's ``lwf_weighting``
  (current loss + distillation, unweighted) in task- and class-IL. In domain-IL the reference
  code multiplies the distillation by the number of previous experiences; here a shared head
  counts once (raise ``lwf_alpha`` to match).

The distillation is applied to every sample in the batch (replayed ones too, if composed).
"""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from ..models import Head
from .base import Strategy, frozen_copy


def distill(new: torch.Tensor, old: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft cross-entropy of ``new`` toward ``old``, over the outputs active in ``old``."""
    cols = torch.isfinite(old).all(0)  # -inf marks outputs the old head did not have
    target = F.softmax(old[:, cols] / temperature, dim=1)
    return -(target * F.log_softmax(new[:, cols] / temperature, dim=1)).sum(1).mean() * temperature ** 2


class LwF(Strategy):
    name = "lwf"
    paper = "Li & Hoiem 2017 (TPAMI)"
    scenarios = ("class", "task", "domain")

    def __init__(self, lwf_temperature: Annotated[float, Field(gt=0)] = 2.0,
                 lwf_alpha: Annotated[float, Field(ge=0)] = 1.0):
        super().__init__()
        self.lwf_temperature = lwf_temperature
        self.lwf_alpha = lwf_alpha

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        self.old_model_ = None
        self.old_tasks_: list[int] = []
        return self

    def penalty(self, logits, batch):
        if self.old_model_ is None:
            return 0.0
        x = batch.x
        # A shared head (Head, IncrementalHead) ignores the task id: one query of the old model,
        # and the loop's logits already are the new model's answer (no second forward).
        shared = isinstance(getattr(self.old_model_, "head", None), Head)
        with torch.no_grad():
            h_old = self.old_model_.features(x)
            if shared:
                old = self.old_model_.head(h_old)
            else:
                views: list[tuple[int, torch.Tensor]] = []
                for t in self.old_tasks_:
                    out = self.old_model_.head(h_old, torch.full((len(x),), t, device=x.device))
                    if not any(torch.equal(out, v) for _, v in views):
                        views.append((t, out))
        if shared:
            return self.lwf_alpha * distill(logits, old, self.lwf_temperature)
        h_new = self.model.features(x)
        total = 0.0
        for t, old in views:
            new = self.model.head(h_new, torch.full((len(x),), t, device=x.device))
            total = total + distill(new, old, self.lwf_temperature)
        return self.lwf_alpha * total

    def after_experience(self, exp):
        if exp.task_id not in self.old_tasks_:
            self.old_tasks_.append(exp.task_id)
        self.old_model_ = frozen_copy(self.model)

    def extra_state(self):
        old = None if self.old_model_ is None else self.old_model_.state_dict()
        return {"old_model": old, "old_tasks": list(self.old_tasks_)}

    def load_extra_state(self, state):
        self.old_tasks_ = list(state["old_tasks"])
        self.old_model_ = None if state["old_model"] is None else frozen_copy(self.model, state["old_model"])

