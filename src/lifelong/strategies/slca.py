"""SLCA: Slow Learner with Classifier Alignment.

Zhang, Wang, Kang, Chen & Wei (2023), "SLCA: Slow Learner with Classifier Alignment for
Continual Learning on a Pre-trained Model" (ICCV 2023), official code
github.com/GengDavid/SLCA (``models/slca.py``, ``models/base.py``, ``exps/slca/*.json``).

Sequential fine-tuning of a pre-trained model with two changes:

- **Slow learner.** The backbone learns at ``slca_backbone_lr_scale`` times the configured
  learning rate, the classification head at the configured rate (paper and code: SGD,
  backbone 1e-4, head 1e-2, i.e. scale 0.01, the code's ``bcb_lrscale = 1/100``). It is done
  through ``param_groups`` (``lr_scale``), so it applies to whatever optimizer the run uses.
  As in the official code, the training loss is the cross-entropy over the logits of the
  current experience's classes only (``logits[:, known_classes:]``; the code also freezes the
  old tasks' heads, which then get no gradient either).
- **Classifier alignment (CA).** At the end of each experience the mean and covariance of the
  model's features (``model.features``, eval mode) are stored for each class of that
  experience (covariance + 1e-4 I, the code's value), computed once, in the experience the
  class was learned in. From the second experience on, the head alone is then retrained on
  pseudo-features drawn from N(mu_c, Sigma_c) for every class seen so far:
  ``slca_ca_epochs`` = 5 epochs, each drawing ``slca_ca_samples`` = 256 samples per class,
  shuffled, in batches of 256 (the code's ``num_sampled_pcls``), SGD with lr ``slca_ca_lr`` =
  0.01 (the code's classifier lr), momentum 0.9, weight decay 5e-4, cosine schedule over the
  epochs. With logit normalisation (``slca_logit_temperature`` = 0.1, the code's
  ``ca_with_logit_norm`` for CIFAR-100, ImageNet-R and CUB; 0.05 for Cars-196) the logits are divided by the mean over
  experiences of the L2 norm of that experience's block of logits, then by the temperature,
  before the cross-entropy. ``slca_logit_temperature = 0`` aligns with plain logits.
- As in the code, the aligned head is used for prediction, and the head as trained before
  alignment is restored when the next experience starts (``fc.backup()`` / ``fc.recall()``):
  each alignment starts from the slow-learned head, not from the previous alignment.

Not done here: the code scales the sampling mean of older tasks' classes by
``0.9 + 0.1 (t+1)/(T)`` (t the class's task, T the number of tasks so far), which the paper does
not describe; we sample from the stored statistics as the paper describes.

Scenarios: class-IL (the paper's) and domain-IL (a class's statistics are stored per
experience, so each domain's class distribution is replayed; the logit normalisation groups
then all contain every class). Not task-IL: with one head per task and the task known, the
cross-task calibration that alignment fixes does not arise.
"""
from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from .base import Batch, Strategy

CA_MOMENTUM, CA_WEIGHT_DECAY, COV_EPS = 0.9, 5e-4, 1e-4  # the official code's constants


