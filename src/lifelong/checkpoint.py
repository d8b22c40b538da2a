"""The pieces of a run's state that a checkpoint must hold to resume bit for bit.

A checkpoint taken inside ``lifelong.training.train`` holds the model, the strategy's learned
state (``extra_state``) and random generators, the optimizer (its parameter groups by name, and
its state), the gradient scaler, every global random number generator (torch, CUDA, numpy,
Python), the loop's batch-order generator and its position, and the partial results and
curves. Everything here is plain tensors and containers, saved with ``torch.save`` (loaded with
``weights_only=True``: a checkpoint file can hold no code).
"""
from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from .errors import LifelongError

FORMAT = 1


class CheckpointError(LifelongError):
    """A checkpoint file is missing, corrupt, or belongs to another run."""


# ------------------------------------------------------------------------------ random generators
def global_rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": _numpy_state(), "python": _python_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal.tolist()), None if gauss is None else float(gauss)))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state():
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]


def _python_state():
    version, internal, gauss = random.getstate()
    return [int(version), torch.tensor(internal, dtype=torch.int64), gauss]


def members(strategy) -> list:
    return list(getattr(strategy, "members", None) or [strategy])


def strategy_generators(strategy) -> list:
    return [m.generator.get_state() if getattr(m, "generator", None) is not None else None for m in members(strategy)]


def set_strategy_generators(strategy, states: list) -> None:
    for m, s in zip(members(strategy), states):
        if s is not None:
            m.generator.set_state(s)


# ------------------------------------------------------------------------------ the optimizer, by name
def parameter_names(strategy) -> dict[int, str]:
    """id(parameter) -> a stable name: the model's parameters by their module path, and
    parameters a strategy owns outside the model (PRD's projection and prototypes) by member
    index and attribute."""
    names = {id(p): f"model.{n}" for n, p in strategy.model.named_parameters()}
    for i, m in enumerate(members(strategy)):
        for attr, value in sorted(vars(m).items()):
            if isinstance(value, nn.Parameter):
                names.setdefault(id(value), f"strategy{i}.{attr}")
            elif isinstance(value, nn.Module) and value is not strategy.model:
                for n, p in value.named_parameters():
                    names.setdefault(id(p), f"strategy{i}.{attr}.{n}")
    return names


def optimizer_state(optimizer, strategy) -> dict | None:
    if optimizer is None:
        return None
    names = parameter_names(strategy)
    layout = []
    for group in optimizer.param_groups:
        missing = [p for p in group["params"] if id(p) not in names]
        if missing:
            raise CheckpointError("an optimized parameter belongs neither to the model nor to a strategy attribute; "
                                  "it cannot be checkpointed by name")
        layout.append({"params": [names[id(p)] for p in group["params"]],
                       **{k: v for k, v in group.items() if k != "params"}})
    return {"layout": layout, "state": optimizer.state_dict()}


def rebuild_optimizer(saved: dict, strategy, make_optimizer):
    """An optimizer with the saved parameter groups (by name) and state."""
    by_name = {n: p for p, n in ((p, n) for p, n in _params_by_id(strategy))}
    groups = []
    for g in saved["layout"]:
        try:
            params = [by_name[n] for n in g["params"]]
        except KeyError as exc:
            raise CheckpointError(f"the checkpoint's optimizer holds parameter {exc.args[0]}, which this run's "
                                  "model and strategy do not have") from None
        groups.append({**{k: v for k, v in g.items() if k not in ("params", "lr_scale")}, "params": params})
    optimizer = make_optimizer(groups)
    optimizer.load_state_dict(saved["state"])
    return optimizer


def _params_by_id(strategy):
    names = parameter_names(strategy)
    seen = {}
    for p in list(strategy.model.parameters()) + [v for m in members(strategy) for v in _owned(m, strategy.model)]:
        if id(p) in names and id(p) not in seen:
            seen[id(p)] = (p, names[id(p)])
    return list(seen.values())


