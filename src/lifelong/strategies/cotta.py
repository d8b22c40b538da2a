"""CoTTA: continual test-time adaptation.

Wang, Fink, Van Gool & Dai (CVPR 2022), "Continual Test-Time Domain Adaptation"; reference code
github.com/qinenergy/cotta. On every unlabelled test batch (``adapt``, see ``lifelong.tta``):

1. a teacher, the exponential moving average of the student (``cotta_alpha`` = 0.999), predicts
   the batch; when the frozen source model's mean confidence (max softmax) on the batch is below
   ``cotta_threshold``, the teacher's logits are instead averaged over ``cotta_augmentations`` =
   32 random augmentations of the batch. These pseudo-labels are the returned predictions
   (what the protocol scores: they are made before anything is updated);
2. the student takes one step of the cross-entropy toward the teacher's soft pseudo-labels,
   updating all its parameters (Adam, learning rate 1e-3: the paper's CIFAR-10-C setting);
3. the teacher moves: ``teacher = alpha * teacher + (1 - alpha) * student``;
4. stochastic restore: every weight of the student is reset to its source value with probability
   ``cotta_restore`` = 0.01 (an independent draw per element and step).

Batch norm uses the test batch's statistics in all three models (student, teacher, source), as
in the reference code. The threshold default is the paper's CIFAR-10-C value, 0.92 (the paper
sets it to the 5 % quantile of the source model's confidence on source data: 0.92 CIFAR-10,
0.72 CIFAR-100, 0.1 ImageNet); MNIST, also 10 classes, keeps CIFAR-10's.

Augmentations, adapted from the reference's CIFAR ones to 28x28 grey digits (each drawn per
image, the blur per augmented batch): brightness x[0.6, 1.4], contrast x[0.7, 1.3] about the
image mean, gamma [0.7, 1.3] (the reference's colour jitter without saturation and hue, which
grey images lack); affine: rotation +-15 degrees, translation up to 1/16 of the size, scale
[0.9, 1.1], zero padding (the digits' background) instead of edge padding; Gaussian blur with
sigma in [0.001, 0.5]; Gaussian noise sigma 0.005; clipping to [0, 1]. The reference's random
horizontal flip is left out: a mirrored digit is not the same digit.

Unlike Tent, CoTTA updates all parameters and needs no normalisation layers. Training (the
source model) is ordinary fine-tuning; CoTTA acts only in ``adapt``.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from . import _tta
from .base import Strategy, frozen_copy


class CoTTA(Strategy):
    name = "cotta"
    paper = "Wang, Fink, Van Gool & Dai 2022, Continual Test-Time Domain Adaptation (CVPR)"
    scenarios = ("class", "task", "domain")

    def __init__(self, cotta_lr: Annotated[float, Field(gt=0)] = 1e-3,
                 cotta_optimizer: Literal["adam", "sgd"] = "adam",
                 cotta_momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9,
                 cotta_alpha: Annotated[float, Field(ge=0, le=1)] = 0.999,
                 cotta_restore: Annotated[float, Field(ge=0, le=1)] = 0.01,
                 cotta_augmentations: Annotated[int, Field(ge=1)] = 32,
                 cotta_threshold: Annotated[float, Field(ge=0, le=1)] = 0.92):
        super().__init__()
        self.cotta_lr = cotta_lr
        self.cotta_optimizer = cotta_optimizer
        self.cotta_momentum = cotta_momentum  # sgd only
        self.cotta_alpha = cotta_alpha
        self.cotta_restore = cotta_restore
        self.cotta_augmentations = cotta_augmentations
        self.cotta_threshold = cotta_threshold

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        self.source_ = self.teacher_ = self.optimizer_ = None
        self.n_augmented_ = 0  # batches whose pseudo-labels were augmentation-averaged
        return self

    def _start(self) -> None:
        """On the first test batch: freeze the source weights; the teacher starts from them."""
        if self.source_ is None:
            self.source_ = frozen_copy(self.model)
            self.teacher_ = frozen_copy(self.model)
            self.optimizer_ = _tta.make_optimizer(list(self.model.parameters()), self.cotta_optimizer, self.cotta_lr,
                                                  self.cotta_momentum)

    def adapt(self, x):
        self._start()
        params = list(self.model.parameters())
        with _tta.test_batch_statistics(self.model, self.teacher_, self.source_):
            with torch.no_grad():
                confidence = self.source_(x).softmax(1).amax(1).mean()
                pseudo = self.teacher_(x)
                if confidence < self.cotta_threshold:
                    pseudo = torch.stack([self.teacher_(self.augment_images(x))
                                          for _ in range(self.cotta_augmentations)]).mean(0)
                    self.n_augmented_ += 1
            with torch.enable_grad():
                loss = _tta.soft_cross_entropy(self.model(x), pseudo).mean()
                _tta.step(self.optimizer_, loss, params)
        with torch.no_grad():
            for t, s in zip(self.teacher_.parameters(), params):
                t.mul_(self.cotta_alpha).add_(s, alpha=1 - self.cotta_alpha)
            for p, src in zip(params, self.source_.parameters()):
                mask = torch.rand(p.shape, generator=self.generator).to(p.device) < self.cotta_restore
                p.copy_(torch.where(mask, src, p))
        return pseudo

    def augment_images(self, x: torch.Tensor) -> torch.Tensor:
        """One random augmentation of a batch of images in [0, 1] (see the module docstring)."""
        g, n = self.generator, len(x)

        def u(lo, hi, shape=(n, 1, 1, 1)):
            return (lo + (hi - lo) * torch.rand(shape, generator=g)).to(x.device, x.dtype)

        x = x.clamp(0, 1) * u(0.6, 1.4)  # brightness
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * u(0.7, 1.3) + mean).clamp(0, 1)  # contrast
        x = x ** u(0.7, 1.3)  # gamma
        angle = torch.deg2rad(u(-15.0, 15.0, (n,)))
        scale = u(0.9, 1.1, (n,))
        shift = u(-1 / 16, 1 / 16, (n, 2)) * 2  # normalised coordinates span 2
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
        sigma = float(u(0.001, 0.5, ()))
        r = max(1, math.ceil(3 * sigma))
        t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
        k1 = torch.exp(-t ** 2 / (2 * sigma ** 2))
        k = torch.outer(k1, k1) / k1.sum() ** 2
        x = F.conv2d(x, k[None, None].expand(x.shape[1], 1, *k.shape), padding=r, groups=x.shape[1])
        x = x + 0.005 * torch.randn(x.shape, generator=g).to(x.device, x.dtype)
        return x.clamp(0, 1)

    def extra_state(self):
        if self.source_ is None:
            return {}
        return {"source": self.source_.state_dict(), "teacher": self.teacher_.state_dict(),
                "optimizer": self.optimizer_.state_dict(), "generator": self.generator.get_state(),
                "n_augmented": self.n_augmented_}

    def load_extra_state(self, state):
        if "source" in state:
            self.source_ = None
            self._start()
            self.source_.load_state_dict(state["source"])
            self.teacher_.load_state_dict(state["teacher"])
            self.optimizer_.load_state_dict(state["optimizer"])
            self.generator.set_state(state["generator"])
            self.n_augmented_ = state["n_augmented"]
