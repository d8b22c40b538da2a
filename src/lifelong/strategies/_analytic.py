"""Analytic (closed-form) class-incremental learning, shared by ACIL and G-ACIL.

Zhuang et al. (2022), ACIL (NeurIPS 2022), and Zhuang et al. (2024), G-ACIL / GACL (NeurIPS 2024,
arXiv:2403.15706). Official code: github.com/ZHUANGHP/Analytic-continual-learning
(``analytic/AnalyticLinear.py``: ``RecursiveLinear``, ``analytic/Buffer.py``: ``RandomBuffer``).

The classifier is ridge regression onto one-hot labels over *all* data seen so far,

    W = argmin_W ||Y - X W||^2 + gamma ||W||^2 = (X^T X + gamma I)^-1 X^T Y,

where X are the frozen features expanded by a random "buffer layer" (X = act(F B^T), B fixed
random, ACIL's feature expansion), computed without storing any past sample. The recursion keeps
the regularised autocorrelation inverse R = (X^T X + gamma I)^-1 (ACIL's "autocorrelation memory
matrix", initialised to I / gamma) and, for each new block (X_k, Y_k), applies the Woodbury
identity (ACIL Eq. 10 / G-ACIL)::

    K   = I + X_k R X_k^T                    (n x n, SPD)
    R  <- R - R X_k^T K^-1 X_k R
    W  <- W + R X_k^T (Y_k - X_k W)          (R already updated; R_new X_k^T = R_old X_k^T K^-1)

Y_k is one-hot over the columns of W (G-ACIL's decomposition into exposed and unexposed
classes: a label column not seen before is appended with zeros, and a label seen before is
updated like any other column). The result equals the joint solution on all blocks exactly (up
to float rounding; float64 throughout): the weight-invariant property, for any partition of the
data into phases and any order in which classes appear.

Blocks are processed in chunks of at most ``min(dim, 1024)`` rows so the n x n system never
exceeds R in size.
"""
from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ._frozen import FrozenFeatureStrategy, check, check_choice

Activation = Literal["relu", "identity"]
ACTIVATIONS = get_args(Activation)


class RecursiveRidge:
    """Ridge regression ``W = (X^T X + gamma I)^-1 X^T Y`` over every row ever given to
    ``update``, maintained recursively (recursive least squares). Float64."""

    def __init__(self, dim: int, gamma: float, n_out: int = 0, device=None, dtype=torch.float64):
        if gamma <= 0:
            raise ConfigError(f"the ridge regularisation gamma must be > 0, got {gamma}")
        self.gamma = gamma
        self.R = torch.eye(dim, dtype=dtype, device=device) / gamma
        self.W = torch.zeros(dim, n_out, dtype=dtype, device=device)

    @property
    def dim(self) -> int:
        return self.R.shape[0]

    @torch.no_grad()
    def update(self, X: torch.Tensor, Y: torch.Tensor, chunk: int | None = None) -> None:
        """Absorb rows ``X`` (n, dim) with targets ``Y`` (n, c). More columns than ``W`` has
        append zero columns to ``W`` (labels never seen); fewer are padded with zeros."""
        X, Y = X.to(self.R), Y.to(self.R)
        if Y.shape[1] > self.W.shape[1]:
            self.W = torch.cat([self.W, self.W.new_zeros(self.dim, Y.shape[1] - self.W.shape[1])], dim=1)
        elif Y.shape[1] < self.W.shape[1]:
            Y = torch.cat([Y, Y.new_zeros(len(Y), self.W.shape[1] - Y.shape[1])], dim=1)
        chunk = chunk or min(self.dim, 1024)
        for s in range(0, len(X), chunk):
            x, y = X[s:s + chunk], Y[s:s + chunk]
            rxt = self.R @ x.T                                       # R X^T  (dim, n)
            k = x @ rxt
            k.diagonal().add_(1.0)                                   # K = I + X R X^T = L L^T
            L = torch.linalg.cholesky(k)
            v = torch.linalg.solve_triangular(L, rxt.T, upper=False)  # L^-1 X R  (n, dim)
            self.R.addmm_(v.T, v, alpha=-1.0)                        # R -= R X^T K^-1 X R, in place
            g = torch.linalg.solve_triangular(L.T, v, upper=True)    # K^-1 X R; g^T = R_new X^T
            self.W.addmm_(g.T, y - x @ self.W)

    def state_dict(self) -> dict:
        return {"gamma": self.gamma, "R": self.R, "W": self.W}

    @classmethod
    def from_state(cls, state: dict, device=None) -> "RecursiveRidge":
        out = cls.__new__(cls)
        out.gamma, out.R, out.W = state["gamma"], state["R"].to(device), state["W"].to(device)
        return out


