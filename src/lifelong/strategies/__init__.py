"""Strategies: one file per method. Every ``Strategy`` subclass with a ``name`` in a module of
this package is registered automatically."""
from __future__ import annotations

import importlib
import pkgutil

from ..errors import ConfigError
from .base import Batch, Compose, Strategy


def _discover() -> dict[str, type[Strategy]]:
    found: dict[str, type[Strategy]] = {}
    for mod in pkgutil.iter_modules(__path__):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, Strategy) and obj.__module__ == module.__name__
                    and obj is not Compose and "name" in vars(obj)):
                found[obj.name] = obj
    found.setdefault("finetune", Strategy)
    return dict(sorted(found.items()))


STRATEGIES = _discover()


def get_strategy_class(name: str) -> type[Strategy]:
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{name}'; allowed: {', '.join(STRATEGIES)} "
                          "(combine with '+', e.g. 'er+ewc')")
    return STRATEGIES[name]


__all__ = ["Batch", "Compose", "STRATEGIES", "Strategy", "get_strategy_class"]
