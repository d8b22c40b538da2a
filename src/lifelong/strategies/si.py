"""SI: Synaptic Intelligence.

Zenke, Poole & Ganguli (2017), "Continual Learning Through Synaptic Intelligence" (ICML).
Each parameter's importance is its contribution to the drop of the task loss along the
training trajectory (a path integral), accumulated online at every optimizer step::

    w_i     += -g_i * (theta_i(after step) - theta_i(before step))
    omega_i += w_i / ((theta_i(end) - theta_i(start))^2 + si_epsilon)     # at experience end
    penalty  = si_c * sum_i omega_i * (theta_i - theta_i(end of previous experience))^2

``g`` is the gradient of the task loss only, as in Zenke et al.'s reference code
(``unreg_grads``): the loop hands ``before_step`` the gradient of loss + penalty, so the SI
penalty's own analytic gradient ``2 * si_c * omega * (theta - theta_prev)`` is subtracted. (van
de Ven et al.'s code uses the total gradient; a penalty from another strategy combined with SI
stays in g.) Parameters without a gradient in a step (another task's head) add nothing.

Defaults follow van de Ven, Tuytelaars & Tolias (2022), "Three types of incremental learning"
(Nature Machine Intelligence) and their code (github.com/GMvandeVen/continual-learning):
``si_epsilon = 0.1`` (Zenke et al. used 1e-3 on Split MNIST) and ``si_c = 10``, their value for
task-IL Split MNIST. Their other values: Split MNIST domain-IL 5e4, class-IL 5e3; Permuted
MNIST 10; CIFAR-100 task-IL 100, domain-IL 500, class-IL 5.
"""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from .base import Strategy


class SI(Strategy):
    name = "si"
    paper = "Zenke, Poole & Ganguli 2017 (ICML)"
    scenarios = ("class", "task", "domain")

    def __init__(self, si_c: Annotated[float, Field(ge=0)] = 10.0, si_epsilon: Annotated[float, Field(gt=0)] = 0.1):
        super().__init__()
        self.si_c = si_c
        self.si_epsilon = si_epsilon

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        self.prev_: dict[str, torch.Tensor] = {}   # theta at the start of the current experience
        self.w_: dict[str, torch.Tensor] = {}      # running path integral of this experience
        self.omega_: dict[str, torch.Tensor] = {}  # importance, summed over past experiences
        self._step: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # per step: (g, theta before)
        return self

    def _params(self):
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def before_experience(self, exp):
        super().before_experience(exp)
        for n, p in self._params():  # parameters created since (new heads) start tracking now
            if n not in self.prev_ or self.prev_[n].shape != p.shape:
                self.prev_[n] = p.detach().clone()
                self.w_[n] = torch.zeros_like(p)
                self.omega_.pop(n, None)

    def _penalty_terms(self):
        for n, p in self._params():
            if n in self.omega_ and self.omega_[n].shape == p.shape:
                yield n, p, self.omega_[n], self.prev_[n]

    def penalty(self, logits, batch):
        if not self.omega_:
            return 0.0
        return self.si_c * sum(((om * (p - prev) ** 2).sum() for _, p, om, prev in self._penalty_terms()), 0.0)

    def before_step(self, batch):
        own = {n: 2 * self.si_c * om * (p.detach() - prev) for n, p, om, prev in self._penalty_terms()}
        self._step = {n: (p.grad.detach() - own[n] if n in own else p.grad.detach().clone(), p.detach().clone())
                      for n, p in self._params() if p.grad is not None and n in self.w_}

    def after_step(self, batch, logits):
        params = dict(self._params())
        for n, (g, before) in self._step.items():
            self.w_[n] -= g * (params[n].detach() - before)
        self._step = {}

    def after_experience(self, exp):
        for n, p in self._params():
            if n not in self.w_:
                continue
            delta = p.detach() - self.prev_[n]
            self.omega_[n] = self.omega_.get(n, torch.zeros_like(p)) + self.w_[n] / (delta ** 2 + self.si_epsilon)
            self.prev_[n] = p.detach().clone()
            self.w_[n] = torch.zeros_like(p)

    def extra_state(self):  # copies: w_ is updated in place
        return {k: {n: t.clone() for n, t in d.items()}
                for k, d in (("prev", self.prev_), ("w", self.w_), ("omega", self.omega_))}

    def load_extra_state(self, state):
        self.prev_, self.w_, self.omega_ = ({n: t.to(self.device, copy=True) for n, t in state[k].items()}
                                           for k in ("prev", "w", "omega"))
