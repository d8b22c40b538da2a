"""Models: a feature extractor (backbone) plus a head that knows which outputs are active.

Every head returns logits in the stream's whole label space, shape (B, n_classes), with
``-inf`` for outputs that are not active: classes not seen yet (``incremental``, class-IL:
van de Ven et al.'s "only the units of classes seen so far are active"), or classes of other
tasks (``multi``, task-IL: one head per task). ``single`` keeps every output active.
"""
from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from .. import registry
from ..errors import ConfigError


def _check_norm(norm: str | None) -> None:
    if norm not in (None, "batch"):
        raise ConfigError(f"config key 'model.norm': allowed: 'batch' or null (none), got {norm!r}")


class MLP(nn.Module):
    """Fully connected ReLU network; ``hidden`` gives the widths (784-400-400 for Split MNIST).
    ``norm="batch"`` puts batch norm before each ReLU (test-time adaptation: Tent, CoTTA)."""

    def __init__(self, input_shape: tuple[int, ...], hidden: list[int] = (400, 400), norm: str | None = None):
        super().__init__()
        _check_norm(norm)
        layers, d = [nn.Flatten()], math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(d, h), *([nn.BatchNorm1d(h)] if norm else []), nn.ReLU()]
            d = h
        self.net = nn.Sequential(*layers)
        self.out_features = d

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    """Two conv blocks (32, 64 channels, 3x3, max-pool) and one hidden linear layer, for 28x28 inputs.
    ``norm="batch"`` puts batch norm before each ReLU (test-time adaptation: Tent, CoTTA)."""

    def __init__(self, input_shape: tuple[int, ...], channels: list[int] = (32, 64), hidden: int | list[int] = 256,
                 norm: str | None = None):
        super().__init__()
        _check_norm(norm)
        if not isinstance(hidden, int):  # a config's ``model.hidden`` is a list of fc widths: this network has one
            if len(hidden) != 1:
                raise ConfigError(f"model 'cnn' has one hidden fully connected layer: model.hidden takes one width, "
                                  f"e.g. [256]; got {list(hidden)}")
            hidden = int(hidden[0])
        c, h, w = input_shape
        layers = []
        for ch in channels:
            layers += [nn.Conv2d(c, ch, 3, padding=1), *([nn.BatchNorm2d(ch)] if norm else []), nn.ReLU(),
                       nn.MaxPool2d(2)]
            c, h, w = ch, h // 2, w // 2
        self.conv = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(c * h * w, hidden), *([nn.BatchNorm1d(hidden)] if norm else []), nn.ReLU())
        self.out_features = hidden

    def forward(self, x):
        return self.fc(self.conv(x))


class Head(nn.Module):
    """One linear layer over all ``n_classes`` outputs, with a mask of active outputs."""

    def __init__(self, in_features: int, n_classes: int, all_active: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_features, n_classes)
        self.register_buffer("active", torch.full((n_classes,), all_active, dtype=torch.bool))

    def observe(self, classes: list[int], task_id: int) -> None:
        """Called when an experience starts: activate its classes."""
        self.active[torch.as_tensor(classes, dtype=torch.long)] = True

    def forward(self, h, task=None):
        return self.linear(h).masked_fill(~self.active, float("-inf"))


class IncrementalHead(Head):
    """Class-IL head: outputs become active when their class first arrives."""

    def __init__(self, in_features: int, n_classes: int):
        super().__init__(in_features, n_classes, all_active=False)


