"""Shared pieces of the parameter-isolation methods (PackNet, HAT).

Both give each task its own part of one network and promise exactly zero forgetting in
task-IL. Three things make that promise hold whatever the optimizer does:

- :func:`check_model`: one head per task (``MultiHead``, task-IL's default: a shared head would
  be retrained by every task) and no batch norm (its running statistics are shared by all tasks
  and change with every training forward).
- the methods zero the gradients of what old tasks own (their papers' mechanism), and
- :class:`Frozen` writes the owned values back after every optimizer step, so that momentum or
  Adam moments carried over from earlier steps, weight decay, or another member of a
  composition cannot move them by a single bit.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..models import MultiHead

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)


def check_model(model: nn.Module, method: str) -> None:
    """Refuse models the method cannot isolate tasks in (a ConfigError that says what to use)."""
    if not isinstance(model.head, MultiHead):
        raise ConfigError(f"strategy '{method}' needs one output head per task (model head 'multi', the task-IL "
                          f"default); this model's head is {type(model.head).__name__}, shared by all tasks")
    for name, m in model.backbone.named_modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            raise ConfigError(f"strategy '{method}': the backbone has a normalisation layer ('{name}', "
                              f"{type(m).__name__}) whose statistics every task would change; use model.norm: null")


def weight_layers(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """The backbone's ``nn.Linear`` and ``nn.Conv2d`` layers, in registration order, with names."""
    return [(n, m) for n, m in backbone.named_modules() if isinstance(m, WEIGHT_LAYERS)]


def head_parameters(model: nn.Module, tasks) -> list[nn.Parameter]:
    """The parameters of the output heads of ``tasks`` (task ids)."""
    heads = model.head.heads
    return [p for t in tasks if str(t) in heads for p in heads[str(t)].parameters()]


class Frozen:
    """Parameter entries that must keep their present values: ``restore()`` writes them back.

    ``items``: ``(parameter, keep)`` pairs; ``keep`` a boolean mask of the entries to keep (same
    shape, or broadcastable), or None for the whole tensor. The reference values are copied
    when the object is made; only kept entries are stored meaningfully, so rebuilding it from
    the current values at any later time (a resumed run) gives the same restores."""

    def __init__(self, items):
        self.items = []
        for p, keep in items:
            if keep is not None and not bool(keep.any()):
                continue
            self.items.append((p, None if keep is None else keep.expand_as(p), p.detach().clone()))

    @torch.no_grad()
    def restore(self) -> None:
        for p, keep, ref in self.items:
            if keep is None:
                p.copy_(ref)
            else:
                p.copy_(torch.where(keep, ref, p))


def zero_grad_where(p: torch.Tensor, frozen: torch.Tensor | None) -> None:
    """Zero ``p.grad`` where ``frozen`` (a boolean mask, broadcastable; None: everywhere)."""
    if p.grad is None:
        return
    if frozen is None:
        p.grad.zero_()
    else:
        p.grad.masked_fill_(frozen, 0.0)


@torch.no_grad()
def predict_with_task_weights(model, x, task, finished: list, backbone_weights) -> torch.Tensor:
    """Task-IL prediction of the isolation methods: each sample of a finished task (one of
    ``finished``, the task ids in arrival order) runs the backbone with that task's weights
    (``backbone_weights(position)``: {parameter name: tensor} for ``functional_call``); a sample of
    the task in training, or of one not seen yet, runs the network as it is. Without task ids:
    the network as it is."""
    from torch.func import functional_call

    if task is None:
        return model(x, None)
    task = torch.as_tensor(task, device=x.device)
    if task.ndim == 0:
        task = task.expand(len(x))
    out = None
    for t in torch.unique(task).tolist():
        rows = torch.nonzero(task == t).flatten()
        if t in finished:
            h = functional_call(model.backbone, backbone_weights(finished.index(t)), (x[rows],))
            logits = model.head(h, task[rows])
        else:
            logits = model(x[rows], task[rows])
        if out is None:
            out = logits.new_full((len(x), logits.shape[1]), float("-inf"))
        out[rows] = logits
    return out