def joint_ridge(X: torch.Tensor, Y: torch.Tensor, gamma: float) -> torch.Tensor:
    """The joint (non-incremental) solution ``(X^T X + gamma I)^-1 X^T Y`` in float64."""
    X, Y = X.double(), Y.double()
    A = X.T @ X
    A.diagonal().add_(gamma)
    return torch.linalg.solve(A, X.T @ Y)


class AnalyticStrategy(FrozenFeatureStrategy):
    """Frozen features -> random buffer layer -> recursive ridge classifier. Subclasses store
    ``<prefix>_buffer_size``, ``<prefix>_gamma``, ``<prefix>_activation``, ``<prefix>_base_training``."""

    def _p(self, key: str):
        return getattr(self, f"{self.prefix}_{key}")

    def validate(self):
        super().validate()
        size, gamma = self._p("buffer_size"), self._p("gamma")
        check(isinstance(size, int) and size >= 1, f"'{self.prefix}_buffer_size' must be an integer >= 1, got {size!r}")
        check(isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma > 0,
              f"'{self.prefix}_gamma' (ridge regularisation) must be > 0, got {gamma!r}")
        check_choice(f"{self.prefix}_activation", self._p("activation"), ACTIVATIONS)

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        self.buffer_ = None  # (buffer_size, d) float64: the fixed random expansion weights
        self.ridge_ = None
        return self

    def expand(self, f: torch.Tensor) -> torch.Tensor:
        """The buffer layer: ``act(f B^T)`` in float64."""
        if self.buffer_ is None:  # drawn once, when the feature width is known (seeded)
            d = f.shape[1]
            bound = 1.0 / math.sqrt(d)  # torch.nn.Linear's default init, as the official RandomBuffer
            b = torch.rand(self._p("buffer_size"), d, generator=self.generator, dtype=torch.float64)
            self.buffer_ = ((2 * b - 1) * bound).to(self.device)
        x = f.to(self.buffer_) @ self.buffer_.T
        return F.relu(x) if self._p("activation") == "relu" else x

    def check_experience(self, exp) -> None:
        """Hook for ACIL's phase assumption."""

    def before_experience(self, exp):
        self.check_experience(exp)
        super().before_experience(exp)

    @torch.no_grad()
    def after_experience(self, exp):
        super().after_experience(exp)
        f = self.train_features(exp)
        self._feature_cache = None
        y = exp.train.y.to(self.device)
        if self.ridge_ is None:
            self.ridge_ = RecursiveRidge(self._p("buffer_size"), float(self._p("gamma")), len(self.seen_),
                                         device=self.device)
        chunk = min(self._p("buffer_size"), 1024)
        for s in range(0, len(y), chunk):  # expand chunk by chunk: n x buffer_size never at once
            X = self.expand(f[s:s + chunk])
            self.ridge_.update(X, F.one_hot(y[s:s + chunk], len(self.seen_)).to(X), chunk)

    @torch.no_grad()
    def predict(self, x, task=None):
        if self.ridge_ is None:
            return self.model(x, task)
        f = self.features(x)
        scores = torch.cat([self.expand(f[s:s + 1024]) @ self.ridge_.W for s in range(0, max(len(f), 1), 1024)])
        return self.mask(scores, task).float()

    def extra_state(self):
        return super().extra_state() | {"buffer": self.buffer_,
                                        "ridge": None if self.ridge_ is None else self.ridge_.state_dict()}

    def load_extra_state(self, state):
        super().load_extra_state(state)
        self.buffer_ = None if state["buffer"] is None else state["buffer"].to(self.device)
        self.ridge_ = None if state["ridge"] is None else RecursiveRidge.from_state(state["ridge"], self.device)
