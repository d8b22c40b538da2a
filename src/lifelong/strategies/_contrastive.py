"""What the online contrastive-replay methods (SCR, PCR, HPCR, UER) share: a reservoir memory
joined to every stream minibatch, a forward pass that keeps the features for the loss, the
class-IL head's weights as proxies, an augmented second view, and the two losses.

Subclasses set ``_aug_prefix`` (their ``<name>_aug_crop`` / ``_aug_flip`` / ``_aug_jitter``
parameters) or ``None`` (no augmentation), and override ``logits_from_features``.
"""
from __future__ import annotations

from typing import ClassVar, Optional

import torch
import torch.nn.functional as F

from ..augment import Augment
from ..errors import ConfigError
from ._memory import MemoryStrategy


def supcon_loss(z: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, "all" anchors, as the SCR/PCR code's
    ``SupConLoss`` without a base temperature) over L2-normalised rows ``z`` (N, d): for anchor
    i, minus the mean over positives p (same label, p != i) of
    ``z_i.z_p / T - log sum_{a != i} exp(z_i.z_a / T)``; anchors without a positive are skipped."""
    logits = (z @ z.T / temperature).masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device),
                                                 float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (y[:, None] == y[None, :]) & ~torch.eye(len(z), dtype=torch.bool, device=z.device)
    mean_pos = log_prob.masked_fill(~pos, 0.0).sum(1) / pos.sum(1).clamp_min(1)
    has = pos.any(1)
    return -mean_pos[has].mean() if has.any() else z.sum() * 0.0


def proxy_contrastive_loss(z: torch.Tensor, y: torch.Tensor, proxies: torch.Tensor, temperature: float) -> torch.Tensor:
    """PCR's loss (Lin et al. 2023, the code's ``SupConLoss(contrast_mode='proxy')``): anchor i
    (L2-normalised row of ``z``) is contrasted with the proxies of the labels IN THE BATCH only,
    one term per sample j (a class present k times counts k times):
    ``-[cos(z_i, w_{y_i}) / T - log sum_j exp(cos(z_i, w_{y_j}) / T)]``, averaged over anchors."""
    p = F.normalize(proxies[y], dim=1)
    logits = z @ p.T / temperature                       # (N, N): anchor i against sample j's proxy
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = y[:, None] == y[None, :]
    return -((log_prob * pos).sum(1) / pos.sum(1)).mean()


class ContrastiveReplay(MemoryStrategy):
    scenarios = ("class",)
    mem_policy = "reservoir"
    mem_per_class = None
    _aug_prefix: ClassVar[Optional[str]] = None

    def setup(self, model, device="cpu", seed=0):
        head = getattr(model, "head", None)
        if not isinstance(getattr(head, "linear", None), torch.nn.Linear) or not hasattr(head, "active"):
            raise ConfigError(f"strategy '{self.name}' uses the class-IL head's weights as class proxies: it needs "
                              "a head with one linear layer over all classes (head 'incremental' or 'single')")
        super().setup(model, device, seed)
        self._h = None  # features of the current minibatch (forward -> loss); not state
        return self

    # -- shared pieces -------------------------------------------------------------------
    @property
    def proxies(self) -> torch.Tensor:
        return self.model.head.linear.weight

    def masked(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.masked_fill(~self.model.head.active, float("-inf"))

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """A random augmented view of ``x`` (identity for non-image inputs or no augmentation)."""
        p = self._aug_prefix
        if p is None or x.ndim != 4:
            return x
        aug = Augment(crop=getattr(self, f"{p}_aug_crop"), crop_padding=max(1, x.shape[-1] // 8),
                      flip_p=0.5 if getattr(self, f"{p}_aug_flip") else 0.0,
                      jitter_p=0.8 if getattr(self, f"{p}_aug_jitter") else 0.0)
        return aug(x, self.generator)

    def logits_from_features(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.head(h)

    # -- hooks ---------------------------------------------------------------------------
    def augment(self, batch):
        if len(self.buffer_) == 0:
            return batch
        return batch.cat(*self.buffer_.sample(self.replay_batch_size or batch.n_new))

    def forward(self, batch):
        self._h = self.model.features(batch.x)
        return self.logits_from_features(self._h)

    def features_of(self, batch) -> torch.Tensor:
        """The features ``forward`` computed for this batch (recomputed if called without it)."""
        h = self._h
        return h if h is not None and len(h) == len(batch.y) else self.model.features(batch.x)
