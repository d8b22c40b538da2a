"""HLOP: Hebbian Learning based Orthogonal Projection, for ordinary (non-spiking) networks.

Xiao, Meng, Zhang, Zhao, Wang & Lin (2024), "Hebbian Learning based Orthogonal Projection for
Continual Learning of Spiking Neural Networks" (ICLR 2024); reference code
github.com/pkuxmq/HLOP-SNN (``modules/hlop_module.py``, ``spiking_train_pmnist.py``).

Every Linear/Conv2d layer has a set of *subspace neurons* with lateral weights H (one row per
neuron) that read the layer's input activity x: ``y = H x``. Hebbian / anti-Hebbian learning
(Oja's subspace rule) drives the rows of H towards an orthonormal basis of the principal
subspace of the activity:

    dH = eta * y (x - H^T y)^T,   averaged over the batch

(the reference: ``delta = y^T (x - xhat) / B``, clamped to [-10, 10], smoothed by momentum
0.9, ``hlop_iterations = 5`` updates on every training batch). Each task adds new neurons
(orthogonally initialised); the earlier neurons are kept fixed, so the new ones, through the
``- H^T y`` term that includes the old neurons, learn the part of the new activity the old
subspace misses. While a later task trains, every layer's weight gradient is projected
orthogonal to the old neurons' span, ``G <- G (I - H^T H)`` (as in the reference, which
passes ``x - H^T H x`` to the weight gradient), and at the end of the task the new neurons
join the old ones.

Defaults (reference, Permuted MNIST, a 784-800-800 spiking MLP with a shared classifier):
``hlop_neurons = 80`` subspace neurons per layer on the first task (the reference gives its
three layers 80 / 200 / 100), ``hlop_neurons_increment = 70`` per later task, lowered by
``hlop_increment_decay = 20`` every third task (tasks 3, 6, 9: 70, 70, 50, 50, 50, 30, ...);
Hebbian rate ``hlop_lr = 0.01`` and ``hlop_iterations = 5``. Every layer gets the same counts
here (capped at the layer's input dimension). The reference gives its first layer a rate of
0.001, for pixels normalised to unit variance (E||x||^2 ~ 784); our MNIST pixels lie in [0, 1]
(E||x||^2 ~ 88, 1/9 of that), and Oja's rule moves at the rate times the input's energy, so
the same speed needs ~0.009 here: ``hlop_lr_input = None`` (default) takes ``hlop_lr`` for
the layers that read the network's input, a number sets their own rate (0.001 for
normalised inputs as in the reference). Measured on task-IL Split MNIST's first task (250
Adam steps, MLP 784-100-100, 80 neurons): the first layer's neurons capture 83% of the input
energy at 0.001 and 93% at 0.01, against 97% for the top 80 singular directions.

How this differs from the paper:
- no spikes: the network is an ordinary one trained by backpropagation, and the activity
  the subspace neurons read is the layer's real-valued input (the reference reads spiking
  neurons' weighted firing rates; its "spiking lateral neurons" option is not reproduced),
  and the lateral network is solved exactly (``y = H x``) as the reference's default does;
- the activity comes from an extra forward pass after each step, in evaluation mode (no
  batch-norm statistics are touched), on the batch the model just trained on;
- layers with a bias read ``[x, 1]`` so that the bias is projected with the weight (the
  reference has no biases and stops training biases after the first task);
- ``hlop_project="update"`` (default) also projects the optimizer's change of the weights
  (Adam, our default optimizer, rescales the projected gradient entry by entry); the paper's
  projection of the gradient only is ``"gradient"``;
- every Linear/Conv2d layer the task's forward runs gets subspace neurons: the backbone, and
  the head when it is shared (domain-IL, class-IL); task-IL per-task heads see one task only;
- the reference's optional memory replay and its lateral-neuron quantisation are left out.

Scenarios: task-IL and domain-IL as in the paper (its Permuted MNIST shares the classifier);
class-IL is allowed with the same caveat as GPM (old outputs are kept, new classes can only
use directions outside the subspace).
"""
from __future__ import annotations

from typing import Annotated, Optional

import torch
from pydantic import Field

from ..errors import DivergenceError
from . import _projection as proj
from .base import Strategy

MOMENTUM = 0.9  # the reference's Hebbian momentum
CLAMP = 10.0  # the reference clamps each Hebbian update entry to [-10, 10]
DECAY_EVERY = 3  # the reference lowers the per-task increment every third task


