"""Binary-weight continual learning in field space (variational mean-field, previous task's
fields as the prior).

Li, Huang, Zou & Huang (2023), "Statistical mechanics of continual learning: variational
principle and mean-field potential", Phys. Rev. E 108, 014309 (arXiv:2212.02846).

Every weight is binary, w in {-1, +1}, and is learnt through a continuous field h: the
variational distribution is q(w) = exp(h w) / (2 cosh h), with mean m = tanh(h) and variance
1 - m^2 (the weight uncertainty). The trained parameters are the fields (the MLP's
``nn.Linear`` weight tensors hold h). A layer's pre-activation is a sum of many independent
binary terms, so under q it is Gaussian (the paper's Gaussian field approximation):

    mean  = sum_i m_i x_i / sqrt(n_in),    variance = sum_i (1 - m_i^2) x_i^2 / n_in

and training samples it once per example (local reparametrisation, noise from the strategy's
generator). The loss of task t is the variational free energy per example:

    E_q[task loss] + bfield_kl_weight * KL(q_h || q_{h_{t-1}}) / N_t

with KL(q_h || q_h') = sum (h - h') tanh h - log cosh h + log cosh h' (its gradient in h is
(h - h')(1 - m^2): an EWC-like pull whose stiffness is the weight uncertainty). After each
task the fields are copied into the prior of the next; the first task has no prior term.
``bfield_kl_weight = 0`` is field learning without the prior: the binary network's
fine-tuning.

Prediction (``bfield_predict``): ``sign`` (default) runs the network with the binary weights
w = sign(h) (exactly +-1; h = 0 counts as +1); ``mean`` runs it with the mean weights
m = tanh(h) and no noise (the mean-field network).

Defaults and where we differ from the paper: the KL coefficient 1 (the variational free
energy); fields not seen before (the network's at the first experience, each new task head)
start from N(0, ``bfield_init_std``^2 = 1), drawn from the strategy's generator (with the
model's own small initialisation, |h| ~ 0.04, the sign network is random +-1 noise that
training takes hundreds of steps to polarise: 46 % on the first Split MNIST task after 100
Adam steps at 3e-3, 99.8 % with std 1); the first task has no prior term (the paper's uniform prior
h' = 0 would add an entropy term); biases of the MLP's linear layers are not used
(binary weights only, no biases); every linear layer of the MLP, the output layer(s)
included, is binary; ReLU hidden units; the run's optimizer (Adam) on the fields. The
teacher-student perceptron of the paper is ``benchmarks/binary_teacher_student.py``.
Only the plain MLP model (``model.name: mlp`` without ``norm``) is supported.
"""
from __future__ import annotations

import contextlib
import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from ..errors import ConfigError
from ..models import MLP, Head, MultiHead
from .base import Strategy


def log_cosh(h: torch.Tensor) -> torch.Tensor:
    """log cosh h, stable for large |h|."""
    a = h.abs()
    return a + torch.log1p(torch.exp(-2 * a)) - math.log(2.0)


def field_kl(h: torch.Tensor, h_prior: torch.Tensor) -> torch.Tensor:
    """KL(q_h || q_h') summed over the weights, q_h(w) = exp(h w) / (2 cosh h), w = +-1."""
    return ((h - h_prior) * torch.tanh(h) - log_cosh(h) + log_cosh(h_prior)).sum()


