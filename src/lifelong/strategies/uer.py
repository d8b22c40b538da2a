"""UER: unbias experience replay.

Lin, Feng, Zhang, Qiao, Li & Ye (2023), "UER: A Heuristic Bias Addressing Approach for Online
Continual Learning" (ACM MM 2023, arXiv:2309.04081).

The dot-product logit of class c splits into a norm factor and an angle factor,
``h . w_c = (||h|| ||w_c||) * cos(h, w_c)`` (:func:`angle_norm`). The paper finds the bias
towards the newest classes mostly in the angle factor, and that the norm factor helps keep
old knowledge. So UER learns the CURRENT (stream) samples by the angle factor only -- the
cross-entropy of ``cos / uer_temperature`` -- and REPLAYS the stored samples by both factors --
the cross-entropy of the dot-product logits; the loss is the sum of the two means. Predictions
are the dot-product logits (norm and angle). The memory is a reservoir, ``replay_batch_size``
samples (default: the stream batch's size) joined to every stream batch.

Defaults: memory 1000, 10 + 10 samples per step, as in the authors' PCR code base. Where we
differ / what we could not check: the authors' repository (FelixHuiweiLin/UER) held only a
README when we looked, so the temperature (0.09, the value of their ``cosLinear``) and the
plain sum of the two losses are our reading of the paper, not checked against its code; the
head's bias is not used (the decomposition is of ``h . w``); no augmentation.
"""
from typing import Annotated, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from ._contrastive import ContrastiveReplay


def angle_norm(h: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos(h_i, w_c), ||h_i|| ||w_c||), both (N, C); their product is ``h @ w.T``."""
    return F.normalize(h, dim=1) @ F.normalize(w, dim=1).T, h.norm(dim=1, keepdim=True) * w.norm(dim=1)[None, :]


class UER(ContrastiveReplay):
    name = "uer"
    paper = "Lin et al. 2023, UER: A Heuristic Bias Addressing Approach for Online Continual Learning"

    def __init__(self, mem_size: Annotated[int, Field(ge=1)] = 1000,
                 replay_batch_size: Optional[Annotated[int, Field(ge=1)]] = None,
                 uer_temperature: Annotated[float, Field(gt=0)] = 0.09):
        super().__init__()
        self.mem_size = mem_size
        self.replay_batch_size = replay_batch_size
        self.uer_temperature = uer_temperature

    def logits_from_features(self, h):
        return self.masked(h @ self.proxies.T)

    def loss(self, logits, batch):
        n = batch.n_new
        cos, norm = angle_norm(self.features_of(batch), self.proxies)
        loss = F.cross_entropy(self.masked(cos[:n] / self.uer_temperature), batch.y[:n])
        if len(batch.y) > n:
            loss = loss + F.cross_entropy(self.masked(norm[n:] * cos[n:]), batch.y[n:])
        return loss

    @torch.no_grad()
    def predict(self, x, task=None):
        return self.logits_from_features(self.model.features(x))
