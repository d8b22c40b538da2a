"""VCL: Variational Continual Learning.

Nguyen, Li, Bui & Turner (ICLR 2018), "Variational Continual Learning"; reference code
github.com/nvcuong/variational-continual-learning (``ddm/``).

Every parameter of the model gets a mean-field Gaussian posterior ``q(w) = N(mu, exp(v))``.
Training on experience t maximises the evidence lower bound with the previous posterior as
the prior::

    loss = mean over K weight samples and the batch of CE(f(x; w_k), y)
           + KL(q_t || q_{t-1}) / N_t                     (N_t: the experience's training size)

with the reparameterisation ``w = mu + exp(v / 2) * eps`` (one weight sample per MC sample,
shared by the batch, as in the reference code). After the experience ``q_t`` becomes the
prior of the next one (a copy, not the same tensors). Prediction averages the softmax over
``vcl_samples`` weight samples.

- Means are the model's own parameters (the network is unchanged, so a checkpoint, the
  parameter count and every other method see an ordinary model); the log-variances are the
  strategy's (``logvar_``, one per model parameter), trained by the same optimizer and saved
  in ``extra_state``. The run's ``parameters.total`` therefore counts the means only: VCL
  trains twice that many numbers.
- Every parameter of the model is Bayesian (linear, convolution, per-task heads); the forward
  pass is ``torch.func.functional_call`` with sampled weights, so any backbone works; the K
  weight samples run together under ``torch.func.vmap`` (one at a time for a model vmap
  cannot trace).
- Multi-head in task-IL (the paper's Split MNIST), a single head in class- and domain-IL (the
  scenario's head). A head that appears with a new task gets the prior N(0, ``vcl_prior_var``)
  and log-variance -6, like the first task's weights.
- Initialisation (paper and reference code): the first task is first fit by maximum
  likelihood, then the means start from that fit with log-variance ``vcl_init_logvar`` = -6.
  Here the first ``vcl_ml_init`` fraction (0.5) of the first experience's iterations is that
  maximum-likelihood fit (plain cross-entropy, means only) and the rest is VCL; the reference
  code trains each for the full number of epochs (use twice the iterations on experience 1 to
  match) and builds a fresh Adam for the VCL phase (here the loop's optimizer goes on).
- Coreset (``vcl_coreset_size`` points per experience, ``random`` or ``kcenter``, the paper's
  two): chosen from the experience's training data when it starts and left out of its
  training (the posterior ``q~_t`` is fit on the rest). After the experience a copy of
  ``q~_t`` is fine-tuned on the union of all coresets with ``q~_t`` as prior, for
  ``vcl_coreset_iterations`` Adam steps at the run's learning rate (full batch up to 256,
  the reference code's 120 full-batch epochs on Split MNIST); predictions use that copy and
  the next experience starts from ``q~_t``, as in the paper. The reference code fine-tunes
  per task head in turn in multi-head runs; here all coresets train together (each sample
  with its own task id).
- Paper defaults: Adam, lr 1e-3, K = 10 training samples, 100 prediction samples, prior
  N(0, 1), coreset 40 per task on Split MNIST (200 on Permuted MNIST), 120 epochs full batch
  on Split MNIST. The MC prediction uses a generator seeded from the strategy's state, so a
  prediction is a function of the learned state (a restored model predicts the same).
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.func import functional_call as _functional_call

from ..streams import Split
from .base import Strategy


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, mu0: torch.Tensor, logvar0: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(mu0, exp(logvar0))), summed over the elements."""
    return 0.5 * (logvar0 - logvar + (logvar.exp() + (mu - mu0) ** 2) / logvar0.exp() - 1).sum()


