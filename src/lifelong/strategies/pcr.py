"""PCR: proxy-based contrastive replay.

Lin, Zhang, Feng, Li & Ye (2023), "PCR: Proxy-based Contrastive Replay for Online
Class-Incremental Continual Learning" (CVPR 2023); the authors' code is ``agents/pcr.py`` and
``utils/loss.py`` of FelixHuiweiLin/PCR.

- Each stream minibatch is joined by ``replay_batch_size`` samples drawn uniformly from a
  reservoir memory; the joined batch and one augmented view of it go through the backbone.
- Loss (:func:`~lifelong.strategies._contrastive.proxy_contrastive_loss`): every feature is
  an anchor, contrasted at temperature ``pcr_temperature`` against the class proxies (the
  rows of the class-IL head's weight, L2-normalised) of the labels present in the joined
  batch only -- the anchor-to-proxy pairs are selected by the anchor-to-sample pairs, which is
  what keeps the classes absent from the batch (old ones, mostly) from being pushed down.
- Prediction and training logits: cosine similarity of features and proxies over
  ``pcr_temperature`` (the code's ``cosLinear``, no bias), ``-inf`` for inactive classes.

Defaults from the code: temperature 0.09, memory batch = stream batch (10 and 10), memory
1000, augmentation ``RandomResizedCrop(scale=(0.2, 1))``, flips, colour jitter (``lifelong
.augment``). Where we differ: the proxies are the model's own head weights (the code adds a
separate bias-free ``pcrLinear``; our head's bias is unused); flips off by default (digits);
while the memory is empty the code makes no update, we train on the stream batch alone.
"""
from typing import Annotated, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from ._contrastive import ContrastiveReplay, proxy_contrastive_loss


class PCR(ContrastiveReplay):
    name = "pcr"
    paper = "Lin et al. 2023, PCR: Proxy-based Contrastive Replay for Online Class-Incremental Continual Learning"
    _aug_prefix = "pcr"

    def __init__(self, mem_size: Annotated[int, Field(ge=1)] = 1000,
                 replay_batch_size: Optional[Annotated[int, Field(ge=1)]] = None,
                 pcr_temperature: Annotated[float, Field(gt=0)] = 0.09,
                 pcr_aug_crop: Literal["resized", "pad", "none"] = "resized",
                 pcr_aug_flip: bool = False, pcr_aug_jitter: bool = True):
        super().__init__()
        self.mem_size = mem_size
        self.replay_batch_size = replay_batch_size
        self.pcr_temperature = pcr_temperature
        self.pcr_aug_crop = pcr_aug_crop
        self.pcr_aug_flip = pcr_aug_flip
        self.pcr_aug_jitter = pcr_aug_jitter

    def logits_from_features(self, h):
        cos = F.normalize(h, dim=1) @ F.normalize(self.proxies, dim=1).T
        return self.masked(cos / self.pcr_temperature)

    def contrastive_parts(self, batch):
        """(features of both views (2N, d), their labels (2N,), the proxy loss)."""
        h = torch.cat([self.features_of(batch), self.model.features(self.view(batch.x))])
        y = torch.cat([batch.y, batch.y])
        return h, y, proxy_contrastive_loss(F.normalize(h, dim=1), y, self.proxies, self.pcr_temperature)

    def loss(self, logits, batch):
        return self.contrastive_parts(batch)[2]

    @torch.no_grad()
    def predict(self, x, task=None):
        return self.logits_from_features(self.model.features(x))
