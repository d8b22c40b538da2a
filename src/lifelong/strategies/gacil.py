"""G-ACIL (GACL): analytic learning for exemplar-free generalized class-incremental learning.

Zhuang, Chen, Fang, He, Tong, Wei, Zeng & Chen (2024), "G-ACIL: Analytic Learning for
Exemplar-Free Generalized Class Incremental Learning" (arXiv:2403.15706), published as "GACL:
Exemplar-Free Generalized Analytic Continual Learning" (NeurIPS 2024). Code:
github.com/CHEN-YIZHU/GACL and github.com/ZHUANGHP/Analytic-continual-learning.

Generalized CIL: an experience may mix classes seen before ("exposed") with new ones
("unexposed"), in any proportion -- blurry streams, domain-IL (every label in every
experience), new classes appearing mid-stream. G-ACIL keeps ACIL's frozen features, random
buffer layer and recursive ridge regression, and decomposes each block's one-hot label matrix
into exposed columns (updated like every column) and unexposed columns (appended to W); the
recursion W <- W + R X^T (Y - X W) with R updated by the Woodbury identity does exactly that and
keeps the weight-invariant property: after any sequence of experiences, W equals the ridge
solution on all data seen jointly, whatever the class overlap between experiences. See
``lifelong.strategies._analytic`` for the equations; float64 throughout.

- Base training (``gacil_base_training=True``): as ACIL, when the backbone has trainable
  parameters the first experience trains the network by gradient, then it is frozen. GACL itself
  uses a frozen pretrained ViT (nothing to train).
- Defaults: ``gacil_buffer_size=5000`` and ``gacil_gamma=100``, the paper's values (Sec. 5,
  "gamma = 100 determined by grid search over {0, 10, 100, 500, 1000, 10000} on CIFAR-100; the
  buffer layer size is 5000 for both GACL and ACIL"; ``scripts/gacl.sh``: HIDDEN=5000, GAMMA=100).
  Activation ReLU (the official expansion ``Linear(bias=False) -> ReLU``).
- The paper updates per online mini-batch (``online_iter`` repeats each batch 3 times in its
  scripts, which re-weights samples); here each experience's data is absorbed once, at its end
  -- by the invariance the result equals absorbing it batch by batch, once per sample.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ._analytic import Activation, AnalyticStrategy


class GACIL(AnalyticStrategy):
    name = "gacil"
    paper = "Zhuang et al. 2024, G-ACIL / GACL: Exemplar-Free Generalized Analytic Continual Learning"
    scenarios = ("class", "task", "domain")
    prefix = "gacil"

    def __init__(self, gacil_buffer_size: Annotated[int, Field(ge=1)] = 5000,
                 gacil_gamma: Annotated[float, Field(gt=0)] = 100.0, gacil_activation: Activation = "relu",
                 gacil_base_training: bool = True):
        super().__init__()
        self.gacil_buffer_size = gacil_buffer_size
        self.gacil_gamma = gacil_gamma
        self.gacil_activation = gacil_activation
        self.gacil_base_training = gacil_base_training