def _owned(m, model):
    for value in vars(m).values():
        if isinstance(value, nn.Parameter):
            yield value
        elif isinstance(value, nn.Module) and value is not model:
            yield from value.parameters()


# ------------------------------------------------------------------------------ whole snapshots
def model_and_strategy(strategy, optimizer, scaler) -> dict:
    """The learned state at this moment (cloned, so later in-place updates do not change it)."""
    return _clone({
        "model": strategy.model.state_dict(),
        "strategy": strategy.extra_state(),
        "generators": strategy_generators(strategy),
        "rng": global_rng_state(),
        "optimizer": optimizer_state(optimizer, strategy),
        "scaler": scaler.state_dict() if scaler is not None else None,
    })


def restore_model_and_strategy(state: dict, strategy, optimizer=None, scaler=None) -> None:
    """Lay ``state`` over the model and strategy (copies: the snapshot itself is never changed,
    e.g. by an optimizer updating the loaded moments in place)."""
    state = _clone(state)
    strategy.model.load_state_dict(state["model"])
    strategy.load_extra_state(state["strategy"])
    set_strategy_generators(strategy, state["generators"])
    set_global_rng_state(state["rng"])
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"]["state"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])


def _clone(obj):
    if torch.is_tensor(obj):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_clone(v) for v in obj)
    return obj


# ------------------------------------------------------------------------------ on disk
class Checkpointer:
    """Writes the loop's snapshots to ``path`` atomically (a crash mid-write leaves the previous
    checkpoint intact): at every experience end, and inside an experience every
    ``every_iterations`` updates and/or every ``every_seconds`` of wall time (default 300 s,
    "a few minutes of work"). ``fingerprint`` ties the file to its run's config."""

    def __init__(self, path, fingerprint: str, every_iterations: int | None = None,
                 every_seconds: float | None = 300.0):
        import time

        self.path, self.fingerprint = path, fingerprint
        self.every_iterations, self.every_seconds = every_iterations, every_seconds
        self._clock = time.monotonic
        self.last = self._clock()
        self.saves, self.time_s = 0, 0.0
        self.failed: str | None = None  # why the last failed write failed

    def due(self, step: int) -> bool:
        if self.every_iterations and step % self.every_iterations == 0:
            return True
        return bool(self.every_seconds) and self._clock() - self.last >= self.every_seconds

    def save(self, snapshot: dict) -> None:
        """Write atomically. A failed write (a full disk) does not stop the run: it is reported
        once, the previous checkpoint stays, and the next one is tried as usual."""
        import warnings

        from .io import atomic_torch_save

        t0 = self._clock()
        try:
            atomic_torch_save(self.path, dict(snapshot, fingerprint=self.fingerprint))
        except OSError as exc:
            if self.failed is None:
                warnings.warn(f"could not write the checkpoint {self.path} ({exc.strerror or exc}); training goes on, "
                              "and an interruption now resumes from the previous checkpoint", RuntimeWarning)
            self.failed = exc.strerror or str(exc)
        else:
            self.saves += 1
        self.last = self._clock()
        self.time_s += self.last - t0


def load_checkpoint(path, fingerprint: str | None = None) -> dict:
    """A snapshot from ``path``; a corrupt file or one from another run is a CheckpointError
    that says what to do (nothing is deleted)."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        snap = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or holding code
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); it is "
                              "corrupt. Move it away to start this run again from the beginning") from None
    if not isinstance(snap, dict) or snap.get("format") != FORMAT or "next" not in snap:
        raise CheckpointError(f"checkpoint {path} is not a lifelong checkpoint of format {FORMAT}; move it away to "
                              "start this run again from the beginning")
    if fingerprint is not None and snap.get("fingerprint") != fingerprint:
        raise CheckpointError(f"checkpoint {path} belongs to a run with another config; resume it with that config, "
                              "or choose another run folder")
    return snap