class SLCA(Strategy):
    name = "slca"
    paper = "Zhang et al. 2023 (ICCV), SLCA: Slow Learner with Classifier Alignment"
    scenarios = ("class", "domain")

    def __init__(self, slca_backbone_lr_scale: Annotated[float, Field(ge=0)] = 0.01,
                 slca_ca_epochs: Annotated[int, Field(ge=0)] = 5, slca_ca_samples: Annotated[int, Field(ge=2)] = 256,
                 slca_ca_lr: Annotated[float, Field(gt=0)] = 0.01,
                 slca_logit_temperature: Annotated[float, Field(ge=0)] = 0.1):  # 0: no logit normalisation
        super().__init__()
        self.slca_backbone_lr_scale = slca_backbone_lr_scale
        self.slca_ca_epochs = slca_ca_epochs
        self.slca_ca_samples = slca_ca_samples
        self.slca_ca_lr = slca_ca_lr
        self.slca_logit_temperature = slca_logit_temperature

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        checks = [("slca_backbone_lr_scale", self.slca_backbone_lr_scale >= 0, ">= 0"),
                  ("slca_ca_epochs", isinstance(self.slca_ca_epochs, int) and self.slca_ca_epochs >= 0,
                   "an integer >= 0"),
                  ("slca_ca_samples", isinstance(self.slca_ca_samples, int) and self.slca_ca_samples >= 2,
                   "an integer >= 2"),
                  ("slca_ca_lr", self.slca_ca_lr > 0, "> 0"),
                  ("slca_logit_temperature", self.slca_logit_temperature >= 0, ">= 0 (0: no logit normalisation)")]
        for name, ok, what in checks:
            if not ok:
                raise ValueError(f"{name} must be {what}, got {getattr(self, name)!r}")
        if not hasattr(model, "backbone") or not hasattr(model, "head"):
            raise ValueError("slca needs a model with a 'backbone' and a 'head' (lifelong.models.ContinualModel)")
        # one row per (experience, class): the class, the experience (logit-norm group), mean, covariance
        self.stat_classes_ = torch.zeros(0, dtype=torch.long)
        self.stat_groups_ = torch.zeros(0, dtype=torch.long)
        self.means_ = None
        self.covs_ = None
        self.head_backup_ = None  # the head's parameters before the last alignment
        return self

    def param_groups(self):
        head = {id(p) for p in self.model.head.parameters()}
        backbone = [p for p in self.model.parameters() if id(p) not in head]
        return [{"params": backbone, "lr_scale": self.slca_backbone_lr_scale},
                {"params": list(self.model.head.parameters())}]

    def before_experience(self, exp):
        super().before_experience(exp)
        if self.head_backup_ is not None:  # recall the slow-learned head (the code's fc.recall())
            with torch.no_grad():
                for n, p in self.model.head.named_parameters():
                    if n in self.head_backup_ and self.head_backup_[n].shape == p.shape:
                        p.copy_(self.head_backup_[n])

    def loss(self, logits, batch: Batch):
        """Cross-entropy over the current experience's classes (and any other class in the batch)."""
        keep = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        keep[torch.as_tensor(self.experience_.classes, device=logits.device)] = True
        keep[batch.y] = True
        return F.cross_entropy(logits.masked_fill(~keep, float("-inf")), batch.y)

    # -- classifier alignment -------------------------------------------------------------
    @torch.no_grad()
    def _class_statistics(self, exp):
        d = exp.train
        feats = torch.cat([self.model.features(d.x[s:s + 1000]) for s in range(0, len(d), 1000)]).double()
        means, covs, classes = [], [], []
        eye = torch.eye(feats.shape[1], dtype=torch.float64, device=feats.device)
        for c in exp.classes:
            f = feats[d.y == c]
            if len(f) == 0:
                continue
            cov = torch.cov(f.T) if len(f) > 1 else torch.zeros_like(eye)
            means.append(f.mean(0))
            covs.append(cov.reshape(eye.shape) + COV_EPS * eye)
            classes.append(c)
        return classes, means, covs

    def after_experience(self, exp):
        was_training = self.model.training
        self.model.eval()
        classes, means, covs = self._class_statistics(exp)
        if classes:
            dev = means[0].device
            self.stat_classes_ = torch.cat([self.stat_classes_.to(dev), torch.tensor(classes, device=dev)])
            groups = torch.full((len(classes),), exp.index, device=dev)
            self.stat_groups_ = torch.cat([self.stat_groups_.to(dev), groups])
            new_m, new_c = torch.stack(means).float(), torch.stack(covs).float()
            self.means_ = new_m if self.means_ is None else torch.cat([self.means_, new_m])
            self.covs_ = new_c if self.covs_ is None else torch.cat([self.covs_, new_c])
        self.head_backup_ = {n: p.detach().clone() for n, p in self.model.head.named_parameters()}
        if self.slca_ca_epochs > 0 and len(torch.unique(self.stat_groups_)) > 1:
            self.align()
        self.model.train(was_training)

    def _factors(self) -> torch.Tensor:
        """A (K, d, d) ``L`` with ``L L^T`` = each stored covariance: Cholesky, or, for a matrix
        that float32 storage left not quite positive definite, ``V sqrt(max(lambda, 0))``."""
        covs = self.covs_.double()
        chol, info = torch.linalg.cholesky_ex(covs)
        for k in torch.nonzero(info).flatten().tolist():
            lam, vec = torch.linalg.eigh((covs[k] + covs[k].T) / 2)
            chol[k] = vec * lam.clamp_min(0).sqrt()
        return chol

    def sample_features(self, n_per_stat: int, generator: torch.Generator | None = None, chol=None):
        """Pseudo-features: ``n_per_stat`` draws from N(mean, cov) of every stored statistic,
        returned as (x (K * n, d), y (K * n,)) in the order of the stored statistics."""
        g = generator or self.generator
        chol = self._factors() if chol is None else chol
        z = torch.randn((len(self.means_), n_per_stat, self.means_.shape[1]), generator=g, dtype=torch.float64)
        x = self.means_.double().unsqueeze(1) + z.to(chol.device) @ chol.transpose(1, 2)
        y = self.stat_classes_.repeat_interleave(n_per_stat)
        return x.reshape(-1, x.shape[-1]).float(), y

    def _normalised(self, logits, groups):
        """The code's logit normalisation: divide by the mean over experiences of each
        experience's logit-block norm, then by the temperature."""
        if not self.slca_logit_temperature:
            return logits
        norms = torch.stack([logits[:, g].norm(dim=1) + 1e-7 for g in groups], 1).mean(1, keepdim=True)
        return logits / norms / self.slca_logit_temperature

    def align(self):
        """Retrain the head on pseudo-features of every class seen so far."""
        head = self.model.head
        cols = torch.unique(self.stat_classes_)  # sorted classes seen so far: the logit columns
        col_of = torch.full((int(cols.max()) + 1,), -1, dtype=torch.long, device=cols.device)
        col_of[cols] = torch.arange(len(cols), device=cols.device)
        groups = [col_of[torch.unique(self.stat_classes_[self.stat_groups_ == gid])]
                  for gid in torch.unique(self.stat_groups_).tolist()]
        params = list(head.parameters())
        opt = torch.optim.SGD(params, lr=self.slca_ca_lr, momentum=CA_MOMENTUM, weight_decay=CA_WEIGHT_DECAY)
        n, bs = self.slca_ca_samples, self.slca_ca_samples
        chol = self._factors()
        for epoch in range(self.slca_ca_epochs):
            for group in opt.param_groups:  # cosine annealing, stepped per epoch (T_max = epochs)
                group["lr"] = self.slca_ca_lr * (1 + math.cos(math.pi * epoch / self.slca_ca_epochs)) / 2
            x, y = self.sample_features(n, chol=chol)
            target = col_of[y]
            perm = torch.randperm(len(x), generator=self.generator).to(x.device)
            x, target = x[perm].to(self.device), target[perm].to(self.device)
            for s in range(0, len(x), bs):
                with torch.enable_grad():
                    logits = head(x[s:s + bs])[:, cols.to(self.device)]
                    loss = F.cross_entropy(self._normalised(logits, groups), target[s:s + bs])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                opt.step()

    # -- state ----------------------------------------------------------------------------
    def extra_state(self):
        return {"stat_classes": self.stat_classes_, "stat_groups": self.stat_groups_,
                "means": self.means_, "covs": self.covs_, "head_backup": self.head_backup_}

    def load_extra_state(self, state):
        dev = self.device
        self.stat_classes_ = state["stat_classes"].to(dev)
        self.stat_groups_ = state["stat_groups"].to(dev)
        self.means_ = None if state["means"] is None else state["means"].to(dev)
        self.covs_ = None if state["covs"] is None else state["covs"].to(dev)
        hb = state["head_backup"]
        self.head_backup_ = None if hb is None else {n: t.to(dev) for n, t in hb.items()}
