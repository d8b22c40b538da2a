"""Feature distillation: keep the backbone's features where they were.

The feature-distillation baseline of Smith, Tian, Halbe, Hsu & Kira (2023), "A Closer Look at
Rehearsal-Free Continual Learning" (CVPR Workshops): a frozen copy of the model from the end
of the previous experience, and an L2 penalty between its penultimate features and the
current model's on the current batch::

    penalty = fd_lambda * mean_{batch, feature} (f(x) - f_old(x))^2

The mean runs over samples and feature dimensions, as in the authors' code
(``LWF_MC_FEATKD``: ``MSELoss(reduction="none")(feat, target_feat).mean()``), so the scale
does not grow with the feature width. ``f`` is ``model.features`` (the backbone); the head is
free. Default ``fd_lambda = 5``: the value of ``--mu`` in the run scripts of that code lineage
(github.com/shaunak27/data-free-continual-learning, ``LWF_MC_FEATKD --mu 5``); the paper tunes
it per benchmark, so treat it as a starting point.
"""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from .base import Strategy, frozen_copy


class FeatureDistillation(Strategy):
    name = "feature_distillation"
    paper = "Smith et al. 2023 (CVPR-W), feature distillation baseline"
    scenarios = ("class", "task", "domain")

    def __init__(self, fd_lambda: Annotated[float, Field(ge=0)] = 5.0):
        super().__init__()
        self.fd_lambda = fd_lambda

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        self.old_model_ = None
        return self

    def penalty(self, logits, batch):
        if self.old_model_ is None:
            return 0.0
        with torch.no_grad():
            target = self.old_model_.features(batch.x)
        return self.fd_lambda * ((self.model.features(batch.x) - target) ** 2).mean()

    def after_experience(self, exp):
        self.old_model_ = frozen_copy(self.model)

    def extra_state(self):
        return {"old_model": None if self.old_model_ is None else self.old_model_.state_dict()}

    def load_extra_state(self, state):
        self.old_model_ = None if state["old_model"] is None else frozen_copy(self.model, state["old_model"])
