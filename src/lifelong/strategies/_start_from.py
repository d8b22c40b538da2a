"""Start a run from given weights, optionally with a fixed sparsity mask (config keys
``model.init_from`` and ``model.mask``). Not a method: the runner adds this member in front of
the configured strategy when either key is set (``lifelong.runner.build_strategy``), so any
method can be retrained from a saved model (Sparse Model Soups' retrains, ``lifelong.soups``).

- ``model.init_from``: a file written by ``torch.save(model.state_dict(), path)``, or a run
  folder's ``checkpoint.pt`` (its ``model`` entry). It sets the model's *weights* (parameters
  and running statistics); what the model has seen (the incremental head's active outputs, the
  task heads' class lists) is rebuilt as the stream arrives, as in any run. The weights of a
  layer that appears later (a task's own head, created when the task first arrives) are loaded
  when it appears, before the optimizer is built. A saved name the model lacks, outside its head,
  or a shape that differs is refused.
- ``model.mask``: a file written by ``torch.save({parameter name: bool tensor}, path)``. The
  named parameters are multiplied by their masks when loaded and after every optimizer step,
  so a weight outside its mask is exactly zero whenever anything reads it (an evaluation, a
  hook of a later member, a checkpoint). Gradients are not masked (the optimizer may move a
  pruned weight; the multiply sets it back before anything reads it), as in ``lifelong.sparse``.
  A strategy with masks of its own (GraNet, SparCL, PackNet, ...) is refused.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import Strategy


def _load(path: str, key: str) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a file that is no torch file, or holds objects beyond tensors
        raise ConfigError(f"config key '{key}': could not read {path} as a saved state dict ({exc})") from None
    if isinstance(obj, dict) and key == "model.init_from" and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # a run folder's checkpoint.pt
    if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()
                                            if not k.endswith("_extra_state")):
        raise ConfigError(f"config key '{key}': {path} holds no mapping of parameter names to tensors")
    return obj


class StartFrom(Strategy):
    name = "start-from"

    def __init__(self, init_from: str | None = None, mask: str | None = None):
        super().__init__()
        self.init_from, self.mask = init_from, mask

    @classmethod
    def get_param_names(cls) -> list[str]:
        return []  # config keys of the model section, not of the strategy

    @property
    def supports_task_free(self) -> bool:
        return True  # the boundary hook only loads heads created late (task-IL, never task-free)

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        self.loaded_: set[str] = set()
        self._init = None if self.init_from is None else {
            k: v for k, v in _load(self.init_from, "model.init_from").items()
            if not k.endswith("_extra_state") and v.dtype != torch.bool}  # weights, not what was seen
        self._masks = None if self.mask is None else _load(self.mask, "model.mask")
        present = dict(model.state_dict())
        for what, saved in (("model.init_from", self._init), ("model.mask", self._masks)):
            for k in saved or {}:
                if k not in present and not k.startswith("head."):
                    raise ConfigError(f"config key '{what}': {getattr(self, what.split('.')[1])} holds {k!r}, which "
                                      f"this model lacks (saved from another architecture?)")
        for k, m in (self._masks or {}).items():
            if m.dtype != torch.bool:
                raise ConfigError(f"config key 'model.mask': the mask of {k!r} must be a bool tensor, got {m.dtype}")
        if self._masks:
            self._masks = {k: m.to(self.device) for k, m in self._masks.items()}  # once, not every step
        self._sync()
        return self

    @torch.no_grad()
    def _sync(self) -> None:
        """Load the saved weights of parameters present now and not yet loaded; apply the masks."""
        state = dict(self.model.state_dict(keep_vars=True))
        for k, v in (self._init or {}).items():
            if k in state and k not in self.loaded_:
                if tuple(v.shape) != tuple(state[k].shape):
                    raise ConfigError(f"config key 'model.init_from': {k!r} has shape {tuple(v.shape)} in "
                                      f"{self.init_from}, the model's is {tuple(state[k].shape)}")
                state[k].copy_(v)
                self.loaded_.add(k)
        params = dict(self.model.named_parameters())
        self._pairs = []  # (parameter, mask) of the masked parameters the model has now
        for k, m in (self._masks or {}).items():
            if k in params:
                if tuple(m.shape) != tuple(params[k].shape):
                    raise ConfigError(f"config key 'model.mask': the mask of {k!r} has shape {tuple(m.shape)}, "
                                      f"the parameter {tuple(params[k].shape)}")
                self._pairs.append((params[k], m))
            elif k in state:
                raise ConfigError(f"config key 'model.mask': {k!r} is a buffer, not a parameter; masks apply to weights")
        self.apply_masks()

    def before_experience(self, exp):
        super().before_experience(exp)
        self._sync()  # the loop has called model.observe: a new task's head exists now

    def after_step(self, batch, logits):
        self.apply_masks()

    @torch.no_grad()
    def apply_masks(self) -> None:
        for p, m in self._pairs:
            p.mul_(m)

    def sparsity_masks(self) -> dict[str, torch.Tensor]:
        """{parameter name: mask} of the masked parameters the model has now (lifelong.sparse counts)."""
        params = dict(self.model.named_parameters())
        return {k: m for k, m in (self._masks or {}).items() if k in params}

    def extra_state(self) -> dict:
        return {"loaded": sorted(self.loaded_)}

    def load_extra_state(self, state: dict) -> None:
        self.loaded_ = set(state["loaded"])

    def __repr__(self) -> str:
        given = [f"{k}={v!r}" for k, v in (("init_from", self.init_from), ("mask", self.mask)) if v is not None]
        return f"StartFrom({', '.join(given)})"


def refuse_own_masks(strategy) -> None:
    """A run with ``model.mask`` holds the mask fixed: a member with masks of its own (a sparse
    training or an isolation method) would fight it."""
    for m in getattr(strategy, "members", None) or [strategy]:
        if isinstance(m, StartFrom):
            continue
        if hasattr(m, "masks_") or callable(getattr(m, "sparsity_masks", None)):
            raise ConfigError(f"config key 'model.mask': strategy '{m.name}' keeps masks of its own, which a fixed "
                              "mask would contradict; run it without model.mask")

