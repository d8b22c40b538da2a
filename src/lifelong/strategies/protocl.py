"""ProtoCL: Prototypical Bayesian Continual Learning.

Kessler, Cobb, Rudner, Zohren & Roberts (2023), "On Sequential Bayesian Inference for
Continual Learning" (arXiv:2301.01828; Entropy, 2023), Section "Prototypical Bayesian
Continual Learning"; reference code github.com/skezle/bayes_cl_posterior (``protocl/``),
itself after PCOC (Harrison, Sharma, Finn & Pavone 2019).

A generative model of the embeddings instead of a posterior over the network's weights. An
encoder maps x to phi = f(x) in R^d (here: the model's backbone and a linear projection to
``protocl_dim``; the model's own head is unused). Each class y has a prototype z_y with a
conjugate Gaussian prior, and the class frequencies a Dirichlet prior::

    z_y ~ N(mu_0, lambda_0^-1 I),  phi | y, z_y ~ N(z_y, sigma_eps I),  p ~ Dir(alpha_0)

Every training sample (phi, y) updates its class's posterior in closed form (natural
parameters: q_y = lambda_y mu_y)::

    q_y      <- q_y + phi / sigma_eps
    lambda_y <- lambda_y + 1 / sigma_eps
    alpha_y  <- alpha_y + 1

and a sample is classified by the posterior predictive, p(y | x) proportional to
N(phi; mu_y, (1/lambda_y + sigma_eps) I) * alpha_y / sum(alpha). The encoder is trained by
the cross-entropy of that predictive, each batch scored under the posterior *before* its own
update (gradients flow through phi only), as in the reference code. Old classes' prototypes
would go stale while the encoder moves, so a small memory of past samples is replayed (the
reference code: ``memory_size`` 1000 in total, equal shares per task, old:new data 1:1);
replayed samples also update their classes' posteriors.

Defaults (reference code, ``protocl/experiments/``): d = 32, sigma_eps = 0.05 (fixed),
alpha_0 = exp(10) (a nearly fixed uniform class prior), memory 1000, Adam lr 0.02, batch 50.
Where we differ:
- the prior mean is 0 and the prior precision ``protocl_prior_precision`` (1) for every
  class; the reference code draws a random prior mean and log-precision per class (after a
  few updates the prior weighs nothing: each sample adds 1/sigma_eps = 20 to the precision);
- only the classes seen so far compete (the reference code scores all ten from the start);
- predictions never update the posterior (the reference code's test loop calls the same
  function that updates it with the test labels);
- memory: the library's class-balanced buffer (``mem_size`` shared with ER), one replayed
  sample per stream sample.
In task-IL the prediction for a sample is restricted to its task's classes; a class may belong to
several tasks (Permuted MNIST), and then its prototype is shared by them.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from ._memory import MemoryStrategy


def posterior_update(q, prec, alpha, phi, y, sigma_eps: float):
    """The conjugate update of every class's natural parameters by the samples (phi, y);
    returns new tensors (q: (C, d), prec: (C,), alpha: (C,))."""
    onehot = torch.zeros(len(y), len(prec), dtype=phi.dtype, device=phi.device)
    onehot[torch.arange(len(y), device=y.device), y] = 1.0
    return (q + onehot.T @ phi / sigma_eps, prec + onehot.sum(0) / sigma_eps, alpha + onehot.sum(0))


def predictive_log_prob(phi, q, prec, alpha, sigma_eps: float):
    """log p(phi, y) for every class y: the Gaussian posterior predictive of phi given y times
    the Dirichlet-categorical predictive of y. (B, d) -> (B, C)."""
    mu = q / prec[:, None]
    var = 1.0 / prec + sigma_eps  # (C,)
    d = phi.shape[1]
    sq = (phi ** 2).sum(1, keepdim=True) - 2 * phi @ mu.T + (mu ** 2).sum(1)[None, :]
    log_lik = -0.5 * (sq / var[None, :] + d * torch.log(var)[None, :] + d * math.log(2 * math.pi))
    return log_lik + torch.log(alpha / alpha.sum())[None, :]


class ProtoCL(MemoryStrategy):
    name = "protocl"
    paper = "Kessler, Cobb, Rudner, Zohren & Roberts 2023, On Sequential Bayesian Inference for Continual Learning"
    scenarios = ("class", "task", "domain")

    def __init__(self, protocl_dim: Annotated[int, Field(ge=1)] = 32,
                 protocl_sigma_eps: Annotated[float, Field(gt=0)] = 0.05,
                 protocl_prior_precision: Annotated[float, Field(gt=0)] = 1.0,
                 protocl_log_alpha0: float = 10.0,
                 mem_size: Annotated[int, Field(ge=1)] = 1000,
                 mem_policy: Literal["reservoir", "class_balanced"] = "class_balanced"):
        super().__init__()
        self.protocl_dim = protocl_dim
        self.protocl_sigma_eps = protocl_sigma_eps
        self.protocl_prior_precision = protocl_prior_precision
        self.protocl_log_alpha0 = protocl_log_alpha0
        self.mem_size = mem_size
        self.mem_policy = mem_policy
        self.mem_per_class = None

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        head = model.head
        n = getattr(head, "n_classes", None) or head.linear.out_features
        width = model.backbone.out_features
        g = torch.Generator().manual_seed(seed + 3)
        proj = nn.Linear(width, self.protocl_dim)
        bound = 1 / math.sqrt(width)  # nn.Linear's own init, drawn from the strategy's seed
        with torch.no_grad():
            proj.weight.copy_(torch.rand(proj.weight.shape, generator=g) * 2 * bound - bound)
            proj.bias.copy_(torch.rand(proj.bias.shape, generator=g) * 2 * bound - bound)
        self.proj_ = proj.to(self.device)
        self._reset_posterior(n)
        self.seen_ = torch.zeros(n, dtype=torch.bool, device=self.device)
        # (tasks seen, classes): which classes each task has. A class may belong to several tasks
        # (Permuted MNIST: every permutation has the ten digits), so not one task per class
        self.task_classes_ = torch.zeros(0, n, dtype=torch.bool, device=self.device)
        self._phi = None
        return self

    def _reset_posterior(self, n: int) -> None:
        dev, d = self.device, self.protocl_dim
        self.prec_ = torch.full((n,), float(self.protocl_prior_precision), device=dev)
        self.q_ = torch.zeros(n, d, device=dev)  # prior mean 0
        self.alpha_ = torch.full((n,), math.exp(self.protocl_log_alpha0), device=dev)

    def param_groups(self):
        head = {id(p) for p in self.model.head.parameters()}  # the model's head is not used
        return [{"params": [p for p in self.model.parameters() if id(p) not in head] + list(self.proj_.parameters())}]

    def embed(self, x):
        return self.proj_(self.model.features(x))

    def scores(self, phi, task=None):
        out = predictive_log_prob(phi, self.q_, self.prec_, self.alpha_, self.protocl_sigma_eps)
        out = out.masked_fill(~self.seen_[None, :], float("-inf"))
        if task is not None:  # a task not seen yet has no classes: its row of the padding, all False
            task = torch.as_tensor(task, device=phi.device).expand(len(phi))
            n_tasks = len(self.task_classes_)
            rows = torch.cat([self.task_classes_, self.task_classes_.new_zeros(1, out.shape[1])])
            out = out.masked_fill(~rows[torch.where((task >= 0) & (task < n_tasks), task, n_tasks)], float("-inf"))
        return out

    # -- hooks ----------------------------------------------------------------------------
    def before_experience(self, exp):
        super().before_experience(exp)
        cls = torch.as_tensor(exp.classes, dtype=torch.long, device=self.device)
        self.seen_[cls] = True
        missing = exp.task_id + 1 - len(self.task_classes_)
        if missing > 0:
            self.task_classes_ = torch.cat([self.task_classes_, self.task_classes_.new_zeros(missing, len(self.seen_))])
        self.task_classes_[exp.task_id, cls] = True

    def augment(self, batch):
        if len(self.buffer_) == 0:
            return batch
        return batch.cat(*self.buffer_.sample(batch.n_new))

    def forward(self, batch):
        phi = self.embed(batch.x)
        self._phi = phi.detach()
        return self.scores(phi)  # under the posterior before this batch (the loss: cross-entropy)

    def after_step(self, batch, logits):
        super().after_step(batch, logits)
        if self._phi is not None:
            self.q_, self.prec_, self.alpha_ = posterior_update(self.q_, self.prec_, self.alpha_, self._phi, batch.y,
                                                                self.protocl_sigma_eps)
            self._phi = None

    @torch.no_grad()
    def predict(self, x, task=None):
        return self.scores(self.embed(x), task)

    # -- state ----------------------------------------------------------------------------
    def extra_state(self):
        return dict(super().extra_state(), proj=self.proj_.state_dict(), q=self.q_.clone(), prec=self.prec_.clone(),
                    alpha=self.alpha_.clone(), seen=self.seen_.clone(), task_classes=self.task_classes_.clone())

    def load_extra_state(self, state):
        super().load_extra_state(state)
        dev = self.device
        self.proj_.load_state_dict(state["proj"])
        self.q_, self.prec_, self.alpha_ = (state[k].to(dev).clone() for k in ("q", "prec", "alpha"))
        self.seen_ = state["seen"].to(dev).clone()
        if "task_classes" in state:
            self.task_classes_ = state["task_classes"].to(dev).clone()
        else:  # a checkpoint of lifelong before 2026-12-01: one task per class (-1: none yet)
            owner = state["class_task"].to(dev)
            n_tasks = int(owner.max()) + 1 if len(owner) else 0
            self.task_classes_ = owner[None, :] == torch.arange(n_tasks, device=dev)[:, None]
