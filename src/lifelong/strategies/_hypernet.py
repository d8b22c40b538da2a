"""Shared machinery of the hypernetwork methods (``hnet``, ``rnn_hnet``).

A hypernetwork maps a learned task embedding to ALL weights of the target network: the
model's backbone and a linear output layer over the stream's whole label space (the task's
classes are its rows, as the multi-head output layer of von Oswald et al.'s split MNIST, which
has 2 outputs per task and uses the task's). The target network is run functionally
(``torch.func.functional_call``) on the model itself with the generated tensors in place of its
parameters, so any backbone works; the model's own parameters are never trained (its weights are
only the architecture). Training task ``t`` optimises the hypernetwork and ``t``'s embedding with

    L = CE(f(x; h(e_t)), y) + beta / |T_prev| * sum_{t' < t} || w_t' * (h(e_t') - h*(e_t')) ||^2

with ``h*(e_t')`` the outputs stored when the previous task ended (targets) and ``w_t'`` per-weight
importances (all ones: von Oswald et al.'s output regulariser). Earlier embeddings are fixed.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from ..errors import ConfigError
from ..models import MultiHead
from .base import Strategy


def xavier_(w: torch.Tensor, generator: torch.Generator) -> None:
    """Xavier-uniform init of a 2-D weight (hypercl's init of every hypernetwork matrix)."""
    bound = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
    with torch.no_grad():
        w.copy_((torch.rand(w.shape, generator=generator) * 2 - 1) * bound)


class HypernetStrategy(Strategy):
    """Base of the hypernetwork methods: subclasses build ``hnet_`` (``_build``), a module mapping
    embeddings (k, emb_dim) to flat target weights (k, n_out), and set ``beta``/``emb_dim``."""
    own_parameters = True  # trains/predicts with its own parameters (base.Compose.check_composable)

    scenarios = ("task",)

    # -- subclass interface -----------------------------------------------------------------
    def _build(self, n_out: int) -> nn.Module:
        raise NotImplementedError

    def _beta(self) -> float:
        raise NotImplementedError

    def _emb_dim(self) -> int:
        raise NotImplementedError

    def _emb_std(self) -> float:
        return 1.0

    # -- set-up -----------------------------------------------------------------------------
    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        head = model.head
        if not isinstance(head, MultiHead):
            raise ConfigError(f"strategy '{self.name}' generates a multi-head target network (task-IL): the model "
                              f"needs the 'multi' head, got {type(head).__name__}")
        shapes = [(f"backbone.{n}", tuple(p.shape)) for n, p in model.backbone.named_parameters()]
        shapes += [("head.weight", (head.n_classes, head.in_features)), ("head.bias", (head.n_classes,))]
        self.shapes = shapes
        self.n_out = sum(math.prod(s) for _, s in shapes)
        self.hnet_ = self._build(self.n_out).to(self.device)
        self.task_emb_ = nn.ParameterDict()  # str(task id) -> embedding
        self.targets_: dict[int, torch.Tensor] = {}  # task -> h*(e_t), stored when a task ends
        self.importance_: dict[int, torch.Tensor] = {}  # task -> per-weight importance (rnn_hnet)
        self.tasks_: list[int] = []
        self.current_: int | None = None
        self._cache: dict[int, torch.Tensor] = {}  # task -> generated weights, for evaluation between steps
        self._stacked = None  # (earlier tasks, their targets, their importances) stacked for the regulariser
        return self

    def parameter_count(self) -> dict:
        """Trainable parameters: the hypernetwork (with its chunk embeddings) and the task embeddings;
        the target network's weights are generated, not stored."""
        hnet = sum(p.numel() for p in self.hnet_.parameters())
        emb = sum(p.numel() for p in self.task_emb_.values())
        return {"trainable": hnet + emb, "hypernetwork": hnet, "task_embeddings": emb, "target_network": self.n_out}

    def param_groups(self):
        params = list(self.hnet_.parameters())
        if self.current_ is not None:
            params.append(self.task_emb_[str(self.current_)])
        return [{"params": params}]

    def before_experience(self, exp):
        super().before_experience(exp)
        self._cache = {}
        key = str(exp.task_id)
        if key not in self.task_emb_:
            e = torch.randn(self._emb_dim(), generator=self.generator) * self._emb_std()
            self.task_emb_[key] = nn.Parameter(e.to(self.device))
            self.tasks_.append(exp.task_id)
        self.current_ = exp.task_id

    # -- the target network -----------------------------------------------------------------
    def generate(self, tasks: list[int]) -> torch.Tensor:
        """Flat target weights (len(tasks), n_out) for these tasks' embeddings."""
        emb = torch.stack([self.task_emb_[str(t)] for t in tasks])
        return self.hnet_(emb)

    def unflatten(self, w: torch.Tensor, task: int) -> dict[str, torch.Tensor]:
        """A flat weight vector -> ``functional_call`` parameters of the model for ``task``: the
        backbone's tensors and the task's rows of the generated output layer as its head."""
        out, i = {}, 0
        for name, shape in self.shapes:
            n = math.prod(shape)
            out[name] = w[i:i + n].view(shape)
            i += n
        cls = torch.as_tensor(self.model.head.task_classes[task], device=w.device)
        out[f"head.heads.{task}.weight"] = out.pop("head.weight")[cls]
        out[f"head.heads.{task}.bias"] = out.pop("head.bias")[cls]
        return out

    def run(self, w: torch.Tensor, x: torch.Tensor, task: int) -> torch.Tensor:
        """The target network with flat weights ``w`` on inputs of one task: logits over the label
        space (``-inf`` outside the task's classes), through the model's own forward."""
        t = torch.full((len(x),), task, dtype=torch.long, device=x.device)
        return functional_call(self.model, self.unflatten(w, task), (x, t))

    def _weights(self, tasks: list[int], cached: bool) -> list[torch.Tensor]:
        """Generated weights per task; ``cached`` (evaluation): kept until the next training step."""
        if not cached:
            return list(self.generate(tasks))
        missing = [t for t in tasks if t not in self._cache]
        if missing:
            self._cache.update(zip(missing, self.generate(missing)))
        return [self._cache[t] for t in tasks]

    def _answer(self, x, task, tasks_known, cached=False) -> torch.Tensor:
        out = x.new_full((len(x), self.model.head.n_classes), float("-inf"))
        if task is None:  # task-agnostic: every learned task's network answers, each label its highest logit
            known = [t for t in self.tasks_ if t in tasks_known]
            if known:
                for w, t in zip(self._weights(known, cached), known):
                    out = torch.maximum(out, self.run(w, x, t))
            return out
        task = torch.as_tensor(task, device=x.device)
        if task.ndim == 0:
            task = task.expand(len(x))
        ids = [t for t in torch.unique(task).tolist() if str(t) in self.task_emb_ and t in tasks_known]
        if not ids:
            return out
        if len(ids) == 1 and bool((task == ids[0]).all()):
            return self.run(self._weights(ids, cached)[0], x, ids[0])
        for w, t in zip(self._weights(ids, cached), ids):
            rows = torch.nonzero(task == t).flatten()
            out = out.index_put((rows,), self.run(w, x[rows], t))
        return out

    def forward(self, batch):
        self._cache = {}  # a training step follows: generated weights change
        return self._answer(batch.x, batch.t, self.model.head.task_classes)

    @torch.no_grad()
    def predict(self, x, task=None):
        return self._answer(x, task, self.model.head.task_classes, cached=True)

    # -- the regulariser --------------------------------------------------------------------
    def regulariser(self) -> torch.Tensor | float:
        """sum over earlier tasks of ||w * (h(e_t') - h*(e_t'))||^2, divided by their number (the
        earlier embeddings are fixed: detached)."""
        prev = [t for t in self.targets_ if t != self.current_]
        if not prev:
            return 0.0
        emb = torch.stack([self.task_emb_[str(t)].detach() for t in prev])
        if self._stacked is None or self._stacked[0] != prev:  # stacked once per task, not per step
            self._stacked = (prev, torch.stack([self.targets_[t] for t in prev]),
                             torch.stack([self.importance_[t] for t in prev]) if self.importance_ else None)
        _, targets, importance = self._stacked
        if importance is not None:
            return ((self.hnet_(emb) - targets).pow(2) * importance).sum() / len(prev)
        parts = getattr(self.hnet_, "parts", None)
        if parts is None:
            return F.mse_loss(self.hnet_(emb), targets, reduction="sum") / len(prev)
        # a chunked hypernetwork: its full chunks and its last, partial one, compared apart (the
        # flat output would be a slice of the padded chunks, and its backward a padded copy)
        full, rest = parts(emb)
        n = full.shape[1]
        reg = F.mse_loss(full, targets[:, :n], reduction="sum")
        if rest is not None:
            reg = reg + F.mse_loss(rest, targets[:, n:], reduction="sum")
        return reg / len(prev)

    def penalty(self, logits, batch):
        beta = self._beta()
        if beta == 0 or not self.targets_:
            return 0.0
        reg = self.regulariser()
        return 0.0 if isinstance(reg, float) else beta * reg

    @torch.no_grad()
    def store_targets(self) -> None:
        """h*(e_t) for every task learned so far, from the hypernetwork as it is now."""
        self._stacked = None
        if self.tasks_:
            # generated with autograd on, as the regulariser generates them: some kernels differ
            # without it (torch's CPU LSTM takes oneDNN's), and a target a few ulps off its own
            # output would make the regulariser nonzero right after a task
            with torch.enable_grad():
                w = self.generate(self.tasks_).detach()
            self.targets_ = {t: w[i].clone() for i, t in enumerate(self.tasks_)}

    def after_experience(self, exp):
        self._cache = {}
        self.store_targets()
        self.current_ = None

    def fisher(self, exp, n_samples: int, chunk: int = 32) -> torch.Tensor:
        """Diagonal empirical Fisher of the generated weights on ``n_samples`` training samples of
        ``exp`` (per-sample gradients of the cross-entropy, squared and averaged), drawn from the
        strategy's generator."""
        data = exp.train
        n = min(n_samples, len(data))
        idx = torch.randperm(len(data), generator=self.generator)[:n].to(data.y.device)
        task = exp.task_id
        with torch.no_grad():
            w = self.generate([task])[0]

        def loss(wv, x, y):
            return F.cross_entropy(self.run(wv, x[None], task), y[None])

        per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
        total = torch.zeros_like(w)
        for s in range(0, n, chunk):
            rows = idx[s:s + chunk]
            g = per_sample(w, data.x[rows].to(self.device), data.y[rows].to(self.device))
            total += g.pow(2).sum(0)
        return total / max(n, 1)

    # -- state ------------------------------------------------------------------------------
    def _hnet_config(self) -> dict:
        """What the hypernetwork's shape depends on beyond the constructor (rnn_hnet: its grown width)."""
        return {}

    def _rebuild(self, config: dict) -> None:
        pass

    def extra_state(self):
        return {"hnet": {k: v.detach().clone() for k, v in self.hnet_.state_dict().items()},
                "hnet_config": dict(self._hnet_config()),
                "task_emb": {k: v.detach().clone() for k, v in self.task_emb_.items()},
                "targets": {int(t): v.clone() for t, v in self.targets_.items()},
                "importance": {int(t): v.clone() for t, v in self.importance_.items()},
                "tasks": list(self.tasks_), "current": self.current_}

    def load_extra_state(self, state):
        self._cache, self._stacked = {}, None
        if state["hnet_config"] != self._hnet_config():
            self._rebuild(state["hnet_config"])
        with torch.no_grad():  # in place: an optimizer built over these parameters keeps them
            for k, v in self.hnet_.state_dict().items():
                v.copy_(state["hnet"][k])
            for k, v in state["task_emb"].items():
                if k in self.task_emb_ and self.task_emb_[k].shape == v.shape:
                    self.task_emb_[k].copy_(v)
                else:
                    self.task_emb_[k] = nn.Parameter(v.to(self.device).clone())
        self.targets_ = {int(t): v.to(self.device).clone() for t, v in state["targets"].items()}
        self.importance_ = {int(t): v.to(self.device).clone() for t, v in state["importance"].items()}
        self.tasks_ = [int(t) for t in state["tasks"]]
        self.current_ = None if state["current"] is None else int(state["current"])
