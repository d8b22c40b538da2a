"""Hamiltonian Monte Carlo and the Gaussian density estimator of sequential Bayesian inference.

``hmc`` draws samples of a flat parameter vector from ``exp(-potential(theta))``: leapfrog
integration of Hamiltonian dynamics with unit mass (precondition by sampling a whitened
parameter, as ``seqbayes`` does), a Metropolis correction on the total energy, a burn-in
whose samples are dropped (the step size is adapted there by dual averaging, Hoffman &
Gelman 2014, Algorithm 5, towards ``target_accept``), and thinning. Every random draw comes
from the ``generator`` passed in (the momenta and the accept test), so a chain is a function
of its seed and starting point. No maintained torch HMC package is a
dependency: pyro-ppl (1.9.2) installs next to torch 2.13 and samples correctly, but draws
from the global torch RNG and cannot take a generator (see docs/bayesian.md).

``GaussianFit`` is the density estimator fitted to the samples: a full-covariance Gaussian
(optionally shrunk towards its diagonal) or a diagonal one. It maps a standard normal ``z``
to ``mean + L z`` (``L`` the Cholesky factor, or the standard deviations), which is the
whitening ``seqbayes`` samples in.

Checked in ``tests/test_seqbayes.py`` against the exact Gaussian posterior of a Bayesian
linear regression, one batch and two sequential halves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class HMCResult:
    samples: torch.Tensor   # (n_samples, D), after burn-in and thinning
    accept_rate: float      # mean Metropolis acceptance probability after burn-in
    step_size: float        # the step size used after burn-in (adapted, or the one given)


def _grad(potential: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor):
    theta = theta.detach().requires_grad_(True)
    with torch.enable_grad():
        u = potential(theta)
        (g,) = torch.autograd.grad(u, theta)
    return u.detach(), g.detach()


def hmc(potential: Callable[[torch.Tensor], torch.Tensor], init: torch.Tensor, *, n_samples: int, burn_in: int,
        step_size: float, n_leapfrog: int, generator: torch.Generator, thin: int = 1, adapt: bool = True,
        target_accept: float = 0.8) -> HMCResult:
    """``n_samples`` draws from ``exp(-potential)``, one every ``thin`` transitions after
    ``burn_in`` transitions. ``potential``: a differentiable scalar function of a flat vector
    (the negative log density up to a constant). ``adapt``: dual averaging of the step size
    during burn-in (a burn-in of 0 keeps ``step_size``)."""
    if n_samples < 1 or burn_in < 0 or thin < 1 or n_leapfrog < 1 or not step_size > 0:
        raise ValueError("hmc needs n_samples >= 1, burn_in >= 0, thin >= 1, n_leapfrog >= 1, step_size > 0")
    theta = init.detach().clone()
    u, g = _grad(potential, theta)
    if not math.isfinite(float(u)):
        raise ValueError("hmc: the potential is not finite at the initial point")
    eps = float(step_size)
    # dual averaging state (Hoffman & Gelman 2014, Algorithm 5; their gamma, t0, kappa)
    mu, h_bar, log_eps_bar, gamma, t0, kappa = math.log(10 * eps), 0.0, 0.0, 0.05, 10.0, 0.75
    out, accepts = [], []
    total = burn_in + n_samples * thin
    for it in range(total):
        p0 = torch.randn(theta.shape, generator=generator, dtype=theta.dtype).to(theta.device)
        th, p, gr = theta, p0 - 0.5 * eps * g, g
        for step in range(n_leapfrog):
            th = th + eps * p
            u_new, gr = _grad(potential, th)
            if step < n_leapfrog - 1:
                p = p - eps * gr
        p = p - 0.5 * eps * gr
        h0 = float(u) + 0.5 * float(p0 @ p0)
        h1 = float(u_new) + 0.5 * float(p @ p)
        log_a = h0 - h1 if math.isfinite(h1) else -math.inf
        a = math.exp(min(0.0, log_a))
        if float(torch.rand((), generator=generator)) < a:
            theta, u, g = th, u_new, gr
        if it < burn_in:
            if adapt:
                m = it + 1
                h_bar = (1 - 1 / (m + t0)) * h_bar + (target_accept - a) / (m + t0)
                log_eps = mu - math.sqrt(m) / gamma * h_bar
                w = m ** -kappa
                log_eps_bar = w * log_eps + (1 - w) * log_eps_bar
                eps = math.exp(log_eps)
                if it == burn_in - 1:
                    eps = math.exp(log_eps_bar)
        else:
            accepts.append(a)
            if (it - burn_in + 1) % thin == 0:
                out.append(theta.clone())
    return HMCResult(torch.stack(out), sum(accepts) / len(accepts), eps)


class GaussianFit:
    """A Gaussian N(mean, diag(std^2) + U U^T) fitted to samples (rows), kept as a square root:
    ``theta = mean + std * z1 + U z2`` with ``z = (z1, z2)`` standard normal maps N(0, I) onto
    it exactly, at a cost of O(D k) for k columns of ``U`` (never a D x D matrix).

    ``kind="full"``: the sample covariance C shrunk towards its diagonal,
    (1 - s) C + s diag(C) + floor I: ``U`` holds the principal directions of (1 - s) C (at most
    min(n - 1, D) columns, from a thin SVD of the centred samples), ``std^2 = s diag(C) +
    floor``. ``kind="diag"``: ``std^2 = diag(C) + floor`` and no ``U``. ``var_floor`` keeps a
    parameter the chain never moved from being frozen exactly."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, factor: torch.Tensor | None = None):
        self.mean, self.std = mean, std
        self.factor = factor if factor is not None else mean.new_zeros(len(mean), 0)

    @property
    def latent_dim(self) -> int:
        return len(self.mean) + self.factor.shape[1]

    @classmethod
    def fit(cls, samples: torch.Tensor, kind: str = "full", shrinkage: float = 0.0,
            var_floor: float = 0.0) -> "GaussianFit":
        x = samples.to(torch.float64)
        mean = x.mean(0)
        c = x - mean
        n = max(len(x) - 1, 1)
        var = c.pow(2).sum(0) / n
        if kind == "diag":
            return cls(mean, (var + var_floor).sqrt())
        _, sv, vh = torch.linalg.svd(c, full_matrices=False)
        keep = sv > sv.max().clamp_min(1e-300) * 1e-10 if len(sv) else sv > 0
        factor = vh[keep].T * (sv[keep] * math.sqrt((1 - shrinkage) / n))
        return cls(mean, (shrinkage * var + var_floor).sqrt(), factor)

    @classmethod
    def isotropic(cls, d: int, std: float, dtype=torch.float64) -> "GaussianFit":
        return cls(torch.zeros(d, dtype=dtype), torch.full((d,), float(std), dtype=dtype))

    def unwhiten(self, z: torch.Tensor) -> torch.Tensor:
        """``mean + std * z1 + U z2`` for ``z`` of shape (latent_dim,) or (n, latent_dim)."""
        d = len(self.mean)
        return self.mean + self.std * z[..., :d] + z[..., d:] @ self.factor.T

    def covariance(self) -> torch.Tensor:
        return torch.diag(self.std ** 2) + self.factor @ self.factor.T

    def to(self, *args) -> "GaussianFit":
        return GaussianFit(self.mean.to(*args), self.std.to(*args), self.factor.to(*args))

    def extend(self, d_new: int, std: float) -> "GaussianFit":
        """The same Gaussian with ``d_new`` independent N(0, std^2) coordinates appended (the
        prior of parameters that appear later: a new task's head)."""
        if d_new == 0:
            return self
        return GaussianFit(torch.cat([self.mean, self.mean.new_zeros(d_new)]),
                           torch.cat([self.std, self.std.new_full((d_new,), float(std))]),
                           torch.cat([self.factor, self.factor.new_zeros(d_new, self.factor.shape[1])]))