class MultiHead(nn.Module):
    """Task-IL: one linear head per task, created when the task first arrives.

    With task ids, sample i gets logits only for the classes of its task. Without (task-agnostic
    evaluation), every head answers and each label takes its highest logit.
    """

    def __init__(self, in_features: int, n_classes: int):
        super().__init__()
        self.in_features, self.n_classes = in_features, n_classes
        self.heads = nn.ModuleDict()
        self.task_classes: dict[int, list[int]] = {}
        # follows the module through .to(device), so heads created later land on the model's device
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    def observe(self, classes: list[int], task_id: int) -> None:
        key = str(task_id)
        known = self.task_classes.get(task_id, [])
        if key in self.heads and set(classes) <= set(known):
            return
        merged = sorted(set(known) | set(classes))
        old = self.heads[key] if key in self.heads else None
        new = nn.Linear(self.in_features, len(merged), device=self._device_anchor.device)
        if old is not None:  # keep the weights of classes the task already had
            with torch.no_grad():
                for j, c in enumerate(known):
                    new.weight[merged.index(c)] = old.weight[j]
                    new.bias[merged.index(c)] = old.bias[j]
        self.heads[key] = new
        self.task_classes[task_id] = merged

    def forward(self, h, task=None):
        out = h.new_full((len(h), self.n_classes), float("-inf"))
        if task is None:
            for t, classes in self.task_classes.items():
                idx = torch.as_tensor(classes, device=h.device)
                out[:, idx] = torch.maximum(out[:, idx], self.heads[str(t)](h))
            return out
        task = torch.as_tensor(task, device=h.device)
        if task.ndim == 0:
            task = task.expand(len(h))
        for t in torch.unique(task).tolist():
            if t not in self.task_classes:
                continue
            rows = torch.nonzero(task == t).flatten()
            idx = torch.as_tensor(self.task_classes[t], device=h.device)
            out[rows.unsqueeze(1), idx.unsqueeze(0)] = self.heads[str(t)](h[rows])
        return out

    def get_extra_state(self):
        return {"task_classes": self.task_classes}

    def set_extra_state(self, state):
        for t, classes in state["task_classes"].items():
            self.observe(classes, int(t))


