"""ACIL: analytic class-incremental learning.

Zhuang, Weng, Wei, Xie, Toh & Lin (2022), "ACIL: Analytic Class-Incremental Learning with
Absolute Memorization and Privacy Protection" (NeurIPS 2022, arXiv:2205.14922). Official code:
github.com/ZHUANGHP/Analytic-continual-learning (``analytic/ACIL.py``).

- Base training (the paper's phase 0): the network is trained by back-propagation on the first
  experience; afterwards the feature extractor is frozen. Here ``acil_base_training=True`` does
  this when the backbone has trainable parameters; on pretrained frozen features (a backbone
  without parameters) nothing is trained by gradient at all.
- Feature expansion ("buffer layer"): X = ReLU(F B^T) with B a fixed random
  ``acil_buffer_size`` x d matrix (no bias, torch.nn.Linear's default uniform init, as the
  official ``RandomBuffer``); ``acil_activation="identity"`` drops the ReLU.
- Classifier: ridge regression onto one-hot labels, W = (X^T X + gamma I)^-1 X^T Y, re-aligned
  on the first experience's data and then updated recursively with the autocorrelation memory
  R = (X^T X + gamma I)^-1 (Woodbury identity, ACIL Eqs. 9-10) -- no gradient step, no stored
  sample. The incremental W equals the joint solution on all data seen (the paper's absolute
  memorization / weight-invariant property). Float64 throughout (``lifelong.strategies._analytic``).
- Prediction: X W over the label space, ``-inf`` for labels not learned yet; with task ids only
  the task's labels compete.

Defaults: ``acil_buffer_size=8192`` and ``acil_gamma=0.1`` are the official code's defaults
(``config.py``: ``--buffer-size 8192``, ``--gamma 0.1``; its PILOT port notes 8192 for CIFAR-100,
16384 for ImageNet). The G-ACIL/GACL paper runs ACIL with a 5000-wide buffer. R is
buffer_size^2 float64 (512 MiB at 8192); lower ``acil_buffer_size`` on small machines.

ACIL assumes the classic class-incremental protocol: every experience brings classes never seen
before. A stream in which a class comes back (domain-IL, blurry streams) is refused with a clear
error; G-ACIL (``gacil``) is the same recursion without that assumption.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ..errors import ConfigError
from ._analytic import Activation, AnalyticStrategy


class ACIL(AnalyticStrategy):
    name = "acil"
    paper = ("Zhuang et al. 2022, ACIL: Analytic Class-Incremental Learning with Absolute Memorization "
             "and Privacy Protection")
    scenarios = ("class", "task")
    prefix = "acil"

    def __init__(self, acil_buffer_size: Annotated[int, Field(ge=1)] = 8192,
                 acil_gamma: Annotated[float, Field(gt=0)] = 0.1, acil_activation: Activation = "relu",
                 acil_base_training: bool = True):
        super().__init__()
        self.acil_buffer_size = acil_buffer_size
        self.acil_gamma = acil_gamma
        self.acil_activation = acil_activation
        self.acil_base_training = acil_base_training

    def check_experience(self, exp):
        if self.seen_ is None:
            return
        again = sorted(c for c in exp.classes if c < len(self.seen_) and bool(self.seen_[c]))
        if again:
            raise ConfigError(f"ACIL learns each class in one experience, but experience {exp.index} brings back "
                              f"class(es) {again} seen before; use strategy 'gacil' (G-ACIL) for streams in which "
                              "classes reappear (domain-IL, blurry streams)")