def preactivation_moments(x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of x @ w.T / sqrt(n_in) when each w_ji = +-1 independently with mean
    tanh(h_ji): (B, n_out) each."""
    m = torch.tanh(h)
    n_in = h.shape[1]
    return x @ m.T / math.sqrt(n_in), (x * x) @ (1 - m * m).T / n_in


def binary_weights(h: torch.Tensor) -> torch.Tensor:
    """sign(h) with sign(0) = +1: exactly +-1."""
    return torch.where(h >= 0, torch.ones_like(h), -torch.ones_like(h))


def _key(name: str) -> str:
    return name.replace(".", "/")


class BinaryField(Strategy):
    """Binary weights learnt through fields; the previous task's fields are the prior."""

    name = "binary_field"
    paper = ("Li, Huang, Zou & Huang, Statistical mechanics of continual learning: variational principle and "
             "mean-field potential, Phys. Rev. E 2023")
    compile_refusal = ("it swaps every linear layer's forward for its binary version on each step, which a "
                       "compiled backbone follows only by recompiling (7x slower on split digits, with "
                       "other numbers)")
    scenarios = ("class", "task", "domain")

    def __init__(self, bfield_kl_weight: Annotated[float, Field(ge=0)] = 1.0,
                 bfield_predict: Literal["sign", "mean"] = "sign",
                 bfield_init_std: Annotated[float, Field(ge=0)] = 1.0):
        super().__init__()
        self.bfield_kl_weight = bfield_kl_weight
        self.bfield_predict = bfield_predict
        self.bfield_init_std = bfield_init_std

    # -- set-up and state -------------------------------------------------------------------
    def setup(self, model, device="cpu", seed=0):
        check_binary_model(model)
        super().setup(model, device, seed)
        self.prior_: dict[str, torch.Tensor] = {}  # weight name -> the previous task's fields (copies)
        self.n_train_ = 1
        self.tasks_seen_ = 0
        self.initialised_: list[str] = []  # fields drawn from N(0, bfield_init_std^2) already
        return self

    def extra_state(self):
        return {"prior": {k: v.clone() for k, v in self.prior_.items()}, "n_train": self.n_train_,
                "tasks_seen": self.tasks_seen_, "initialised": list(self.initialised_)}

    def load_extra_state(self, state):
        self.prior_ = {k: v.clone().to(self.device) for k, v in state["prior"].items()}
        self.n_train_ = int(state["n_train"])
        self.tasks_seen_ = int(state["tasks_seen"])
        self.initialised_ = list(state["initialised"])

    def fields(self) -> dict[str, torch.Tensor]:
        """The fields: the weight of every linear layer of the model, by (slash-joined) name."""
        return {_key(n) + "/weight": m.weight for n, m in self.model.named_modules() if isinstance(m, nn.Linear)}

    # -- the binary network ---------------------------------------------------------------
    @contextlib.contextmanager
    def binary(self, mode: Literal["sample", "mean", "sign"]):
        """Within this block every linear layer of the model computes its binary version:
        ``sample`` a draw of the Gaussian pre-activation, ``mean`` its mean, ``sign`` the
        pre-activation with w = sign(h). Biases are not used."""
        layers = [m for m in self.model.modules() if isinstance(m, nn.Linear)]

        def make(layer):
            def forward(x):
                h = layer.weight
                if mode == "sign":
                    return x @ binary_weights(h).T.to(x.dtype) / math.sqrt(h.shape[1])
                mean, var = preactivation_moments(x, h)
                if mode == "mean":
                    return mean
                eps = torch.randn(mean.shape, generator=self.generator).to(mean.device, mean.dtype)
                return mean + var.clamp_min(1e-12).sqrt() * eps
            return forward

        for layer in layers:
            layer.forward = make(layer)
        try:
            yield
        finally:
            for layer in layers:
                del layer.forward

    # -- hooks ------------------------------------------------------------------------------
    def before_experience(self, exp):
        """Fields not seen before (the network's at the first experience, a new task's head)
        start from N(0, bfield_init_std^2) drawn from the strategy's generator."""
        super().before_experience(exp)
        with torch.no_grad():
            for k, h in self.fields().items():
                if k not in self.initialised_:
                    if self.bfield_init_std > 0:
                        h.copy_(self.bfield_init_std * torch.randn(h.shape, generator=self.generator))
                    self.initialised_.append(k)

    def train_data(self, exp):
        self.n_train_ = max(len(exp.train), 1)
        return exp.train

    def forward(self, batch):
        with self.binary("sample"):
            return self.model(batch.x, batch.t)

    def penalty(self, logits, batch):
        if not self.prior_ or self.bfield_kl_weight == 0:
            return 0.0
        fields = self.fields()
        kl = sum(field_kl(fields[k], h0) for k, h0 in self.prior_.items() if k in fields)
        return self.bfield_kl_weight * kl / self.n_train_

    def after_experience(self, exp):
        self.tasks_seen_ += 1
        self.prior_ = {k: h.detach().clone() for k, h in self.fields().items()}

    @torch.no_grad()
    def predict(self, x, task=None):
        with self.binary(self.bfield_predict):
            return self.model(x, task)


def check_binary_model(model) -> None:
    """Refuse anything but the plain MLP (linear layers and ReLUs) with a linear head."""
    backbone, head = getattr(model, "backbone", None), getattr(model, "head", None)
    ok = isinstance(backbone, MLP) and all(isinstance(m, (nn.Flatten, nn.Linear, nn.ReLU)) for m in backbone.net)
    ok = ok and isinstance(head, (Head, MultiHead))
    if not ok:
        raise ConfigError("strategy 'binary_field' trains binary weights of the MLP model only "
                          "(model.name: mlp, without model.norm); got "
                          f"{type(backbone).__name__ if backbone is not None else type(model).__name__}"
                          f"{' with batch norm' if isinstance(backbone, MLP) else ''}")