class HLOP(Strategy):
    name = "hlop"
    paper = "Xiao et al. 2024, Hebbian Learning based Orthogonal Projection for Continual Learning of SNNs (ICLR)"
    scenarios = ("task", "domain", "class")

    def __init__(self, hlop_neurons: Annotated[int, Field(ge=1)] = 80,
                 hlop_neurons_increment: Annotated[int, Field(ge=0)] = 70,
                 hlop_increment_decay: Annotated[int, Field(ge=0)] = 20,
                 hlop_lr: Annotated[float, Field(gt=0)] = 0.01,
                 hlop_lr_input: Optional[Annotated[float, Field(gt=0)]] = None,
                 hlop_iterations: Annotated[int, Field(ge=1)] = 5,
                 hlop_project: proj.Project = "update"):
        super().__init__()
        self.hlop_neurons = hlop_neurons
        self.hlop_neurons_increment = hlop_neurons_increment
        self.hlop_increment_decay = hlop_increment_decay
        self.hlop_lr = hlop_lr
        self.hlop_lr_input = hlop_lr_input
        self.hlop_iterations = hlop_iterations
        self.hlop_project = hlop_project

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        proj.check_layers(model, "hlop")
        self.weights_: dict[str, torch.Tensor] = {}  # module name -> H, (neurons, d)
        self.momentum_: dict[str, torch.Tensor] = {}  # module name -> Hebbian momentum, as H
        self.fixed_: dict[str, int] = {}  # module name -> neurons of earlier tasks (fixed, projected on)
        self.input_layers_: list[str] = []  # layers that read the network's input (hlop_lr_input)
        self.tasks_ = 0  # experiences finished
        self._projector = proj.Projector()
        return self

    def new_neurons(self, task: int) -> int:
        """Subspace neurons each layer gains for task ``task`` (0-based)."""
        if task == 0:
            return self.hlop_neurons
        return max(0, self.hlop_neurons_increment - self.hlop_increment_decay * (task // DECAY_EVERY))

    # -- hooks ----------------------------------------------------------------------------
    def before_experience(self, exp):
        super().before_experience(exp)
        data = exp.train
        t = data.t[:2] if data.t is not None else torch.full((min(2, len(data)),), exp.task_id, device=data.y.device)
        inputs = proj.layer_inputs(self.model, data.x[:2], t)
        if not self.input_layers_:
            self.input_layers_ = _input_layers(self.model, data.x[:2], t)
        for name, r in inputs.items():
            self.grow(name, r.shape[1], self.new_neurons(self.tasks_))

    def grow(self, name: str, dim: int, n: int) -> None:
        """Add ``n`` orthogonally initialised neurons to layer ``name`` (at most ``dim`` in all)."""
        h = self.weights_.get(name)
        have = 0 if h is None else h.shape[0]
        n = min(n, dim - have)
        if n <= 0:
            if h is None:
                self.weights_[name] = torch.zeros(0, dim, device=self.device)
                self.momentum_[name] = torch.zeros(0, dim, device=self.device)
                self.fixed_[name] = 0
            return
        new = torch.nn.init.orthogonal_(torch.empty(n, dim), generator=self.generator).to(self.device)
        self.weights_[name] = new if h is None else torch.cat([h, new])
        self.momentum_[name] = torch.cat([self.momentum_.get(name, torch.zeros(0, dim, device=self.device)),
                                          torch.zeros(n, dim, device=self.device)])
        self.fixed_.setdefault(name, 0)

    def before_step(self, batch):
        self._projector.gradients(self.model, self.old_bases(), self.hlop_project)

    def after_step(self, batch, logits):
        self._projector.updates(self.model, self.old_bases())
        for name, x in proj.layer_inputs(self.model, batch.x, batch.t).items():
            if name in self.weights_:
                lr = self.hlop_lr_input if name in self.input_layers_ and self.hlop_lr_input else self.hlop_lr
                self.hebbian(name, x, lr)

    def after_experience(self, exp):
        for name, h in self.weights_.items():
            self.fixed_[name] = h.shape[0]  # the new neurons join the old subspace
        self.tasks_ += 1

    # -- the subspace ---------------------------------------------------------------------
    def old_bases(self) -> dict[str, torch.Tensor]:
        """{layer: H_old^T}: the (d, k) matrices the gradients are projected against."""
        return {n: h[:self.fixed_[n]].T for n, h in self.weights_.items() if self.fixed_[n] > 0}

    @torch.no_grad()
    def hebbian(self, name: str, x: torch.Tensor, lr: float) -> None:
        """``hlop_iterations`` steps of Oja's subspace rule on the activity rows ``x`` (n, d); the
        old (fixed) neurons take part in the reconstruction but do not learn."""
        h, mom, k = self.weights_[name], self.momentum_[name], self.fixed_[name]
        if h.shape[0] == k:
            return
        # the fixed neurons' part of the reconstruction does not change over the iterations
        residual = x - (x @ h[:k].T) @ h[:k] if k else x
        for _ in range(self.hlop_iterations):
            y = x @ h[k:].T  # the learning neurons' responses
            delta = (y.T @ (residual - y @ h[k:]) / len(x)).clamp_(-CLAMP, CLAMP)
            mom[k:] = MOMENTUM * mom[k:] + (1 - MOMENTUM) * delta
            h[k:] += lr * mom[k:]
        if not torch.isfinite(h).all():
            raise DivergenceError(f"HLOP: the subspace neurons of layer '{name}' diverged; lower "
                                  f"strategy.{'hlop_lr_input' if name in self.input_layers_ else 'hlop_lr'} "
                                  f"(now {lr:g})")

    def extra_state(self):
        return {"weights": dict(self.weights_), "momentum": dict(self.momentum_), "fixed": dict(self.fixed_),
                "input_layers": list(self.input_layers_), "tasks": self.tasks_}

    def load_extra_state(self, state):
        self.weights_ = {n: w.to(self.device) for n, w in state["weights"].items()}
        self.momentum_ = {n: m.to(self.device) for n, m in state["momentum"].items()}
        self.fixed_ = {n: int(k) for n, k in state["fixed"].items()}
        self.input_layers_ = list(state["input_layers"])
        self.tasks_ = int(state["tasks"])


def _input_layers(model, x, t) -> list[str]:
    """The Linear/Conv2d layers whose input is the network's input itself (up to a reshape)."""
    out = []
    proj.observe_layers(model, x, t, lambda name, mod, inp: out.append(name) if inp.numel() == x.numel()
                        and torch.equal(inp.flatten(), x.flatten()) else None)
    return out
