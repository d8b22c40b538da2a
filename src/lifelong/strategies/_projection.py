"""Shared pieces of the orthogonal-projection methods (GPM, HLOP).

Both keep, for every ``nn.Linear`` and ``nn.Conv2d`` of the model, a subspace of the layer's
input space and remove its component from the layer's weight gradient, ``G <- G - G M M^T``
(``M``: an orthonormal basis of the subspace, one column per direction). A layer's output on
an input ``x`` in the subspace is then unchanged by the step: ``(W + dW) x = W x`` when
``dW x = 0``.

- Inputs are *rows*: a linear layer's input vectors; a convolution's unfolded patches
  (``F.unfold`` with the layer's kernel, stride, padding and dilation), as GPM's paper does.
- Bias: a layer with a bias sees the input ``[x, 1]`` and its gradient ``[G_W | g_b]``, so the
  bias is projected with the weight and the guarantee holds for the full affine map (the
  reference codes use layers without bias instead).
- ``project="update"`` also projects the optimizer's change of the weights after the step:
  with plain SGD (the papers) the gradient projection already gives it, but an adaptive
  optimizer (Adam, our default) rescales the projected gradient entry by entry, and weight
  decay adds a term in the subspace, either of which breaks the guarantee.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

Project = Literal["gradient", "update"]


def check_layers(model: nn.Module, method: str) -> None:
    """Grouped convolutions have one weight block per group: their patches are not one input space."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.groups != 1:
            raise ConfigError(f"{method}: layer '{name}' is a grouped convolution (groups={m.groups}); "
                              f"{method} projects Linear and ungrouped Conv2d layers only")


def rows(module: nn.Module, inp: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows of its (bias-augmented) input space, shape (n, d[+1])."""
    if isinstance(module, nn.Conv2d):
        r = F.unfold(inp, module.kernel_size, dilation=module.dilation, padding=module.padding,
                     stride=module.stride).transpose(1, 2)
        r = r.reshape(-1, r.shape[-1])
    else:
        r = inp.reshape(-1, inp.shape[-1])
    r = r.float()
    if module.bias is not None:
        r = torch.cat([r, r.new_ones(len(r), 1)], 1)
    return r


def input_dim(module: nn.Module) -> int:
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels
    else:
        k = module.in_features
    return k + (module.bias is not None)


@torch.no_grad()
def observe_layers(model: nn.Module, x: torch.Tensor, t: torch.Tensor | None, hook) -> None:
    """Run the model once (eval mode, no gradient) with ``hook(name, module, input)`` called on
    every Linear/Conv2d layer that runs; the model's mode and hooks are restored after."""
    handles = [m.register_forward_hook(lambda mod, inp, out, name=name: hook(name, mod, inp[0]))
               for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    was_training = model.training
    model.eval()
    try:
        model(x, t)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


def layer_inputs(model: nn.Module, x: torch.Tensor, t: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Each Linear/Conv2d layer's input rows over one forward pass (:func:`observe_layers`), keyed
    by module name; layers that did not run (other tasks' heads) are absent."""
    seen: dict[str, list] = {}
    observe_layers(model, x, t, lambda name, mod, inp: seen.setdefault(name, []).append(rows(mod, inp)))
    return {n: torch.cat(r) for n, r in seen.items()}


def _matrix(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    m = weight.reshape(weight.shape[0], -1)
    return m if module.bias is None else torch.cat([m, bias.reshape(-1, 1)], 1)


def _write(module: nn.Module, mat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if module.bias is None:
        weight.copy_(mat.view_as(weight))
    else:
        weight.copy_(mat[:, :-1].reshape(weight.shape))
        bias.copy_(mat[:, -1])


def _remove(mat: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    b = basis.to(mat.dtype)
    return mat - (mat @ b) @ b.T


class Projector:
    """Projects gradients (``before_step``) and, with ``project="update"``, the optimizer's update
    (``after_step``) of every layer that has a basis. ``bases``: {module name: (d, k) tensor}."""

    def __init__(self):
        self.snapshot: dict[str, tuple] = {}

    @torch.no_grad()
    def gradients(self, model: nn.Module, bases: dict[str, torch.Tensor], project: Project) -> None:
        self.snapshot = {}
        modules = dict(model.named_modules())
        for name, basis in bases.items():
            m = modules.get(name)
            if m is None or basis.shape[1] == 0 or not m.weight.requires_grad:
                continue
            w, b = m.weight, m.bias
            if w.grad is not None and (b is None or b.grad is not None):
                g = _matrix(m, w.grad, None if b is None else b.grad)
                _write(m, _remove(g, basis), w.grad, None if b is None else b.grad)
            if project == "update":
                self.snapshot[name] = (w.detach().clone(), None if b is None else b.detach().clone())

    @torch.no_grad()
    def updates(self, model: nn.Module, bases: dict[str, torch.Tensor]) -> None:
        modules = dict(model.named_modules())
        for name, (w0, b0) in self.snapshot.items():
            m = modules[name]
            old = _matrix(m, w0, b0)
            new = _matrix(m, m.weight, m.bias)
            _write(m, old + _remove(new - old, bases[name]), m.weight, m.bias)
        self.snapshot = {}
