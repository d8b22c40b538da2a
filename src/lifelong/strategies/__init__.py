"""Strategies: one file per method. Every ``Strategy`` subclass with a ``name`` in a module of
this package is registered automatically. Your own: ``"package.module:Class"`` or an installed
entry point (group ``lifelong.strategies``), through :mod:`lifelong.registry`."""
from __future__ import annotations

import importlib
import pkgutil

from .. import registry
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
    """A built-in name (``"er"``), an installed entry point's name, or ``"package.module:Class"``
    (its module on the allow-list) -> the ``Strategy`` subclass. One member: split ``"a+b"`` first."""
    name = name.strip()
    if name in STRATEGIES:
        return STRATEGIES[name]
    cls = registry.resolve(name, "strategy", key="strategy.name") if name else None
    if cls is None:
        raise ConfigError(f"unknown strategy '{name}'; allowed: {', '.join(STRATEGIES)}, "
                          f"{registry.reference_help('strategy')} (combine with '+', e.g. 'er+ewc')")
    return cls


__all__ = ["Batch", "Compose", "STRATEGIES", "Strategy", "get_strategy_class"]
