"""Helpers shared by the test-time-adaptation methods (Tent, CoTTA): normalisation layers,
batch statistics during adaptation, the adaptation optimizer and the entropy losses."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..errors import ConfigError

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def norm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, NORM_TYPES)]


def norm_affine_params(model: nn.Module) -> list[nn.Parameter]:
    """The scale and shift of every normalisation layer (Tent's only trainable parameters)."""
    return [p for m in norm_layers(model) for p in (m.weight, m.bias) if p is not None]


def require_norm_layers(model: nn.Module, method: str) -> None:
    if not norm_affine_params(model):
        raise ConfigError(f"strategy '{method}' adapts the affine parameters of normalisation layers, and this "
                          f"model has none; use a model with batch norm (model.norm: batch)")


@contextmanager
def test_batch_statistics(*models: nn.Module):
    """Every module in eval mode except batch norm, which normalises with the current batch's
    statistics and leaves its running statistics untouched (Tent's and CoTTA's "test mode");
    the modules' previous modes are restored on exit."""
    saved = [(m, m.training, getattr(m, "track_running_stats", None)) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
                    m.track_running_stats = False  # with running buffers kept: batch stats, no update
        yield
    finally:
        for m, training, track in saved:
            m.training = training
            if track is not None:
                m.track_running_stats = track


def make_optimizer(params, kind: str, lr: float, momentum: float) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))


def _active(logits: torch.Tensor) -> torch.Tensor:
    """The outputs that are active (heads mark the others -inf)."""
    return logits[:, torch.isfinite(logits).all(0)]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of softmax(logits) over the active outputs, per sample."""
    z = _active(logits)
    return -(z.softmax(1) * z.log_softmax(1)).sum(1)


def soft_cross_entropy(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student's softmax toward the teacher's soft labels (over the outputs
    active in both), per sample."""
    cols = torch.isfinite(student).all(0) & torch.isfinite(teacher).all(0)
    return -(teacher[:, cols].softmax(1) * student[:, cols].log_softmax(1)).sum(1)


def step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.Tensor]) -> None:
    """One optimizer step on ``params`` only: gradients of the others are neither computed nor
    touched (so adaptation never changes which parameters require gradients)."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.detach()
    optimizer.step()
    for p in params:
        p.grad = None