def kcenter(x: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy k-center (farthest-first) indices of ``x``, starting from the first sample, as the
    reference code's ``coreset.k_center``."""
    flat = x.reshape(len(x), -1)
    dist = torch.full((len(x),), float("inf"), device=x.device)
    idx = [0]
    for _ in range(1, min(k, len(x))):
        dist = torch.minimum(dist, ((flat - flat[idx[-1]]) ** 2).sum(1))
        idx.append(int(dist.argmax()))
    return torch.tensor(idx[:k], dtype=torch.long)


def sampled_cross_entropy(drawn, logits, y):
    """The mean cross-entropy over the sampled networks' outputs ``drawn = (logits, draws)`` kept
    by ``forward`` (draws: (k, B, C)); plain cross-entropy of ``logits`` when they were not drawn."""
    if drawn is None or drawn[0] is not logits:
        return F.cross_entropy(logits, y)
    draws = drawn[1]
    return F.cross_entropy(draws.flatten(0, 1), y.repeat(len(draws)))


def functional_call(model, params, args):
    return _functional_call(model, params, args, tie_weights=False)


def _key(name: str) -> str:
    return name.replace(".", "/")  # ParameterDict keys cannot hold dots


class VCL(Strategy):
    own_parameters = True  # trains/predicts with its own parameters (base.Compose.check_composable)
    name = "vcl"
    paper = "Nguyen, Li, Bui & Turner 2018, Variational Continual Learning (ICLR)"
    scenarios = ("class", "task", "domain")

    def __init__(self, vcl_samples: Annotated[int, Field(ge=1)] = 100,
                 vcl_train_samples: Annotated[int, Field(ge=1)] = 10,
                 vcl_prior_var: Annotated[float, Field(gt=0)] = 1.0,
                 vcl_init_logvar: Annotated[float, Field(le=0)] = -6.0,
                 vcl_ml_init: Annotated[float, Field(ge=0, lt=1)] = 0.5,
                 vcl_coreset_size: Annotated[int, Field(ge=0)] = 0,
                 vcl_coreset_method: Literal["random", "kcenter"] = "random",
                 vcl_coreset_iterations: Annotated[int, Field(ge=1)] = 120):
        super().__init__()
        self.vcl_samples = vcl_samples
        self.vcl_train_samples = vcl_train_samples
        self.vcl_prior_var = vcl_prior_var
        self.vcl_init_logvar = vcl_init_logvar
        self.vcl_ml_init = vcl_ml_init
        self.vcl_coreset_size = vcl_coreset_size
        self.vcl_coreset_method = vcl_coreset_method
        self.vcl_coreset_iterations = vcl_coreset_iterations

    # -- set-up and state -----------------------------------------------------------------
    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        self.logvar_ = nn.ParameterDict()
        self.prior_: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (mu, logvar), copies
        self.coreset_: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.predictive_: dict[str, torch.Tensor] | None = None  # coreset-tuned means and log-variances
        self.n_train_ = 1
        self.tasks_seen_ = 0
        self.predict_seed_ = int(torch.randint(0, 2 ** 62, (1,), generator=self.generator))
        self._drawn = None
        self._vmap_ok = True
        self._grow()
        return self

    def parameter_count(self) -> dict:
        """Trainable parameters: a mean (the model's weights) and a log-variance for every weight
        (``results.json``'s ``parameters``; the previous posterior, the prior, is a frozen copy)."""
        means = sum(p.numel() for p in self.model.parameters())
        logvars = sum(v.numel() for v in self.logvar_.values())
        return {"trainable": means + logvars, "means": means, "log_variances": logvars}

    def _grow(self) -> None:
        """A log-variance (and a N(0, prior_var) prior) for every model parameter lacking one."""
        for n, p in self.model.named_parameters():
            if _key(n) not in self.logvar_:
                self.logvar_[_key(n)] = nn.Parameter(torch.full_like(p, self.vcl_init_logvar))

    def extra_state(self):
        return {"logvar": {k: v.detach().clone() for k, v in self.logvar_.items()},
                "prior": {k: [m.clone(), v.clone()] for k, (m, v) in self.prior_.items()},
                "coreset": [[x.clone(), y.clone(), t.clone()] for x, y, t in self.coreset_],
                "predictive": None if self.predictive_ is None else {k: v.clone() for k, v in self.predictive_.items()},
                "n_train": self.n_train_, "tasks_seen": self.tasks_seen_, "predict_seed": self.predict_seed_}

    def load_extra_state(self, state):
        dev = self.device
        with torch.no_grad():  # in place where the parameter exists: the optimizer keeps its tensors
            for k, v in state["logvar"].items():
                if k in self.logvar_ and self.logvar_[k].shape == v.shape:
                    self.logvar_[k].copy_(v.to(dev))
                else:
                    self.logvar_[k] = nn.Parameter(v.to(dev).clone())
        self.prior_ = {k: (m.to(dev).clone(), v.to(dev).clone()) for k, (m, v) in state["prior"].items()}
        self.coreset_ = [(x.to(dev), y.to(dev), t.to(dev)) for x, y, t in state["coreset"]]
        pred = state["predictive"]
        self.predictive_ = None if pred is None else {k: v.to(dev).clone() for k, v in pred.items()}
        self.n_train_, self.tasks_seen_ = int(state["n_train"]), int(state["tasks_seen"])
        self.predict_seed_ = int(state["predict_seed"])

    def param_groups(self):
        return [{"params": list(self.model.parameters()) + list(self.logvar_.values())}]

    # -- the variational family -----------------------------------------------------------
    def _means(self) -> dict[str, torch.Tensor]:
        return dict(self.model.named_parameters())

    @staticmethod
    def _stds(means: dict, logvars: dict) -> list[torch.Tensor]:
        return [(0.5 * logvars[_key(n)]).exp() for n in means]

    @staticmethod
    def _samples(means: dict, stds: list, k: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``k`` weight samples stacked on a first axis (reparameterised: mu + std * eps), one
        noise draw for all."""
        sizes = [mu.numel() for mu in means.values()]
        eps = torch.randn(k, sum(sizes), generator=generator).to(next(iter(means.values())).device)
        return {n: mu + sd * e.reshape(k, *mu.shape)
                for (n, mu), sd, e in zip(means.items(), stds, eps.split(sizes, dim=1))}

    def _outputs(self, weights: dict[str, torch.Tensor], x, task) -> torch.Tensor:
        """The model's logits under each stacked weight sample: (K, B, C). Vectorised with
        ``torch.func.vmap``; a backbone that vmap cannot trace runs one sample at a time."""
        call = lambda w: functional_call(self.model, w, (x, task))  # noqa: E731
        if self._vmap_ok:
            try:
                return torch.func.vmap(call)(weights)
            except Exception:  # data-dependent control flow in a user's model
                self._vmap_ok = False
        k = len(next(iter(weights.values())))
        return torch.stack([call({n: w[i] for n, w in weights.items()}) for i in range(k)])

    def _kl(self, means: dict, logvars: dict, prior: dict) -> torch.Tensor:
        total = 0.0
        for n, mu in means.items():
            lv = logvars[_key(n)]
            if _key(n) in prior:
                mu0, lv0 = prior[_key(n)]
            else:  # a parameter with no posterior yet (first task, a new head): N(0, prior_var)
                mu0, lv0 = torch.zeros_like(mu), torch.full_like(mu, math.log(self.vcl_prior_var))
            total = total + gaussian_kl(mu, lv, mu0, lv0)
        return total

    def _ml_phase(self) -> bool:
        """The maximum-likelihood initialisation: the start of the first experience."""
        c = self.context
        return self.tasks_seen_ == 0 and c.iteration < int(self.vcl_ml_init * c.n_iterations)

    # -- hooks ----------------------------------------------------------------------------
    def before_experience(self, exp):
        super().before_experience(exp)
        self._grow()  # new heads
        self._core_idx = None
        k = min(self.vcl_coreset_size, len(exp.train))
        if k:
            d = exp.train
            if self.vcl_coreset_method == "kcenter":
                idx = kcenter(d.x, k)
            else:
                idx = torch.randperm(len(d), generator=self.generator)[:k]
            idx = idx.to(d.y.device)
            t = d.t[idx] if d.t is not None else torch.full((k,), exp.task_id, dtype=torch.long, device=d.y.device)
            self._core_idx = idx
            self.coreset_.append((d.x[idx].clone(), d.y[idx].clone(), t.clone()))

    def train_data(self, exp):
        d = exp.train
        idx = getattr(self, "_core_idx", None)
        if idx is not None:
            keep = torch.ones(len(d), dtype=torch.bool, device=d.y.device)
            keep[idx] = False
            d = Split(d.x[keep], d.y[keep], None if d.t is None else d.t[keep])
        self.n_train_ = max(len(d), 1)
        return d

    @property
    def epochs_from_stream(self) -> bool:  # a coreset is held out of each experience's training set
        return not self.vcl_coreset_size

    def stream_rows(self, exp, data):  # incoming samples all (the coreset's are held out of them)
        return torch.ones(len(data), dtype=torch.bool, device=data.y.device)

    def forward(self, batch):
        if self._ml_phase():
            self._drawn = None
            return self.model(batch.x, batch.t)
        means = self._means()
        draws = self._outputs(self._samples(means, self._stds(means, self.logvar_), self.vcl_train_samples,
                                            self.generator), batch.x, batch.t)
        logits = draws.mean(0)
        self._drawn = (logits, draws)
        return logits

    def loss(self, logits, batch):
        return sampled_cross_entropy(self._drawn, logits, batch.y)

    def penalty(self, logits, batch):
        if self._ml_phase():
            return 0.0
        return self._kl(self._means(), self.logvar_, self.prior_) / self.n_train_

    def after_step(self, batch, logits):
        self._drawn = None

    def after_experience(self, exp):
        self.tasks_seen_ += 1
        means = self._means()
        self.prior_ = {_key(n): (mu.detach().clone(), self.logvar_[_key(n)].detach().clone())
                       for n, mu in means.items()}
        self.predictive_ = self._coreset_finetune() if self.coreset_ else None

    def _coreset_finetune(self) -> dict[str, torch.Tensor]:
        """A copy of the posterior fine-tuned on every coreset with the posterior as prior."""
        params = {n: nn.Parameter(mu.clone()) for n, (mu, _) in self.prior_.items()}
        logvars = {n: nn.Parameter(lv.clone()) for n, (_, lv) in self.prior_.items()}
        x = torch.cat([c[0] for c in self.coreset_])
        y = torch.cat([c[1] for c in self.coreset_])
        t = torch.cat([c[2] for c in self.coreset_])
        opt = torch.optim.Adam(list(params.values()) + list(logvars.values()), lr=self.context.lr or 1e-3)
        was = self.model.training
        self.model.train()
        names = {_key(n): n for n, _ in self.model.named_parameters()}
        for _ in range(self.vcl_coreset_iterations):
            idx = torch.randperm(len(y), generator=self.generator)[:256].to(y.device)
            means = {names[k]: v for k, v in params.items()}
            draws = self._outputs(self._samples(means, self._stds(means, logvars), self.vcl_train_samples,
                                                self.generator), x[idx], t[idx])
            nll = F.cross_entropy(draws.flatten(0, 1), y[idx].repeat(len(draws)))
            loss = nll + self._kl(means, logvars, self.prior_) / len(y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        self.model.train(was)
        out = {f"mu:{k}": v.detach().clone() for k, v in params.items()}
        out.update({f"lv:{k}": v.detach().clone() for k, v in logvars.items()})
        return out

    @torch.no_grad()
    def predict(self, x, task=None):
        names = {_key(n): n for n, _ in self.model.named_parameters()}
        if self.predictive_ is not None and all(f"mu:{k}" in self.predictive_ for k in names):
            means = {n: self.predictive_[f"mu:{k}"] for k, n in names.items()}
            logvars = {k: self.predictive_[f"lv:{k}"] for k in names}
        else:
            means, logvars = self._means(), self.logvar_
        g = torch.Generator().manual_seed(self.predict_seed_)
        stds, probs = self._stds(means, logvars), 0.0
        for start in range(0, self.vcl_samples, 25):  # 25 weight samples at a time bound the memory
            k = min(25, self.vcl_samples - start)
            probs = probs + F.softmax(self._outputs(self._samples(means, stds, k, g), x, task), dim=2).sum(0)
        return (probs / self.vcl_samples).log()
