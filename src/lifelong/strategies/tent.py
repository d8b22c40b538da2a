"""Tent: fully test-time adaptation by entropy minimisation.

Wang, Shelhamer, Liu, Olshausen & Darrell (ICLR 2021), "Tent: Fully Test-Time Adaptation by
Entropy Minimization"; reference code github.com/DequanWang/tent.

On every unlabelled test batch (``adapt``, see ``lifelong.tta``) the model predicts with its
batch-norm layers normalising by the test batch's own statistics; those predictions are returned
(they are what the protocol scores), and then one gradient step lowers the mean entropy of the
same predictions, updating only the scale and shift (affine parameters) of the normalisation
layers. Everything else stays at the source weights; running statistics are neither used nor
changed while adapting, and the model keeps adapting from batch to batch (online, no reset).

Defaults from the paper and its reference configs: Adam, learning rate 1e-3, betas (0.9, 0.999),
no weight decay, one step per batch (``tent_steps=1``), for CIFAR-10/100-C (batch 128); for
ImageNet-C the paper uses SGD with momentum 0.9 and learning rate 0.00025 (batch 64):
``tent_optimizer="sgd", tent_lr=0.00025``.

Training (the source model) is ordinary fine-tuning; Tent acts only in ``adapt``. A model
without normalisation layers is refused (ConfigError) when adaptation starts, and by
``lifelong.tta`` before any data loads.
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

from . import _tta
from .base import Strategy


class Tent(Strategy):
    name = "tent"
    paper = "Wang, Shelhamer, Liu, Olshausen & Darrell 2021, Tent: Fully Test-Time Adaptation by Entropy Minimization"
    scenarios = ("class", "task", "domain")

    def __init__(self, tent_lr: Annotated[float, Field(gt=0)] = 1e-3,
                 tent_optimizer: Literal["adam", "sgd"] = "adam",
                 tent_momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9,
                 tent_steps: Annotated[int, Field(ge=1)] = 1):
        super().__init__()
        self.tent_lr = tent_lr
        self.tent_optimizer = tent_optimizer
        self.tent_momentum = tent_momentum  # sgd only
        self.tent_steps = tent_steps

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        self.optimizer_ = None
        return self

    def check_adaptable(self, model) -> None:
        """Refuse a model Tent cannot adapt (no normalisation layers): a ConfigError."""
        _tta.require_norm_layers(model, self.name)

    def _optimizer(self):
        if self.optimizer_ is None:
            self.check_adaptable(self.model)
            self.optimizer_ = _tta.make_optimizer(_tta.norm_affine_params(self.model), self.tent_optimizer,
                                                  self.tent_lr, self.tent_momentum)
        return self.optimizer_

    def adapt(self, x):
        optimizer, params = self._optimizer(), _tta.norm_affine_params(self.model)
        first = None
        with _tta.test_batch_statistics(self.model), torch.enable_grad():
            for _ in range(self.tent_steps):
                logits = self.model(x)
                first = logits.detach() if first is None else first
                _tta.step(optimizer, _tta.entropy(logits).mean(), params)
        return first

    def extra_state(self):
        return {} if self.optimizer_ is None else {"optimizer": self.optimizer_.state_dict()}

    def load_extra_state(self, state):
        if "optimizer" in state:
            self.optimizer_ = None
            self._optimizer().load_state_dict(state["optimizer"])
