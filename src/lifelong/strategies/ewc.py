"""EWC: Elastic Weight Consolidation, and its online variant.

Kirkpatrick et al. (2017), "Overcoming catastrophic forgetting in neural networks" (PNAS);
online EWC from Schwarz et al. (2018), "Progress & Compress: A scalable framework for
continual learning" (ICML). Follows the reference code of van de Ven, Tuytelaars & Tolias
(2022), "Three types of incremental learning" (Nature Machine Intelligence),
github.com/GMvandeVen/continual-learning (``estimate_fisher`` / ``ewc_loss``):

- After each experience, the diagonal Fisher F is estimated on ``ewc_fisher_samples``
  training samples of that experience (None = all, van de Ven's ``fisher_n=None``) from
  per-sample gradients of the log-likelihood, in eval mode, with the logits the loop trains
  on: task-aware (the experience's task id) in task-IL, the active classes in class-IL.
- ``ewc_fisher_labels``: ``"all"`` (default, the reference code's default: every label,
  weighted by the predicted probability, i.e. the true Fisher), ``"sample"`` (one label drawn
  from the prediction), ``"predicted"`` (the argmax label; the 2019 version of the code) or
  ``"true"`` (the empirical Fisher). F is the mean over samples (the reference divides by n-1).
- Penalty ``ewc_lambda/2 * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2``, one term per past
  experience k. Online EWC (``ewc_online``) keeps one F = gamma*F_old + F_new and one anchor,
  and, as Schwarz et al. and the reference code do, penalises with gamma*F.

Default ``ewc_lambda = 1e5``: van de Ven et al.'s value for task-IL Split MNIST. Their other
values: Split MNIST domain-IL 1e10, class-IL 1e9; Permuted MNIST 100; CIFAR-100 task/domain-IL
1e3, class-IL 100. ``ewc_gamma = 1`` (reference default). Parameters created after a Fisher
was stored (new task heads) are not penalised by it.
"""
from __future__ import annotations

import contextlib
from typing import Annotated, Literal, Optional, get_args

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import DivergenceError
from .base import Strategy

FisherLabels = Literal["all", "sample", "predicted", "true"]
LABELS = get_args(FisherLabels)
CHUNK = 32  # samples per batched per-sample-gradient pass (general models)
FAST_CHUNK = 1024  # samples per pass when every parameter is in an nn.Linear


class EWC(Strategy):
    name = "ewc"
    paper = "Kirkpatrick et al. 2017 (PNAS); online: Schwarz et al. 2018 (ICML)"
    scenarios = ("class", "task", "domain")

    def __init__(self, ewc_lambda: Annotated[float, Field(ge=0)] = 1e5,
                 ewc_fisher_samples: Optional[Annotated[int, Field(ge=1)]] = None,
                 ewc_fisher_labels: FisherLabels = "all", ewc_online: bool = False,
                 ewc_gamma: Annotated[float, Field(ge=0, le=1)] = 1.0):
        super().__init__()
        self.ewc_lambda = ewc_lambda
        self.ewc_fisher_samples = ewc_fisher_samples
        self.ewc_fisher_labels = ewc_fisher_labels
        self.ewc_online = ewc_online
        self.ewc_gamma = ewc_gamma

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        if self.ewc_fisher_labels not in LABELS:
            raise ValueError(f"ewc_fisher_labels must be one of {LABELS}, got {self.ewc_fisher_labels!r}")
        self.terms_: list[dict] = []  # [{"fisher": {name: F}, "anchor": {name: theta*}}]
        return self

    def penalty(self, logits, batch):
        if not self.terms_:
            return 0.0
        params = dict(self.model.named_parameters())
        scale = self.ewc_gamma if self.ewc_online else 1.0
        total = 0.0
        for term in self.terms_:
            for n, f in term["fisher"].items():
                p = params.get(n)
                if p is not None and p.shape == f.shape:
                    total = total + (f * (p - term["anchor"][n]) ** 2).sum()
        return self.ewc_lambda / 2 * scale * total

    def after_experience(self, exp):
        fisher = self.estimate_fisher(exp)
        anchor = {n: p.detach().clone() for n, p in self.model.named_parameters() if n in fisher}
        if self.ewc_online and self.terms_:
            old = self.terms_[0]["fisher"]
            fisher = {n: f + self.ewc_gamma * old[n] if n in old and old[n].shape == f.shape else f
                      for n, f in fisher.items()}
            self.terms_ = []
        self.terms_.append({"fisher": fisher, "anchor": anchor})

    def estimate_fisher(self, exp) -> dict[str, torch.Tensor]:
        """Diagonal Fisher: mean over samples of squared per-sample log-likelihood gradients."""
        data, model = exp.train, self.model
        n = len(data) if self.ewc_fisher_samples is None else min(self.ewc_fisher_samples, len(data))
        idx = torch.randperm(len(data), generator=self.generator)[:n].to(data.y.device)
        named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
        fisher = {k: torch.zeros_like(p) for k, p in named}
        linears = _linear_layers(model, named)  # None unless every parameter lives in an nn.Linear
        chunk = FAST_CHUNK if linears else CHUNK
        was_training = model.training
        model.eval()
        for s in range(0, n, chunk):
            i = idx[s:s + chunk]
            t = data.t[i] if data.t is not None else torch.full((len(i),), exp.task_id, device=data.y.device)
            with _record_linear_io(linears) as io:
                logp = F.log_softmax(model(data.x[i], t), dim=1)
            if torch.isnan(logp).any():
                raise DivergenceError(
                    f"EWC: the model's outputs are NaN at the end of experience {exp.index} (training diverged); "
                    f"lower strategy.ewc_lambda (now {self.ewc_lambda:g}) or train.lr")
            targets = self._targets(logp, data.y[i])
            if linears and io.complete(len(i)) and all(torch.isfinite(ll).all() for ll, _ in targets):
                _accumulate_linear(fisher, linears, io, targets)
            else:
                _accumulate_per_sample(fisher, named, targets)
        model.train(was_training)
        return {k: f / max(n, 1) for k, f in fisher.items()}

    def _targets(self, logp, y):
        """(log-likelihood per sample, weight per sample) pairs, one per label considered."""
        probs = logp.detach().exp()
        labels = self.ewc_fisher_labels
        if labels == "all":  # every active label, weighted by its predicted probability
            cols = torch.nonzero(torch.isfinite(logp).any(0)).flatten().tolist()
            return [(logp[:, c], probs[:, c]) for c in cols]
        if labels == "predicted":
            y = probs.argmax(1)
        elif labels == "sample":
            y = torch.multinomial(probs.cpu(), 1, generator=self.generator).flatten().to(probs.device)
        return [(logp.gather(1, y[:, None]).squeeze(1), torch.ones(len(y), device=logp.device))]

    def extra_state(self):
        return {"terms": [{"fisher": dict(t["fisher"]), "anchor": dict(t["anchor"])} for t in self.terms_]}

    def load_extra_state(self, state):
        self.terms_ = [{key: {n: v.to(self.device) for n, v in t[key].items()} for key in ("fisher", "anchor")}
                       for t in state["terms"]]


