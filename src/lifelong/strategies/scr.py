"""SCR: supervised contrastive replay.

Mai, Li, Kim & Sanner (2021), "Supervised Contrastive Replay: Revisiting the Nearest Class Mean
Classifier in Online Class-Incremental Continual Learning" (CVPR Workshops 2021); the authors'
code is ``agents/scr.py`` of RaptorMai/online-continual-learning (also in FelixHuiweiLin/PCR).

- Each stream minibatch is joined by ``replay_batch_size`` samples drawn uniformly from a
  reservoir memory (``mem_size``); the joined batch and one augmented view of it go through the
  backbone and a projection head (``proj_``: d -> d -> ``scr_proj_dim``, ReLU, L2-normalised),
  and the loss is the supervised contrastive loss (Khosla et al. 2020) over both views at
  temperature ``scr_temperature``. No cross-entropy: the linear head is never trained.
- Prediction: nearest class mean, over the L2-normalised backbone features (not the
  projection) of every stored sample, with the current model; classes without stored samples
  score ``-inf``.

Defaults from the paper / code: temperature 0.07, projection to 128, 100 replayed samples per
10 stream samples, augmentation ``RandomResizedCrop(scale=(0.2, 1))``, flips, colour jitter
(``lifelong.augment``); ``mem_size`` 1000 (the paper studies 1k-10k). Where we differ: flips
are off by default (digits; ``scr_aug_flip``); grayscale-conversion only acts on RGB; while the
memory is empty the code skips the update, we train on the stream batch alone; the crop's
padding (``scr_aug_crop="pad"``) is an eighth of the image side.
"""
from typing import Annotated, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ._contrastive import ContrastiveReplay, supcon_loss


class SCR(ContrastiveReplay):
    name = "scr"
    paper = "Mai et al. 2021, Supervised Contrastive Replay (CVPR-W)"
    _aug_prefix = "scr"

    def __init__(self, mem_size: Annotated[int, Field(ge=1)] = 1000,
                 replay_batch_size: Optional[Annotated[int, Field(ge=1)]] = 100,
                 scr_temperature: Annotated[float, Field(gt=0)] = 0.07,
                 scr_proj_dim: Annotated[int, Field(ge=1)] = 128,
                 scr_aug_crop: Literal["resized", "pad", "none"] = "resized",
                 scr_aug_flip: bool = False, scr_aug_jitter: bool = True):
        super().__init__()
        self.mem_size = mem_size
        self.replay_batch_size = replay_batch_size
        self.scr_temperature = scr_temperature
        self.scr_proj_dim = scr_proj_dim
        self.scr_aug_crop = scr_aug_crop
        self.scr_aug_flip = scr_aug_flip
        self.scr_aug_jitter = scr_aug_jitter

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        d = self.model.head.linear.in_features
        with torch.random.fork_rng(devices=[]):  # own initialisation, independent of the global RNG
            torch.manual_seed(seed + 3)
            self.proj_ = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, self.scr_proj_dim)).to(self.device)
        return self

    def param_groups(self):
        return [{"params": list(self.model.parameters()) + list(self.proj_.parameters())}]

    def loss(self, logits, batch):
        h = torch.cat([self.features_of(batch), self.model.features(self.view(batch.x))])
        z = F.normalize(self.proj_(h), dim=1)
        return supcon_loss(z, torch.cat([batch.y, batch.y]), self.scr_temperature)

    @torch.no_grad()
    def predict(self, x, task=None):
        if len(self.buffer_) == 0:
            return self.model(x, task)
        mem = self.buffer_.get()
        feats = torch.cat([F.normalize(self.model.features(mem["x"][s:s + 500]), dim=1)
                           for s in range(0, len(mem["y"]), 500)])
        n = self.model.head.linear.out_features
        sums = feats.new_zeros(n, feats.shape[1]).index_add_(0, mem["y"], feats)
        known = torch.bincount(mem["y"], minlength=n) > 0
        means = F.normalize(sums, dim=1)
        dist = torch.cdist(F.normalize(self.model.features(x), dim=1), means)
        return (-dist).masked_fill(~known, float("-inf"))

    def extra_state(self):
        return super().extra_state() | {"proj": self.proj_.state_dict()}

    def load_extra_state(self, state):
        super().load_extra_state(state)
        self.proj_.load_state_dict(state["proj"])
