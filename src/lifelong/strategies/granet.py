"""GraNet: gradual magnitude pruning with zero-cost neuroregeneration.

Liu, Chen, Chen, Atashgahi, Yin, Kou, Shen, Pechenizkiy, Wang & Mocanu (NeurIPS 2021), "Sparse
Training via Boosting Pruning Plasticity with Neuroregeneration" (arXiv:2106.10404); reference
code github.com/VITA-Group/GraNet (``CIFAR/sparselearning/core.py``, ``Masking.step``).

A sparse-training method, not a continual-learning one: it makes any stream's training sparse.
The backbone's Linear/Conv2d weights start at sparsity ``granet_init_sparsity`` (ERK allocation;
0 = dense-to-sparse) and, every ``granet_update_every`` optimizer steps (Delta T):

1. gradual magnitude pruning: the active weights with the smallest |w| over all masked layers
   (one global ranking) are removed down to the density of Zhu & Gupta's cubic schedule
   ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n Delta T))^3``, from the window's start t0 to its
   end t0 + n Delta T, after which the sparsity is ``granet_final_sparsity``;
2. zero-cost neuroregeneration (``granet_regenerate``): in every layer a fraction r_t of its
   active weights, those of smallest magnitude, is pruned and as many are regrown where the
   dense gradient of this step is largest, the new weights 0. The sparsity does not change
   (hence zero cost), only where the connections are. r_t is cosine-annealed from
   ``granet_prune_fraction`` to 0.005 (the code's ``CosineDecay``).

After every optimizer step the pruned weights are set back to exactly 0 (``lifelong.sparse``:
gradients stay dense, so step 2 reads them; the optimizer's momentum is zeroed where a weight
grows). With ``granet_regenerate=False`` the method is gradual magnitude pruning (GMP, the code's
``--method GMP``), the paper's baseline.

Defaults, from the reference code and its README/scripts (CIFAR, ResNet-50 / VGG-19):
``granet_final_sparsity=0.9`` (README; ``--final-density 0.10``), ``granet_init_sparsity=0.5``
(the scripts' sparse-to-sparse GraNet, ``--init-density 0.50``; the paper also reports s_i = 0),
ERK, ``granet_update_every=1000`` (``--update-frequency 1000``), ``granet_prune_fraction=0.5``
(``--prune-rate 0.5``), pruning window from the start to half of training (``--final-prune-epoch
80`` of 160 in the scripts: ``granet_prune_end=0.5``), every layer masked (no ``--rm-first``).

Where we differ:
- The schedules run per experience, over its iteration budget (``context.n_iterations``): the
  cubic window is ``[granet_prune_start, granet_prune_end]`` x that budget, and r_t anneals over
  it (the code: over the whole training run). The first experience reaches s_f and the sparsity
  then stays; later experiences regenerate only (global pruning never grows back).
- The masks cover the backbone only: heads (created per task in task-IL, outputs activated
  class by class in class-IL) stay dense. The reference masks every layer, the classifier too.
- The cubic schedule reaches s_f exactly at the window's end (the code stops one update
  earlier, at (1 - 1/n)); ERK draws exactly round(density x numel) weights per layer (the code:
  Bernoulli draws).
- Delta T = 1000 steps suits the paper's 60k-step CIFAR runs; on short streams set it so the
  window holds several updates (a warning says when an experience holds none after the window
  opens). An update after the window's end prunes straight to s_f (the code: none after it).
- ``after_step`` re-zeroes the pruned weights; composed with a method that reads the weights in
  its own ``after_step``, put ``granet`` first (``granet+si``).
"""
from __future__ import annotations

import warnings
from typing import Annotated, Literal

from pydantic import Field

from ..errors import ConfigError
from ..sparse import SparseMasks, cosine_fraction, cubic_sparsity
from .base import Strategy

REGROW_MIN = 0.005  # the floor of the reference code's CosineDecay (eta_min)


