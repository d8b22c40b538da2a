"""HPCR: holistic proxy-based contrastive replay.

Lin, Feng, Zhang, Li & Ye (2023/2024), "HPCR: Holistic Proxy-based Contrastive Replay for
Online Continual Learning" (arXiv:2309.15038, IEEE TNNLS); the authors' code is
``agents/hpcr.py`` of FelixHuiweiLin/PCR. PCR (``pcr.py``) plus three components, each
switchable:

- **Contrastive** (``hpcr_contrastive``): the paper adds anchor-to-sample pairs to PCR,
  conditionally (a step function: only with a large training batch). Here: the supervised
  contrastive loss over the features of both views at ``pcr_temperature``, added when the
  joined batch has at least ``hpcr_sample_min_batch`` samples. The released code leaves this
  component out; with the default threshold (64) and the paper's batches (10 + 10) it stays off.
- **Temperature** (``hpcr_temperature``): the temperature is decoupled into the one inside the
  softmax (``pcr_temperature``, 0.09) and one scaling the gradient: the contrastive loss is
  multiplied by ``tau_s = (max - min) * (1 - cos(2 pi i / period)) / 2 + min``, ``i`` the
  iteration within the experience (the code: max 1.8 = 0.09/0.05, min 0.5625 = 0.09/0.16,
  period 500).
- **Distillation** (``hpcr_distill``), from the second experience on, on the replayed samples
  (both views): PCD, ``hpcr_pcd_alpha`` times the mean squared difference between the current
  logits and those stored with the sample, over the columns of the batch's labels (0.1 for
  CIFAR-100, 0.01 for CIFAR-10); SCD, ``hpcr_scd_beta`` (0.5) times the cross-entropy between
  the softmax over the other samples of the stored features' similarities (at
  ``pcr_temperature``) and that of the current features.

The memory stores each stream sample's logits and features at insertion (the code does the
same). Where we differ from the code, besides PCR's differences: logit columns that were
inactive when a sample was stored (``-inf``) are left out of PCD.
"""
import math
from typing import Annotated, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from ..errors import ConfigError
from ._contrastive import supcon_loss
from .pcr import PCR


class HPCR(PCR):
    name = "hpcr"
    paper = "Lin et al. 2023, HPCR: Holistic Proxy-based Contrastive Replay for Online Continual Learning"

    def __init__(self, mem_size: Annotated[int, Field(ge=1)] = 1000,
                 replay_batch_size: Optional[Annotated[int, Field(ge=1)]] = None,
                 pcr_temperature: Annotated[float, Field(gt=0)] = 0.09,
                 pcr_aug_crop: Literal["resized", "pad", "none"] = "resized",
                 pcr_aug_flip: bool = False, pcr_aug_jitter: bool = True,
                 hpcr_contrastive: bool = True,
                 hpcr_sample_min_batch: Annotated[int, Field(ge=1)] = 64,
                 hpcr_temperature: bool = True,
                 hpcr_tau_max: Annotated[float, Field(gt=0)] = 1.8,
                 hpcr_tau_min: Annotated[float, Field(gt=0)] = 0.5625,
                 hpcr_tau_period: Annotated[int, Field(ge=1)] = 500,
                 hpcr_distill: bool = True,
                 hpcr_pcd_alpha: Annotated[float, Field(ge=0)] = 0.1,
                 hpcr_scd_beta: Annotated[float, Field(ge=0)] = 0.5):
        super().__init__(mem_size, replay_batch_size, pcr_temperature, pcr_aug_crop, pcr_aug_flip, pcr_aug_jitter)
        self.hpcr_contrastive = hpcr_contrastive
        self.hpcr_sample_min_batch = hpcr_sample_min_batch
        self.hpcr_temperature = hpcr_temperature
        self.hpcr_tau_max = hpcr_tau_max
        self.hpcr_tau_min = hpcr_tau_min
        self.hpcr_tau_period = hpcr_tau_period
        self.hpcr_distill = hpcr_distill
        self.hpcr_pcd_alpha = hpcr_pcd_alpha
        self.hpcr_scd_beta = hpcr_scd_beta

    def tau_s(self, iteration: int) -> float:
        lo, hi = self.hpcr_tau_min, self.hpcr_tau_max
        return (hi - lo) * 0.5 * (1 - math.cos(2 * math.pi * iteration / self.hpcr_tau_period)) + lo

    def setup(self, model, device="cpu", seed=0):
        if self.hpcr_tau_min > self.hpcr_tau_max:
            raise ConfigError(f"strategy 'hpcr': hpcr_tau_min ({self.hpcr_tau_min}) must not exceed hpcr_tau_max "
                              f"({self.hpcr_tau_max})")
        super().setup(model, device, seed)
        self._stored = None  # the replayed samples' stored logits and features (augment -> loss); not state
        return self

    def augment(self, batch):
        self._stored = None
        if len(self.buffer_) == 0:
            return batch
        d = self.buffer_.get(self.buffer_.sample_indices(self.replay_batch_size or batch.n_new))
        self._stored = (d["logits"], d["feats"])  # what the replayed samples had when stored
        return batch.cat(d["x"], d["y"], d["t"])

    def loss(self, logits, batch):
        h, y, loss = self.contrastive_parts(batch)
        if self.hpcr_contrastive and len(batch.y) >= self.hpcr_sample_min_batch:
            loss = loss + supcon_loss(F.normalize(h, dim=1), y, self.pcr_temperature)
        if self.hpcr_temperature:
            loss = loss * self.tau_s(self.context.iteration)
        stored, exp = self._stored, self.experience_
        replayed = stored is not None and len(batch.y) > batch.n_new
        if self.hpcr_distill and replayed and exp is not None and exp.index > 0:
            n, m = batch.n_new, len(batch.y) - batch.n_new
            mem_h = torch.cat([h[n:n + m], h[len(batch.y) + n:]])              # replayed rows, both views
            old_logits, old_h = torch.cat([stored[0], stored[0]]), torch.cat([stored[1], stored[1]])
            loss = loss + self.hpcr_pcd_alpha * self.pcd(self.logits_from_features(mem_h), old_logits, y)
            loss = loss + self.hpcr_scd_beta * self.scd(mem_h, old_h)
        return loss

    @staticmethod
    def pcd(logits: torch.Tensor, old: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean squared difference over the columns ``labels`` (with repeats, as the code),
        entries finite in both."""
        cur, old = logits[:, labels], old[:, labels]
        ok = torch.isfinite(cur) & torch.isfinite(old)
        return ((cur - old.masked_fill(~ok, 0)).masked_fill(~ok, 0) ** 2).sum() / ok.sum().clamp_min(1)

    def scd(self, h: torch.Tensor, old_h: torch.Tensor) -> torch.Tensor:
        """Cross-entropy between the stored and the current similarity structure: per row, the
        softmax over the other rows of cos / ``pcr_temperature``."""
        off = ~torch.eye(len(h), dtype=torch.bool, device=h.device)

        def log_p(f):
            f = F.normalize(f, dim=1)
            s = (f @ f.T / self.pcr_temperature)[off].view(len(f), -1)
            return F.log_softmax(s, dim=1)

        return -(log_p(old_h).exp() * log_p(h)).sum(1).mean()

    def after_step(self, batch, logits):
        n = batch.n_new
        self.buffer_.add(batch.x[:n], batch.y[:n], batch.t[:n], logits=logits[:n].detach(),
                         feats=self.features_of(batch)[:n].detach())
