"""HAT: hard attention to the task.

Serra, Suris, Miron & Karatzoglou (2018), "Overcoming Catastrophic Forgetting with Hard
Attention to the Task" (ICML); reference code github.com/joansj/hat (``approaches/hat.py``,
``networks/mlp_hat.py``, ``networks/alexnet_hat.py``).

Every hidden unit ``i`` of layer ``l`` (a ``nn.Linear`` output, or a ``nn.Conv2d`` channel)
has, per task ``t``, a learned embedding ``e[t,l,i]``; the unit's output (after its ReLU) is
multiplied by the gate ``sigmoid(s * e[t,l,i])``. While task ``t`` trains:

- ``s`` is annealed from ``1/s_max`` to ``s_max``: ``s = 1/s_max + (s_max - 1/s_max) * b/B``
  with ``b/B`` the position within the epoch (``hat_anneal="epoch"``, the paper's schedule:
  ``b`` samples of the epoch's ``B`` done) or within the experience's iteration budget
  (``"experience"``);
- the loss gets the attention regulariser ``hat_c * sum(a * (1 - a_<t)) / sum(1 - a_<t)``
  (``a``: this task's gates; ``a_<t``: the cumulative attention of the earlier tasks, all zero
  for the first task), which keeps the gates of units no earlier task uses sparse;
- the gradient of a weight is multiplied by ``1 - min(a_<t[l,i], a_<t[l-1,j])`` (output unit
  ``i``, input unit ``j``; the first layer's inputs and the biases use the output unit only),
  so what earlier tasks use does not move;
- the embedding gradient is compensated for the annealing:
  ``g *= s_max/s * (cosh(clamp(s e, -50, 50)) + 1) / (cosh(e) + 1)``, and after each step
  the embeddings are clamped to [-6, 6] (the reference's ``thres_cosh`` and ``thres_emb``).

When the task ends its gates at ``s_max`` are binarised (``sigmoid(s_max e) >= 1/2``, i.e.
``e >= 0``) and OR-ed into the cumulative attention. At test time task ``t`` uses its binary
gates, so the units and weights it depends on are exactly the ones later tasks may not change:
BWT is exactly zero (tested).

Defaults and where we differ:
- ``hat_smax = 400`` (at least 1: the anneal starts at 1/s_max), ``hat_c = 0.75``: the paper's
  (and code's) values, found by grid search; embeddings initialised N(0, 1) (``nn.Embedding``'s
  default, as the code), drawn from the strategy's generator. On a very narrow layer (a CNN of
  8 channels on digits) the regulariser can close every unit of a layer for a task, which then
  answers at chance: HAT needs layers of some width (16 channels were enough).
- Binary gates. The reference keeps the test-time gates ``sigmoid(s_max e)`` and the cumulative
  attention as they are; those are binary only up to float rounding, which lets a unit with a
  small |e| drift and breaks exact zero forgetting. We binarise both (a unit is attended or not).
- Frozen entries (weights that the gradient mask zeroes, the biases of attended units, the old
  tasks' heads) are also written back after every step (``_isolation.Frozen``), so the guarantee
  holds with Adam moments carried over, weight decay or a composed method, not only with the
  reference's plain SGD; the reference's SGD with lr decay on validation loss and its gradient
  clipping at 10000 are left to the run's settings.
- No dropout (the reference MLP has it; our backbones do not).
- Gates are applied without editing the model: HAT runs the backbone's layers in their order,
  multiplying each ReLU's output by its layer's gates. The backbone must be a chain of
  Linear/Conv2d layers, each followed by a ReLU (pooling, flattening, dropout allowed in
  between): ``mlp`` and ``cnn`` are; others are refused when the strategy is set up, and the
  chain is checked against the backbone's own forward on the first batch. Gating a channel
  after its ReLU and before max-pooling equals the reference's gating after pooling.
- ``predict(x, None)`` (task-agnostic) uses the union of the finished tasks' gates. A task
  still training answers with ``sigmoid(s_max e)``; a task not seen yet with every unit open.
- A task id that arrives a second time is refused.

Task-IL only. It owns ``forward`` and ``predict``: it composes with penalties and replay (a
replayed sample passes through its own task's gates), and a second owner of either is refused
by the composition contract.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from ..errors import ConfigError
from ._isolation import Frozen, check_model, head_parameters, zero_grad_where
from .base import Strategy

THRES_COSH = 50.0  # the reference's clamp of s*e inside the compensation's cosh
THRES_EMB = 6.0  # the reference's clamp of the embeddings after each step
CHAIN = (nn.Flatten, nn.MaxPool2d, nn.AvgPool2d, nn.Dropout, nn.Identity)  # allowed between layers


def _chain(backbone: nn.Module, method: str):
    """The backbone's leaf modules in order, and for each gated layer (a Linear/Conv2d followed
    by a ReLU): (layer, index of its ReLU in the chain)."""
    leaves = [m for m in backbone.modules() if not list(m.children())]
    gated, pending = [], None
    for i, m in enumerate(leaves):
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            if pending is not None:
                break
            pending = m
        elif isinstance(m, nn.ReLU):
            if pending is not None:
                gated.append((pending, i))
                pending = None
        elif not isinstance(m, CHAIN):
            raise ConfigError(f"strategy '{method}' gates a chain of Linear/Conv2d layers each followed by a ReLU; "
                              f"the backbone {type(backbone).__name__} has a {type(m).__name__}")
    if pending is not None:
        raise ConfigError(f"strategy '{method}' gates a chain of Linear/Conv2d layers each followed by a ReLU; in "
                          f"the backbone {type(backbone).__name__} a {type(pending).__name__} is not followed by one")
    return leaves, gated


class HAT(Strategy):
    name = "hat"
    paper = "Serra et al. 2018, Overcoming Catastrophic Forgetting with Hard Attention to the Task (ICML)"
    scenarios = ("task",)

    def __init__(self, hat_smax: Annotated[float, Field(ge=1)] = 400.0,
                 hat_c: Annotated[float, Field(ge=0)] = 0.75,
                 hat_anneal: Literal["epoch", "experience"] = "epoch"):
        super().__init__()
        self.hat_smax = hat_smax
        self.hat_c = hat_c
        self.hat_anneal = hat_anneal

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        check_model(model, self.name)
        self.leaves, gated = _chain(model.backbone, self.name)
        self.relu_at = {i: g for g, (_, i) in enumerate(gated)}  # chain position -> gated layer
        self.layers = [m for m, _ in gated]
        self.units = [m.out_features if isinstance(m, nn.Linear) else m.out_channels for m in self.layers]
        self.fan = []  # how many inputs of layer l each unit of layer l-1 feeds (flattened channels)
        for li, m in enumerate(self.layers):
            n_in = m.in_features if isinstance(m, nn.Linear) else m.in_channels
            p = self.units[li - 1] if li else None
            if p is not None and (n_in % p or (isinstance(m, nn.Conv2d) and n_in != p)):
                raise ConfigError(f"strategy '{self.name}': layer {m} does not take the {p} units of the layer "
                                  "before it as its inputs")
            self.fan.append(None if p is None else n_in // p)
        total = sum(self.units)
        self.embedding_ = nn.Parameter(torch.zeros(total, device=self.device))  # the current task's
        self.gates_: dict[int, torch.Tensor] = {}  # finished task -> binary gates (total,)
        self.tasks_: list[int] = []
        self.cumulative_ = torch.zeros(total, dtype=torch.bool, device=self.device)
        self.current_: int | None = None  # the task in training
        self.batch_size_ = 0  # the stream's batch size in this experience (the epoch-wise anneal)
        self.n_train_ = 0  # training samples in this experience
        self._frozen = None
        self._checked = False
        return self

    def param_groups(self):
        return [{"params": list(self.model.parameters()) + [self.embedding_]}]

    # -- the annealing and the gates --------------------------------------------------------
    def _s(self) -> float:
        ctx, smax = self.context, self.hat_smax
        if self.hat_anneal == "experience":
            frac = ctx.iteration / max(ctx.n_iterations, 1)
        else:
            bs, n = self.batch_size_, self.n_train_
            per_epoch = max(1, math.ceil(n / bs)) if bs and n else 1
            frac = (ctx.iteration % per_epoch) * bs / n if n else 0.0
        return 1 / smax + (smax - 1 / smax) * frac

    def _gates(self, task, s: float | None) -> list[torch.Tensor]:
        """Per gated layer, each sample's gates, (B or 1, units): a finished task's binary gates,
        the training task's ``sigmoid(s e)`` (``s=None``: ``s_max``), all ones for a task not seen
        yet; ``task=None``: the union of the finished tasks' gates."""
        e = self.embedding_
        if task is None:
            row = (self.cumulative_ if self.gates_ else torch.ones_like(self.cumulative_)).to(e.dtype)[None]
        else:
            task = torch.as_tensor(task, device=e.device)
            ids = torch.unique(task).tolist()
            table, where = [], {}
            for t in ids:
                if t in self.gates_:
                    table.append(self.gates_[t].to(e.dtype))
                elif t == self.current_:
                    table.append(torch.sigmoid((self.hat_smax if s is None else s) * e))
                else:
                    table.append(torch.ones_like(e))
                where[t] = len(table) - 1
            table = torch.stack(table)
            if len(ids) == 1:
                row = table
            else:
                lookup = torch.zeros(max(ids) + 1, dtype=torch.long, device=e.device)
                lookup[torch.as_tensor(ids, device=e.device)] = torch.arange(len(ids), device=e.device)
                row = table[lookup[task]]
        return list(torch.split(row, self.units, dim=1)) if self.units else []

    def _run(self, x, task, gates):
        h = x
        for i, leaf in enumerate(self.leaves):
            h = leaf(h)
            g = self.relu_at.get(i)
            if g is not None:
                gate = gates[g]
                h = h * (gate.view(*gate.shape, 1, 1) if h.ndim == 4 else gate)
        return self.model.head(h, task)

    def _check_chain(self, x):
        """Once: the chain of layers is the backbone (a backbone whose forward does something else is refused)."""
        if self._checked:
            return
        backbone, was_training = self.model.backbone, self.model.backbone.training
        backbone.eval()  # dropout off
        try:
            with torch.no_grad():
                h = x[:2]
                for leaf in self.leaves:
                    h = leaf(h)
                same = h.shape == (len(x[:2]), backbone.out_features) and torch.allclose(
                    h, backbone(x[:2]), rtol=1e-4, atol=1e-5)
        except RuntimeError:  # the layers in registration order do not even fit together
            same = False
        finally:
            backbone.train(was_training)
        if not same:
            raise ConfigError(f"strategy '{self.name}': the backbone {type(backbone).__name__} does not compute its "
                              "layers in the order they are registered; HAT cannot gate it")
        self._checked = True

    # -- training -----------------------------------------------------------------------------
    def before_experience(self, exp):
        super().before_experience(exp)
        if exp.task_id in self.tasks_:
            raise ConfigError(f"strategy 'hat': task {exp.task_id} arrives a second time; HAT learns each task once "
                              "(the units it attends are frozen when it ends)")
        self.tasks_.append(exp.task_id)
        self.current_ = exp.task_id
        self.n_train_, self.batch_size_ = len(exp.train), 0
        with torch.no_grad():
            self.embedding_.copy_(torch.randn(self.embedding_.shape, generator=self.generator).to(self.device))
        opt = self.context.optimizer  # a kept optimizer: no moments from the previous task's embedding
        if opt is not None:
            opt.state.pop(self.embedding_, None)
        self._freeze()

    def forward(self, batch):
        self._check_chain(batch.x)
        if self.context.iteration == 0 or not self.batch_size_:
            self.batch_size_ = batch.n_new
        return self._run(batch.x, batch.t, self._gates(batch.t, self._s()))

    def penalty(self, logits, batch):
        if self.current_ is None or self.hat_c == 0:
            return 0.0
        a = torch.sigmoid(self._s() * self.embedding_)
        free = (~self.cumulative_).to(a.dtype)
        return self.hat_c * (a * free).sum() / free.sum().clamp(min=1.0)

    def _protected(self):
        """Per gated layer: (weight entries, bias entries) the earlier tasks use, as boolean masks."""
        cum = torch.split(self.cumulative_, self.units)
        out = []
        for li, (m, fan) in enumerate(zip(self.layers, self.fan)):
            post = cum[li].view(-1, *[1] * (m.weight.ndim - 1))
            w = post
            if fan is not None:
                pre = cum[li - 1].repeat_interleave(fan).view(1, -1, *[1] * (m.weight.ndim - 2))
                w = post & pre
            out.append((w.expand_as(m.weight), cum[li]))
        return out

    def _freeze(self):
        self._protect = self._protected()
        items = []
        for m, (w, b) in zip(self.layers, self._protect):
            items.append((m.weight, w))
            if m.bias is not None:
                items.append((m.bias, b))
        items += [(p, None) for p in head_parameters(self.model, [t for t in self.tasks_ if t != self.current_])]
        self._frozen = Frozen(items)

    def before_step(self, batch):
        if self._frozen is None:
            return
        for m, (w, b) in zip(self.layers, self._protect):
            zero_grad_where(m.weight, w)
            if m.bias is not None:
                zero_grad_where(m.bias, b)
        for p in head_parameters(self.model, [t for t in self.tasks_ if t != self.current_]):
            zero_grad_where(p, None)
        g = self.embedding_.grad
        if g is not None:  # compensate for the annealing (the reference's thres_cosh)
            s, e = self._s(), self.embedding_.detach()
            g.mul_(self.hat_smax / s * (torch.cosh(torch.clamp(s * e, -THRES_COSH, THRES_COSH)) + 1)
                   / (torch.cosh(e) + 1))

    def after_step(self, batch, logits):
        if self._frozen is None:
            return
        with torch.no_grad():
            self.embedding_.clamp_(-THRES_EMB, THRES_EMB)
        self._frozen.restore()

    def after_experience(self, exp):
        mask = self.embedding_.detach() >= 0  # sigmoid(s_max e) >= 1/2
        self.gates_[exp.task_id] = mask.clone()
        self.cumulative_ = self.cumulative_ | mask
        self.current_ = None
        self._frozen = None

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, x, task=None):
        self._check_chain(x)
        return self._run(x, task, self._gates(task, None))

    # -- state --------------------------------------------------------------------------------
    def extra_state(self):
        return {"embedding": self.embedding_.detach().clone(), "gates": {int(t): m.clone() for t, m in
                                                                         self.gates_.items()},
                "tasks": list(self.tasks_), "cumulative": self.cumulative_.clone(), "current": self.current_,
                "batch_size": self.batch_size_, "n_train": self.n_train_}

    def load_extra_state(self, state):
        with torch.no_grad():
            self.embedding_.copy_(state["embedding"].to(self.device))
        self.gates_ = {int(t): m.to(self.device).clone() for t, m in state["gates"].items()}
        self.tasks_ = [int(t) for t in state["tasks"]]
        self.cumulative_ = state["cumulative"].to(self.device).clone()
        self.current_ = None if state["current"] is None else int(state["current"])
        self.batch_size_, self.n_train_ = int(state["batch_size"]), int(state["n_train"])
        self._frozen = None
        if self.current_ is not None:  # inside an experience: the frozen entries hold their values
            self._freeze()
