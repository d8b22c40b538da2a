"""Sequential Bayesian inference with HMC: the posterior of one experience is the next prior.

Kessler, Cobb, Rudner, Zohren & Roberts (2023), "On Sequential Bayesian Inference for
Continual Learning" (Entropy 25(6):884; arXiv:2301.01828), Section 3; reference code
github.com/skezle/bayes_cl_posterior (``src/main.py``, with the authors' ``hamiltorch``).

For each experience, Hamiltonian Monte Carlo (``lifelong.hmc``) samples every parameter of a
small network from its posterior given the experience's training data (full batch, the
model's categorical likelihood), under a prior that is a density estimator fitted to the
previous experience's samples; the first prior is N(0, 1/``seqbayes_prior_precision``).
Predictions average the softmax of the network over the kept samples. No gradient step of
the training loop runs (``train_data`` is ``None``; ``train.iterations`` is not used).

- Density estimator (``seqbayes_density``): ``full``, one Gaussian with the samples' full
  covariance shrunk towards its diagonal by ``seqbayes_shrinkage`` (0.1: with fewer samples
  than parameters the sample covariance is singular); ``diag``, a mean-field Gaussian. The
  paper fits a Gaussian mixture (number of components picked on held-out samples, up to
  100) or a RealNVP flow; one Gaussian is exact for a Bayesian linear regression
  (``tests/test_seqbayes.py`` checks the sequential posterior against the batch one) and is
  the mixture with one component.
- HMC is run on whitened parameters ``theta = mean + std * z1 + U z2`` (the prior's square
  root, ``lifelong.hmc.GaussianFit``: O(D k), no D x D matrix), so the prior is N(0, I) in
  ``z``: HMC preconditioned by the prior, which keeps one step size workable when the prior
  becomes narrow. Parameters that appear later (a new task's head in task-IL) get the
  N(0, 1/precision) prior, independent of the rest. Each chain starts from a draw of the
  prior; the step size is adapted during burn-in (dual averaging, target acceptance 0.8).
- Paper / reference-code settings: prior precision 10, step size 0.001 (fixed), 20 leapfrog
  steps, burn-in 1000, 2500-5000 samples thinned by 5, 10-20 chains. Our defaults are far
  smaller (burn-in 20, 20 samples, 5 leapfrog steps, one chain, initial step size 0.05,
  adapted) so that the shared test suites stay fast: they are a smoke-test budget, not a
  converged chain; ``docs/bayesian.md`` gives the settings of the measured runs.
- ``seqbayes_max_data``: the posterior of a random subset of that many training samples per
  experience (``None``: all; the paper's toy uses 800 per task). ``seqbayes_max_params``
  (5000): HMC over every parameter and a D x D covariance are only affordable for small
  networks; a larger model is refused with one message when it is set up (and when a new
  head takes it over the cap).
- The model's own parameters are set to the posterior mean after each experience (so a
  checkpoint holds a sensible network); predictions use the samples.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch.func import functional_call

from ..errors import ConfigError
from ..hmc import GaussianFit, hmc
from ..sparse import forward_flops
from .base import Strategy


class SeqBayes(Strategy):
    name = "seqbayes"
    paper = "Kessler, Cobb, Rudner, Zohren & Roberts 2023, On Sequential Bayesian Inference for Continual Learning"
    scenarios = ("task", "class", "domain")

    def __init__(self, seqbayes_samples: Annotated[int, Field(ge=1)] = 20,
                 seqbayes_burn_in: Annotated[int, Field(ge=0)] = 20,
                 seqbayes_thin: Annotated[int, Field(ge=1)] = 1,
                 seqbayes_leapfrog: Annotated[int, Field(ge=1)] = 5,
                 seqbayes_step_size: Annotated[float, Field(gt=0)] = 0.05,
                 seqbayes_adapt: bool = True,
                 seqbayes_chains: Annotated[int, Field(ge=1)] = 1,
                 seqbayes_prior_precision: Annotated[float, Field(gt=0)] = 10.0,
                 seqbayes_density: Literal["full", "diag"] = "full",
                 seqbayes_shrinkage: Annotated[float, Field(ge=0, le=1)] = 0.1,
                 seqbayes_max_data: Optional[Annotated[int, Field(ge=1)]] = None,
                 seqbayes_max_params: Annotated[int, Field(ge=1)] = 5000):
        super().__init__()
        self.seqbayes_samples = seqbayes_samples
        self.seqbayes_burn_in = seqbayes_burn_in
        self.seqbayes_thin = seqbayes_thin
        self.seqbayes_leapfrog = seqbayes_leapfrog
        self.seqbayes_step_size = seqbayes_step_size
        self.seqbayes_adapt = seqbayes_adapt
        self.seqbayes_chains = seqbayes_chains
        self.seqbayes_prior_precision = seqbayes_prior_precision
        self.seqbayes_density = seqbayes_density
        self.seqbayes_shrinkage = seqbayes_shrinkage
        self.seqbayes_max_data = seqbayes_max_data
        self.seqbayes_max_params = seqbayes_max_params

    @property
    def gradient_free(self) -> bool:
        return True  # no step of the loop: a composed member's training hooks would never run

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        self._check_size()
        self.names_: list[str] = []            # parameter order of the flat vectors below
        # the fitted posterior, the next experience's prior: N(mean, diag(std^2) + factor factor^T)
        self.prior_mean_: torch.Tensor | None = None    # (D,)
        self.prior_std_: torch.Tensor | None = None     # (D,)
        self.prior_factor_: torch.Tensor | None = None  # (D, k), k <= samples; (D, 0) for "diag"
        self.samples_: torch.Tensor | None = None      # (S, D) HMC samples of the latest posterior
        self.accept_: list[float] = []         # mean acceptance rate per experience
        self.step_sizes_: list[float] = []     # step size after burn-in per experience
        self.flops_ = 0                        # HMC's cost: potential evaluations x data x forward FLOPs
        self.potential_calls_ = 0              # (a gradient evaluation counts 3 forwards)
        return self

    def _check_size(self) -> int:
        n = sum(p.numel() for p in self.model.parameters())
        if n > self.seqbayes_max_params:
            raise ConfigError(
                f"strategy 'seqbayes' samples every model parameter with HMC and fits a covariance over them; "
                f"this model has {n} parameters, more than seqbayes_max_params={self.seqbayes_max_params}: "
                f"use a smaller network (model.hidden) or raise seqbayes_max_params")
        return n

    def extra_state(self):
        clone = lambda t: None if t is None else t.detach().cpu().clone()  # noqa: E731
        return {"names": list(self.names_), "prior_mean": clone(self.prior_mean_),
                "prior_std": clone(self.prior_std_), "prior_factor": clone(self.prior_factor_),
                "samples": clone(self.samples_),
                "accept": list(self.accept_), "step_sizes": list(self.step_sizes_),
                "flops": self.flops_, "potential_calls": self.potential_calls_}

    def load_extra_state(self, state):
        move = lambda t: None if t is None else t.to(self.device).clone()  # noqa: E731
        self.names_ = list(state["names"])
        self.prior_mean_, self.prior_std_ = move(state["prior_mean"]), move(state["prior_std"])
        self.prior_factor_ = move(state["prior_factor"])
        self.samples_ = move(state["samples"])
        self.accept_ = [float(a) for a in state["accept"]]
        self.step_sizes_ = [float(s) for s in state["step_sizes"]]
        self.flops_, self.potential_calls_ = int(state.get("flops", 0)), int(state.get("potential_calls", 0))

    def training_flops(self) -> dict:
        """HMC's cost, counted as it samples (``results.json``'s ``flops``; the loop trains nothing):
        every evaluation of the potential runs the network on the task's data (3 x its forward
        FLOPs with the gradient, as a training step)."""
        return {"training": self.flops_, "seqbayes_potential_evaluations": self.potential_calls_}

    # -- the flat parameter vector ----------------------------------------------------------
    def _unflatten(self, theta: torch.Tensor, params: dict) -> dict[str, torch.Tensor]:
        """Views of a flat vector (or a stack of them: (K, D)) shaped as the named parameters."""
        out, i = {}, 0
        lead = theta.shape[:-1]
        for n in self.names_:
            k = params[n].numel()
            out[n] = theta[..., i:i + k].reshape(*lead, *params[n].shape)
            i += k
        return out

    def _prior(self, params: dict) -> GaussianFit:
        """The previous posterior fit, extended by N(0, 1/precision) for parameters new since."""
        std = 1.0 / math.sqrt(self.seqbayes_prior_precision)
        new = [n for n in params if n not in self.names_]
        d_new = sum(params[n].numel() for n in new)
        self.names_ = self.names_ + new
        if self.prior_mean_ is None:
            return GaussianFit.isotropic(d_new, std)
        return GaussianFit(self.prior_mean_, self.prior_std_, self.prior_factor_).to(torch.float64).extend(d_new, std)

    def _data(self, exp):
        """The experience's training data (a random subset of ``seqbayes_max_data``) with each
        sample's task id, as the loop gives them to ``model(x, task)``."""
        d = exp.train
        t = d.t if d.t is not None else torch.full((len(d),), exp.task_id, dtype=torch.long, device=d.y.device)
        x, y = d.x, d.y
        if self.seqbayes_max_data is not None and len(y) > self.seqbayes_max_data:
            idx = torch.randperm(len(y), generator=self.generator)[:self.seqbayes_max_data].to(y.device)
            x, y, t = x[idx], y[idx], t[idx]
        return x.to(self.device), y.to(self.device), t.to(self.device)

    # -- hooks ------------------------------------------------------------------------------
    def train_data(self, exp):
        return None

    def after_experience(self, exp):
        super().after_experience(exp)
        self._check_size()
        params = dict(self.model.named_parameters())
        prior = self._prior(params)
        dtype = next(iter(params.values())).dtype
        prior = prior.to(self.device, dtype)
        x, y, task = self._data(exp)
        was = self.model.training
        self.model.eval()  # no dropout or batch-statistics noise inside the potential

        per_sample = forward_flops(self.model, tuple(x.shape[1:]), task=int(task[0]))

        def potential(z):  # whitened: the prior is N(0, I) in z
            self.potential_calls_ += 1
            self.flops_ += (3 if z.requires_grad else 1) * per_sample * len(x)
            logits = functional_call(self.model, self._unflatten(prior.unwhiten(z), params), (x, task))
            return F.cross_entropy(logits, y, reduction="sum") + 0.5 * (z @ z)

        kept, acc, steps = [], [], []
        for _ in range(self.seqbayes_chains):
            z0 = torch.randn(prior.latent_dim, generator=self.generator, dtype=dtype).to(self.device)
            r = hmc(potential, z0, n_samples=self.seqbayes_samples, burn_in=self.seqbayes_burn_in,
                    thin=self.seqbayes_thin, step_size=self.seqbayes_step_size, n_leapfrog=self.seqbayes_leapfrog,
                    adapt=self.seqbayes_adapt, generator=self.generator)
            kept.append(prior.unwhiten(r.samples))
            acc.append(r.accept_rate)
            steps.append(r.step_size)
        self.model.train(was)
        samples = torch.cat(kept)
        fit = GaussianFit.fit(samples, self.seqbayes_density, self.seqbayes_shrinkage, var_floor=1e-8)
        self.samples_ = samples.detach()
        self.prior_mean_, self.prior_std_, self.prior_factor_ = (t.to(self.device) for t in (fit.mean, fit.std,
                                                                                             fit.factor))
        self.accept_.append(sum(acc) / len(acc))
        self.step_sizes_.append(sum(steps) / len(steps))
        with torch.no_grad():  # the model holds the posterior mean
            for n, v in self._unflatten(samples.mean(0), params).items():
                params[n].copy_(v)

    @torch.no_grad()
    def predict(self, x, task=None):
        if self.samples_ is None:
            return self.model(x, task)
        params = dict(self.model.named_parameters())
        probs = 0.0
        for chunk in self.samples_.split(25):  # 25 networks at a time bound the memory
            weights = self._unflatten(chunk.to(x.device), params)
            call = lambda w: functional_call(self.model, w, (x, task))  # noqa: E731
            try:
                logits = torch.func.vmap(call)(weights)
            except Exception:  # a model vmap cannot trace: one network at a time
                logits = torch.stack([call({n: w[i] for n, w in weights.items()}) for i in range(len(chunk))])
            probs = probs + F.softmax(logits, dim=2).sum(0)
        return (probs / len(self.samples_)).log()
