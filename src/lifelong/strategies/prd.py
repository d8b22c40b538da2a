"""PRD: Prototype-Sample Relation Distillation.

Asadi, Davari, Mudur, Aljundi & Belilovsky (2023), "Prototype-Sample Relation Distillation:
Towards Replay-Free Continual Learning" (ICML 2023); the authors' pre-release code is
github.com/naderAsadi/Probing-Continual-Learning (``methods/repe.py``, README command for
Split CIFAR-100 / MiniImageNet). No data is stored.

Per minibatch, two augmented views of every sample go through the backbone (features ``h``,
``model.features``) and the loss is::

    loss = SupCon(normalize(g(h)), y)  +  prd_proto_weight * L_p  +  prd_distill_weight * L_d

- **Representation:** the supervised contrastive loss (Khosla et al. 2020) on a projection
  ``g`` (MLP d -> ``prd_proj_hidden`` -> ``prd_proj_hidden`` -> ``prd_proj_dim``, ReLU; the code's
  3-layer head, 512 / 128), temperature ``prd_supcon_temperature`` = 0.1, scaled by
  temperature / 0.07 as in the reference SupCon loss.
- **Prototypes** ``p_c`` live in the feature space (one per class, learned with the model).
  ``L_p = mean_i (1 - cos(stopgrad(h_i), p_{y_i}))`` (the code's ``linear_loss``): each sample
  pulls its own class's prototype, features are not changed by it, and only samples of the
  current experience's classes count, so the prototypes of old classes get no gradient from
  ``L_p`` (the paper's prototype learning "without negative contrasts", restricted to the
  current task).
- **Relation distillation** ``L_d`` keeps the old prototypes relevant as the features drift:
  for every class seen before this experience, similarities ``s_c(x_i) = <h(x_i), p_c> / ||p_c||``
  (the code's ``_get_scores``) are computed with the current model and prototypes, and with a
  frozen copy of both from the end of the previous experience. With ``prd_distill_over =
  "samples"`` (default, the paper: "for each prior task prototype, we preserve the relative
  ordering of samples in the mini-batch") each old prototype gives a softmax over the
  minibatch's samples and ``L_d`` is the KL(old || new) averaged over old prototypes; with
  ``"prototypes"`` (the pre-release code) each sample gives a softmax over each old
  experience's prototypes, KL averaged over samples, summed over old experiences. Temperature
  ``prd_distill_temperature`` = 1 (the README's ``--distill_temp=1``). Gradients reach the
  backbone and the old prototypes (which thereby follow the drifting features).
- **Prediction:** nearest prototype by cosine similarity among the classes seen so far
  (``-inf`` for the others).

Defaults are those of the README's reproduction command (``--supcon_temperature=0.1
--distill_coef=4.0 --prototypes_coef=2.0 --distill_temp=1``, projection 512 / 128). The code
puts the prototypes in their own parameter group (no momentum or weight decay; its lr is reset
to the run's lr every epoch); here they share the run's optimizer settings. The code's optimizer (SGD, lr 0.01,
momentum 0.9, weight decay 1e-4, 100 epochs per task, 120 more on the first) is the run's to set.

Augmentation. The paper augments images (random crop with padding, flip, colour jitter,
grayscale). Here, inputs with a spatial layout (B, C, H, W) are randomly translated by up to
H/8, W/8 pixels with zero padding (the crop: 4 of 32 pixels); flips and colour changes are left
out (not label-preserving for digits, meaningless for feature vectors). Every input, image or
feature vector (e.g. cached frozen-backbone features), then gets inverted dropout of its entries
(``prd_aug_drop`` = 0.2) and Gaussian noise of ``prd_aug_noise`` = 0.1 times each dimension's
standard deviation in the batch. The paper defines no augmentation of feature vectors; these two
values are ours.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .base import Batch, Strategy, frozen_copy

BASE_TEMPERATURE = 0.07  # the reference SupCon loss's base temperature


def supcon_loss(z: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss over ``z`` (N, d), L2-normalised rows, labels ``y`` (N,): every
    row is an anchor, every other row with its label a positive (Khosla et al. 2020, "all")."""
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (y.unsqueeze(0) == y.unsqueeze(1)) & ~self_mask
    mean_pos = log_prob.masked_fill(~pos, 0.0).sum(1) / pos.sum(1).clamp_min(1)
    return -(temperature / BASE_TEMPERATURE) * mean_pos[pos.any(1)].mean()


def _dims(model) -> tuple[int, int]:
    """(feature dimension, number of outputs) of a ContinualModel."""
    d = getattr(getattr(model, "backbone", None), "out_features", None)
    head = getattr(model, "head", None)
    n = getattr(head, "n_classes", None) or getattr(getattr(head, "linear", None), "out_features", None)
    if d is None or n is None:
        raise ValueError("prd needs a model with a backbone that has 'out_features' and a head over the "
                         "label space (lifelong.models.ContinualModel)")
    return int(d), int(n)