class ContinualModel(nn.Module):
    """``backbone`` (features) + ``head`` (masked logits over the label space)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def features(self, x):
        return self.backbone(x)

    def forward(self, x, task=None):
        return self.head(self.backbone(x), task)

    def observe(self, classes: list[int], task_id: int) -> None:
        self.head.observe(classes, task_id)


@runtime_checkable
class ContinualModelProtocol(Protocol):
    """The model contract: what a strategy may call on ``self.model`` (docs/architecture.md).

    ``backbone``: the feature extractor (an ``nn.Module``; strategies may freeze it, give it its
    own parameter group or copy it); ``head``: the classifier on its features; ``features(x)``:
    (B, out_features) features; ``forward(x, task=None)``: (B, n_classes) logits over the whole
    label space, ``-inf`` for inactive outputs (``task``: per-sample task ids, task-IL);
    ``observe(classes, task_id)``: an experience with these classes starts. Every model
    :func:`build_model` returns satisfies it (checked there); a user backbone is wrapped in a
    :class:`ContinualModel` with the scenario's head."""

    backbone: nn.Module
    head: nn.Module

    def features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward(self, x: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor: ...

    def observe(self, classes: list[int], task_id: int) -> None: ...


def check_model(model) -> None:
    """Raise ``TypeError`` unless ``model`` satisfies :class:`ContinualModelProtocol`.

    Checked with ``hasattr``, not ``isinstance(model, ContinualModelProtocol)``: from Python 3.12
    a runtime protocol looks its members up statically, and an ``nn.Module``'s submodules
    (``backbone``, ``head``) live in ``_modules``, reached only through ``__getattr__``; every model
    would be refused there."""
    missing = [m for m in ("backbone", "head", "features", "forward", "observe") if not hasattr(model, m)]
    if missing:
        raise TypeError(f"{type(model).__name__} is not a continual model: it lacks {', '.join(missing)} "
                        "(see lifelong.models.ContinualModelProtocol)")
    for part in ("backbone", "head"):
        if not isinstance(getattr(model, part), nn.Module):
            raise TypeError(f"{type(model).__name__}.{part} must be a torch.nn.Module, "
                            f"got {type(getattr(model, part)).__name__}")


class Lite0Head(nn.Module):
    """The last layer of ImageNet-pretrained EfficientNet-Lite0 as a trainable backbone: its 1x1
    head convolution (320 -> 1280) with the following batch norm folded in, ReLU6, then the
    global average pool. Its input is the cached output of the network's last block
    (``benchmark.features: {backbone: efficientnet_lite0, layer: blocks}``), so a run trains a
    genuinely pretrained layer at the cost of a linear one; its initial output equals the frozen
    ``layer: head`` features. Batch norm is folded with its running statistics (as at inference),
    so training updates one weight matrix and bias."""

    def __init__(self, input_shape: tuple[int, ...], weights_path: str | None = None):
        super().__init__()
        from ..pretrained.extractors import LITE0_BLOCKS_CHANNELS as C, EfficientNetLite0

        d = math.prod(input_shape)
        if len(input_shape) != 1 or d % C:
            raise ConfigError(f"model 'lite0_head' takes the features of efficientnet_lite0 with layer: blocks "
                              f"(a multiple of {C} values); this stream's inputs have shape {tuple(input_shape)}")
        ext = EfficientNetLite0(weights_path=weights_path).ensure_loaded()
        conv, bn = ext.net._conv_head, ext.net._bn1
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        self.positions = d // C
        self.linear = nn.Linear(C, conv.out_channels)
        with torch.no_grad():
            self.linear.weight.copy_(conv.weight.flatten(1) * scale[:, None])
            self.linear.bias.copy_(bn.bias - bn.running_mean * scale)
        self.out_features = conv.out_channels

    def forward(self, x):
        x = x.reshape(len(x), -1, self.positions).transpose(1, 2)  # (B, positions, 320)
        return torch.clamp(self.linear(x), 0.0, 6.0).mean(dim=1)


BACKBONES = {"mlp": MLP, "cnn": SmallCNN, "lite0_head": Lite0Head}
HEADS = {"single": Head, "incremental": IncrementalHead, "multi": MultiHead}
DEFAULT_HEAD = {"class": "incremental", "task": "multi", "domain": "single"}


def backbone_class(name: str) -> type[nn.Module]:
    """A built-in name (``BACKBONES``), an installed entry point's name (group
    ``lifelong.models``) or ``"package.module:Class"`` (its module allowed, see
    :mod:`lifelong.registry`) -> the backbone class, checked to be an ``nn.Module`` subclass."""
    if name in BACKBONES:
        return BACKBONES[name]
    cls = registry.resolve(name, "model", key="model.name") if name else None
    if cls is None:
        raise ConfigError(f"unknown model '{name}'; allowed: {', '.join(BACKBONES)}, "
                          f"{registry.reference_help('model')}")
    return cls


def _user_backbone(name: str, cls: type[nn.Module], input_shape: tuple[int, ...], kwargs: dict) -> nn.Module:
    """``cls(input_shape, **kwargs)``, checked: it sets ``out_features`` and maps a batch of
    inputs to (B, out_features)."""
    import inspect

    try:
        inspect.signature(cls).bind(input_shape, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"model.name: {name} is built as {cls.__name__}(input_shape, **{kwargs}) "
                          f"(input_shape: one sample's shape, here {input_shape}), but its signature "
                          f"{inspect.signature(cls)} does not take that: {exc}") from None
    backbone = cls(input_shape, **kwargs)
    d = getattr(backbone, "out_features", None)
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ConfigError(f"model.name: {name} must set self.out_features (the width of its output features, an "
                          f"int >= 1) in __init__; the head is built on it. Got {d!r}")
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            out = backbone(torch.zeros((2, *input_shape)))
    except Exception as exc:
        raise ConfigError(f"model.name: {name} fails on a batch of inputs shaped {(2, *input_shape)}: "
                          f"{type(exc).__name__}: {exc}") from None
    finally:
        backbone.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, d):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model.name: {name} must map inputs (B, *{input_shape}) to features (B, out_features) "
                          f"= (2, {d}); got {got}")
    return backbone


def build_model(name: str, input_shape, n_classes: int, scenario: str, head: str | None = None,
                **kwargs) -> ContinualModel:
    """Backbone ``name`` (built-in, entry point or ``"package.module:Class"``) + the scenario's
    head; the result satisfies :class:`ContinualModelProtocol`. A user backbone is built as
    ``Class(input_shape, **kwargs)`` and must set ``out_features``."""
    cls = backbone_class(name)
    if name == "cnn" and len(tuple(input_shape)) != 3:
        raise ConfigError(f"model 'cnn' needs image inputs (C, H, W); this stream's inputs have shape "
                          f"{tuple(input_shape)} (features?): use model 'mlp' (hidden: [] for a linear model)")
    head = head or DEFAULT_HEAD[scenario]
    if head not in HEADS:
        raise ConfigError(f"unknown head '{head}'; allowed: {', '.join(HEADS)}")
    if name in BACKBONES:
        backbone = cls(tuple(input_shape), **kwargs)
    else:
        backbone = _user_backbone(name, cls, tuple(input_shape), kwargs)
    model = ContinualModel(backbone, HEADS[head](backbone.out_features, n_classes))
    check_model(model)
    return model