class GraNet(Strategy):
    name = "granet"
    paper = "Liu et al. 2021, Sparse Training via Boosting Pruning Plasticity with Neuroregeneration (NeurIPS)"
    scenarios = ("class", "task", "domain")

    def __init__(self, granet_final_sparsity: Annotated[float, Field(ge=0, lt=1)] = 0.9,
                 granet_init_sparsity: Annotated[float, Field(ge=0, lt=1)] = 0.5,
                 granet_distribution: Literal["erk", "uniform"] = "erk",
                 granet_update_every: Annotated[int, Field(ge=1)] = 1000,
                 granet_prune_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.5,
                 granet_prune_start: Annotated[float, Field(ge=0, lt=1)] = 0.0,
                 granet_prune_end: Annotated[float, Field(gt=0, le=1)] = 0.5,
                 granet_regenerate: bool = True,
                 granet_dense_first: bool = False):
        super().__init__()
        self.granet_final_sparsity = granet_final_sparsity
        self.granet_init_sparsity = granet_init_sparsity
        self.granet_distribution = granet_distribution
        self.granet_update_every = granet_update_every
        self.granet_prune_fraction = granet_prune_fraction
        self.granet_prune_start = granet_prune_start
        self.granet_prune_end = granet_prune_end
        self.granet_regenerate = granet_regenerate
        self.granet_dense_first = granet_dense_first

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        if self.granet_init_sparsity > self.granet_final_sparsity:
            raise ConfigError(f"strategy.granet_init_sparsity ({self.granet_init_sparsity}) must not exceed "
                              f"strategy.granet_final_sparsity ({self.granet_final_sparsity}): pruning only removes")
        if self.granet_prune_start >= self.granet_prune_end:
            raise ConfigError(f"strategy.granet_prune_start ({self.granet_prune_start}) must be below "
                              f"strategy.granet_prune_end ({self.granet_prune_end})")
        # drawn now; applied when training starts, so that loading a saved state never zeroes its weights
        self.masks_ = SparseMasks(model.backbone, self.granet_init_sparsity, self.granet_distribution,
                                  dense_first=self.granet_dense_first, generator=self.generator)
        self.masked_ = False
        return self

    def before_experience(self, exp):
        super().before_experience(exp)
        if not self.masked_:
            self.masks_.apply()
            self.masked_ = True

    def after_step(self, batch, logits):
        self.masks_.apply()  # pruned weights back to exactly 0 after the optimizer step
        ctx = self.context
        t, n = ctx.iteration + 1, ctx.n_iterations  # updates done in this experience, its budget
        start, end = self.granet_prune_start * n, self.granet_prune_end * n
        if t == 1 and (int(start) // self.granet_update_every + 1) * self.granet_update_every > n:
            self._warn_if_no_update(n)  # no mask update after the window opens in this experience
        if t % self.granet_update_every:
            return
        s_t = cubic_sparsity(t, self.granet_init_sparsity, self.granet_final_sparsity, start, end)
        self.masks_.prune_to(1.0 - s_t, optimizer=ctx.optimizer)
        if self.granet_regenerate:
            r_t = cosine_fraction(t, n, self.granet_prune_fraction, REGROW_MIN)
            self.masks_.regenerate(r_t, optimizer=ctx.optimizer)

    def _warn_if_no_update(self, n: int) -> None:
        if self.masks_.sparsity() < self.granet_final_sparsity - 1e-3:
            warnings.warn(f"granet: no mask update falls in this experience's pruning window ({n} iterations, "
                          f"granet_update_every={self.granet_update_every}), so the sparsity stays "
                          f"{self.masks_.sparsity():.3f}, not {self.granet_final_sparsity}; lower granet_update_every",
                          stacklevel=2)

    def extra_state(self):
        return {"masks": self.masks_.state_dict(), "masked": self.masked_}

    def load_extra_state(self, state):
        self.masks_.load_state_dict(state["masks"])
        self.masked_ = bool(state["masked"])