class PRD(Strategy):
    name = "prd"
    paper = "Asadi et al. 2023 (ICML), Prototype-Sample Relation Distillation: Towards Replay-Free Continual Learning"
    scenarios = ("class", "task")
    # one prototype per class: in task-IL a class shared by two tasks would serve the later one only
    task_disjoint_classes = True

    def __init__(self, prd_supcon_temperature: Annotated[float, Field(gt=0)] = 0.1,
                 prd_proto_weight: Annotated[float, Field(ge=0)] = 2.0,
                 prd_distill_weight: Annotated[float, Field(ge=0)] = 4.0,
                 prd_distill_temperature: Annotated[float, Field(gt=0)] = 1.0,
                 prd_distill_over: Literal["samples", "prototypes"] = "samples",
                 prd_proj_hidden: Annotated[int, Field(ge=1)] = 512, prd_proj_dim: Annotated[int, Field(ge=1)] = 128,
                 prd_aug_drop: Annotated[float, Field(ge=0, lt=1)] = 0.2,
                 prd_aug_noise: Annotated[float, Field(ge=0)] = 0.1):
        super().__init__()
        self.prd_supcon_temperature = prd_supcon_temperature
        self.prd_proto_weight = prd_proto_weight
        self.prd_distill_weight = prd_distill_weight
        self.prd_distill_temperature = prd_distill_temperature
        self.prd_distill_over = prd_distill_over
        self.prd_proj_hidden = prd_proj_hidden
        self.prd_proj_dim = prd_proj_dim
        self.prd_aug_drop = prd_aug_drop
        self.prd_aug_noise = prd_aug_noise

    def _validate(self):
        checks = [("prd_supcon_temperature", self.prd_supcon_temperature > 0, "> 0"),
                  ("prd_proto_weight", self.prd_proto_weight >= 0, ">= 0"),
                  ("prd_distill_weight", self.prd_distill_weight >= 0, ">= 0"),
                  ("prd_distill_temperature", self.prd_distill_temperature > 0, "> 0"),
                  ("prd_distill_over", self.prd_distill_over in ("samples", "prototypes"),
                   "'samples' or 'prototypes'"),
                  ("prd_proj_hidden", isinstance(self.prd_proj_hidden, int) and self.prd_proj_hidden >= 1,
                   "an integer >= 1"),
                  ("prd_proj_dim", isinstance(self.prd_proj_dim, int) and self.prd_proj_dim >= 1, "an integer >= 1"),
                  ("prd_aug_drop", 0 <= self.prd_aug_drop < 1, "in [0, 1)"),
                  ("prd_aug_noise", self.prd_aug_noise >= 0, ">= 0")]
        for name, ok, what in checks:
            if not ok:
                raise ValueError(f"{name} must be {what}, got {getattr(self, name)!r}")

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        self._validate()
        d, n = _dims(model)
        with torch.random.fork_rng(devices=[]):  # own initialisation: independent of the global RNG
            torch.manual_seed(seed + 3)
            h = self.prd_proj_hidden
            self.proj_ = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                                       nn.Linear(h, self.prd_proj_dim)).to(self.device)
            bound = 1 / math.sqrt(d)  # nn.Linear's initialisation of a (n, d) weight
            self.protos_ = nn.Parameter((torch.rand(n, d) * 2 - 1).mul_(bound).to(self.device))
        self.seen_ = torch.zeros(n, dtype=torch.bool, device=self.device)      # classes seen so far
        self.group_ = torch.full((n,), -1, dtype=torch.long, device=self.device)  # experience that brought each class
        self.old_model_ = None
        self.old_protos_ = None
        self.old_classes_ = torch.zeros(0, dtype=torch.long, device=self.device)
        return self

    def param_groups(self):
        head = {id(p) for p in self.model.head.parameters()}  # the linear head is not used by PRD
        params = [p for p in self.model.parameters() if id(p) not in head]
        return [{"params": params + list(self.proj_.parameters()) + [self.protos_]}]

    def before_experience(self, exp):
        super().before_experience(exp)
        cls = torch.as_tensor(exp.classes, device=self.device)
        self.group_[cls] = torch.where(self.seen_[cls], self.group_[cls], torch.full_like(cls, exp.index))
        self.seen_[cls] = True

    # -- the three losses -------------------------------------------------------------------
    def _rand(self, shape, device):
        return torch.rand(shape, generator=self.generator).to(device)

    def augment_view(self, x: torch.Tensor) -> torch.Tensor:
        """One random view of ``x`` (see the module docstring); never modifies ``x``."""
        if x.ndim == 4 and min(x.shape[2:]) >= 8:
            b, _, hgt, wid = x.shape
            ph, pw = hgt // 8, wid // 8
            padded = F.pad(x, (pw, pw, ph, ph))
            dy = (self._rand(b, x.device) * (2 * ph + 1)).long()
            dx = (self._rand(b, x.device) * (2 * pw + 1)).long()
            rows = (torch.arange(hgt, device=x.device) + dy[:, None])[:, :, None]
            cols = (torch.arange(wid, device=x.device) + dx[:, None])[:, None, :]
            x = padded[torch.arange(b, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
        if self.prd_aug_drop > 0:
            x = x * (self._rand(x.shape, x.device) >= self.prd_aug_drop) / (1 - self.prd_aug_drop)
        if self.prd_aug_noise > 0:
            std = x.std(0, unbiased=False, keepdim=True)
            noise = torch.randn(x.shape, generator=self.generator).to(x.device)
            x = x + self.prd_aug_noise * std * noise
        return x

    def prototype_loss(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean of 1 - cos(stopgrad(h_i), p_{y_i}) over the samples of the current experience's classes."""
        cur = torch.isin(y, torch.as_tensor(self.experience_.classes, device=y.device))
        if not cur.any():
            return h.new_zeros(())
        return (1 - F.cosine_similarity(h.detach()[cur], self.protos_[y[cur]], dim=1)).mean()

    def _scores(self, h, protos):
        return h @ F.normalize(protos, dim=1).T / self.prd_distill_temperature

    def relation_distillation(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """KL(old || new) of the prototype-sample similarity distributions of the old classes;
        ``h`` are the current model's features of ``x``."""
        if self.old_model_ is None or len(self.old_classes_) == 0:
            return h.new_zeros(())
        old_cls = self.old_classes_
        with torch.no_grad():
            old = self._scores(self.old_model_.features(x), self.old_protos_[old_cls])
        new = self._scores(h, self.protos_[old_cls])
        if self.prd_distill_over == "samples":  # per prototype, a distribution over the minibatch
            return F.kl_div(F.log_softmax(new, 0).T, F.log_softmax(old, 0).T, log_target=True, reduction="batchmean")
        total = h.new_zeros(())
        groups = self.group_[old_cls]
        for g in torch.unique(groups).tolist():  # per sample, a distribution over each old experience's prototypes
            cols = groups == g
            total = total + F.kl_div(F.log_softmax(new[:, cols], 1), F.log_softmax(old[:, cols], 1),
                                     log_target=True, reduction="batchmean")
        return total

    def loss(self, logits, batch: Batch):
        x = torch.cat([self.augment_view(batch.x), self.augment_view(batch.x)])
        y = batch.y.repeat(2)
        h = self.model.features(x)
        loss = supcon_loss(F.normalize(self.proj_(h), dim=1), y, self.prd_supcon_temperature)
        if self.prd_proto_weight:
            loss = loss + self.prd_proto_weight * self.prototype_loss(h, y)
        if self.prd_distill_weight and self.old_model_ is not None:
            loss = loss + self.prd_distill_weight * self.relation_distillation(x, h)
        return loss

    def after_experience(self, exp):
        self.old_model_ = frozen_copy(self.model)
        self.old_protos_ = self.protos_.detach().clone()
        self.old_classes_ = torch.nonzero(self.seen_).flatten()

    @torch.no_grad()
    def predict(self, x, task=None):
        if not self.seen_.any():
            return self.model(x, task)
        sims = F.normalize(self.model.features(x), dim=1) @ F.normalize(self.protos_, dim=1).T
        return sims.masked_fill(~self.seen_, float("-inf"))

    # -- state ----------------------------------------------------------------------------
    def extra_state(self):
        return {"proj": self.proj_.state_dict(), "protos": self.protos_.detach().clone(), "seen": self.seen_,
                "group": self.group_, "old_protos": self.old_protos_, "old_classes": self.old_classes_,
                "old_model": None if self.old_model_ is None else self.old_model_.state_dict()}

    def load_extra_state(self, state):
        dev = self.device
        self.proj_.load_state_dict(state["proj"])
        with torch.no_grad():
            self.protos_.copy_(state["protos"].to(dev))
        self.seen_ = state["seen"].to(dev)
        self.group_ = state["group"].to(dev)
        self.old_protos_ = None if state["old_protos"] is None else state["old_protos"].to(dev)
        self.old_classes_ = state["old_classes"].to(dev)
        self.old_model_ = None if state["old_model"] is None else frozen_copy(self.model, state["old_model"])
