"""NCM: nearest class mean on frozen (pretrained) features.

Janson, Zhang, Aljundi & Elhoseiny (2022), "A Simple Baseline that Questions the Use of
Pretrained-Models in Continual Learning" (NeurIPS 2022 Workshop on Distribution Shifts,
arXiv:2210.04428; code github.com/Pauljanson002/pretrained-cl). The same prototype classifier
is Zhou et al.'s SimpleCIL (2023, "Revisiting Class-Incremental Learning with Pre-Trained
Models: Generalizability and Adaptivity are All You Need", arXiv:2303.07338).

- No gradient training: after each experience the mean feature of every label in its training
  data is accumulated in closed form (running sums and counts, so a label that reappears --
  domain-IL, blurry streams -- gets the mean over all its data: "task-free by updating the
  means continually"). The network is used as a frozen feature extractor.
- Prediction: scores over the whole label space, ``-inf`` for labels without data; with task
  ids only the task's labels compete (task-IL).
- ``ncm_normalize=True``, ``ncm_distance="euclidean"`` (defaults): the paper's code
  L2-normalises every feature, averages the normalised features per class (the mean is not
  renormalised) and predicts the class whose mean is nearest in Euclidean distance
  (score = minus the distance).
- ``ncm_distance="cosine"``: score = cosine similarity to the class mean -- SimpleCIL's
  prototype classifier (SimpleCIL averages unnormalised features: ``ncm_normalize=False``).
- ``ncm_base_training=False`` (default, as both papers: the backbone is pretrained and never
  trained). ``True`` first trains the model by gradient on the first experience when its
  backbone has trainable parameters, then freezes it (see ``_frozen``); not a variant of the
  paper, an option for backbones that are not pretrained.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ._frozen import FrozenFeatureStrategy, check, check_choice


class NCM(FrozenFeatureStrategy):
    name = "ncm"
    paper = "Janson et al. 2022, A Simple Baseline that Questions the Use of Pretrained-Models in Continual Learning"
    scenarios = ("class", "task", "domain")
    # one mean per class: in task-IL a class shared by two tasks would mix their features
    task_disjoint_classes = True
    prefix = "ncm"

    def __init__(self, ncm_distance: Literal["euclidean", "cosine"] = "euclidean", ncm_normalize: bool = True,
                 ncm_base_training: bool = False):
        super().__init__()
        self.ncm_distance = ncm_distance
        self.ncm_normalize = ncm_normalize
        self.ncm_base_training = ncm_base_training

    def validate(self):
        super().validate()
        check_choice("ncm_distance", self.ncm_distance, ("euclidean", "cosine"))
        check(isinstance(self.ncm_normalize, bool), "'ncm_normalize' must be true or false")

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        self.sums_ = None    # (n_out, d) float64: sum of the (normalised) features of each label
        self.counts_ = None  # (n_out,) float64
        return self

    def _embed(self, f: torch.Tensor) -> torch.Tensor:
        f = f.double()
        return F.normalize(f, dim=1) if self.ncm_normalize else f

    @torch.no_grad()
    def after_experience(self, exp):
        super().after_experience(exp)
        f = self._embed(self.train_features(exp))
        y = exp.train.y.to(f.device)
        if self.sums_ is None:
            self.sums_ = f.new_zeros(len(self.seen_), f.shape[1])
            self.counts_ = f.new_zeros(len(self.seen_))
        self.sums_.index_add_(0, y, f)
        self.counts_.index_add_(0, y, torch.ones_like(y, dtype=f.dtype))
        self._feature_cache = None

    def prototypes(self) -> torch.Tensor:
        """Class means (n_out, d); zero rows for labels without data (masked in ``predict``)."""
        return self.sums_ / self.counts_.clamp_min(1).unsqueeze(1)

    @torch.no_grad()
    def predict(self, x, task=None):
        if self.sums_ is None:
            return self.model(x, task)
        f, mu = self._embed(self.features(x)), self.prototypes()
        if self.ncm_distance == "euclidean":
            scores = -torch.cdist(f, mu)
        else:
            scores = F.normalize(f, dim=1) @ F.normalize(mu, dim=1).T
        return self.mask(scores, task).float()

    def extra_state(self):
        return super().extra_state() | {"sums": self.sums_, "counts": self.counts_}

    def load_extra_state(self, state):
        super().load_extra_state(state)
        self.sums_ = None if state["sums"] is None else state["sums"].to(self.device)
        self.counts_ = None if state["counts"] is None else state["counts"].to(self.device)