# -- per-sample squared gradients ------------------------------------------------------------
# For a linear layer out = a W^T + b, sample b's gradient is g_b a_b^T (g_b: the gradient at the
# layer's output), so sum_b w_b grad_b^2 = (w g^2)^T a^2: one backward pass per label for a whole
# chunk, exact, instead of one per sample. Used when every parameter lives in an nn.Linear that
# runs once per forward on the whole chunk (MLPs); anything else takes the general path.

def _linear_layers(model, named):
    owner = {}
    for m in model.modules():
        if isinstance(m, nn.Linear):
            owner[id(m.weight)] = m
            if m.bias is not None:
                owner[id(m.bias)] = m
    if not named or any(id(p) not in owner for _, p in named):
        return None
    names = {id(p): k for k, p in named}
    layers = {}
    for _, p in named:
        m = owner[id(p)]
        layers[m] = (names.get(id(m.weight)), names.get(id(m.bias)) if m.bias is not None else None)
    return layers


class _LinearIO:
    def __init__(self):
        self.calls: dict = {}

    def complete(self, batch: int) -> bool:
        """Each layer ran at most once, on the whole chunk (layers that did not run, such as
        other tasks' heads, get no Fisher from this chunk)."""
        called = [c for c in self.calls.values() if c]
        return bool(called) and all(len(c) == 1 and c[0][0].shape[0] == batch for c in self.calls.values() if c)


@contextlib.contextmanager
def _record_linear_io(layers):
    io = _LinearIO()
    if not layers:
        yield io
        return

    def hook(module, inputs, output):
        io.calls.setdefault(module, []).append((inputs[0].detach(), output))

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        yield io
    finally:
        for h in handles:
            h.remove()
    for m in layers:
        io.calls.setdefault(m, [])


def _accumulate_linear(fisher, layers, io, targets):
    mods = [m for m in layers if io.calls[m]]
    outs = [io.calls[m][0][1] for m in mods]
    for j, (ll, w) in enumerate(targets):
        grads = torch.autograd.grad(ll.sum(), outs, retain_graph=j < len(targets) - 1, allow_unused=True)
        for m, g in zip(mods, grads):
            if g is None:
                continue
            wg2 = w[:, None] * g * g
            a = io.calls[m][0][0]
            wname, bname = layers[m]
            if wname is not None:
                fisher[wname] += wg2.T @ (a * a)
            if bname is not None:
                fisher[bname] += wg2.sum(0)


def _accumulate_per_sample(fisher, named, targets):
    # One backward pass vmapped over the rows of the identity (is_grads_batched): row b is
    # d ll[b] / d theta. Unlike torch.func.vmap over the forward, this works with heads that
    # write into slices (MultiHead).
    params = [p for _, p in named]
    eye = torch.eye(len(targets[0][0]), device=targets[0][0].device)
    for j, (ll, w) in enumerate(targets):
        grads = torch.autograd.grad(ll, params, grad_outputs=eye, is_grads_batched=True,
                                    retain_graph=j < len(targets) - 1, allow_unused=True)
        for (k, _), g in zip(named, grads):
            if g is not None:
                fisher[k] += torch.einsum("b,b...->...", w, g * g)
