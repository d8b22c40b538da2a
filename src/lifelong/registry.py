"""Open registries: strategies, models, benchmarks and feature extractors from your own code.

A config may name, instead of a built-in, a reference ``"package.module:Name"`` or the plain
name of an installed entry point. This module is the one place that turns such a name into an
object, under a trust model (README: "Your own strategy, model or benchmark"):

- A config is data. A module named in a config is imported only when its name matches the
  allow-list: prefixes from the environment variable ``LIFELONG_ALLOW_MODULES``
  (comma-separated; ``my_lab`` allows ``my_lab`` and ``my_lab.nets``, not ``my_labx``; ``*``
  allows any module, for a config file you trust) or from :func:`allow_modules`. ``lifelong``
  itself is always allowed. Nothing else is imported, so a config cannot run a module's
  top-level code.
- Entry points of installed packages (groups ``lifelong.strategies``, ``lifelong.models``,
  ``lifelong.benchmarks``, by their plain name) are trusted: installing a package already ran
  its code.
- What a reference names is checked before anything is called: a strategy must be a subclass
  of :class:`lifelong.strategies.Strategy`; a model backbone or a feature extractor a subclass
  of ``torch.nn.Module``; a benchmark a function marked with :func:`benchmark`. So
  ``os:system`` or ``builtins:eval`` are refused even when their module is allowed.

Every refusal is one :class:`~lifelong.errors.ConfigError` naming the config key.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import types
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .errors import ConfigError

ENV = "LIFELONG_ALLOW_MODULES"
GROUPS = {"strategy": "lifelong.strategies", "model": "lifelong.models", "benchmark": "lifelong.benchmarks"}
ALWAYS_ALLOWED = ("lifelong",)

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_HOW = (f"allow its module with the environment variable {ENV}=<module prefix> (comma-separated) "
        "or lifelong.registry.allow_modules([...]), only for code you trust")


def is_reference(name: str) -> bool:
    """``"package.module:Name"`` (as opposed to a built-in or entry-point name)."""
    return isinstance(name, str) and ":" in name


# -- the allow-list ----------------------------------------------------------------------------

def _check_prefix(prefix: str, where: str) -> str:
    prefix = prefix.strip()
    if prefix != "*" and not _DOTTED.fullmatch(prefix):
        raise ConfigError(f"{where}: '{prefix}' is not a module prefix (a dotted module name such as "
                          "'my_lab' or 'my_lab.nets', or '*' for any module)")
    return prefix


def allowed_modules() -> list[str]:
    """The module prefixes a config may name (besides ``lifelong``), from ``LIFELONG_ALLOW_MODULES``."""
    raw = os.environ.get(ENV, "")
    return [_check_prefix(p, f"environment variable {ENV}") for p in raw.split(",") if p.strip()]


def allow_modules(prefixes: Iterable[str]) -> list[str]:
    """Allow configs to name modules under ``prefixes`` (``["*"]``: any module, for a config you
    trust). Added to ``LIFELONG_ALLOW_MODULES``, so worker processes inherit it; returns the
    whole allow-list."""
    if isinstance(prefixes, str):
        prefixes = [prefixes]
    new = [_check_prefix(p, "allow_modules") for p in prefixes]
    current = allowed_modules()
    merged = current + [p for p in dict.fromkeys(new) if p not in current]
    os.environ[ENV] = ",".join(merged)
    return merged


def is_allowed(module: str) -> bool:
    for p in (*ALWAYS_ALLOWED, *allowed_modules()):
        if p == "*" or module == p or module.startswith(p + "."):
            return True
    return False


# -- benchmarks --------------------------------------------------------------------------------

@dataclass(frozen=True)
class BenchmarkSpec:
    """What :func:`benchmark` records on a function: the ``benchmark.*`` keys it reads besides
    ``name``, ``scenario`` and ``val_fraction``; its default scenario; a one-line description."""

    keys: frozenset[str]
    scenario: str
    description: str


def benchmark(fn: Callable | None = None, *, keys: Iterable[str] = (), scenario: str = "class",
              description: str = ""):
    """Mark ``fn(cfg, seed) -> Stream`` as a benchmark a config may name (``benchmark.name:
    "package.module:fn"``). ``cfg`` is the run's :class:`~lifelong.config.BenchmarkConfig`
    (``cfg.scenario`` is None unless the config sets it: then build ``scenario``); ``keys``: the
    further ``benchmark.*`` keys it reads (others given in a config are refused); ``scenario``:
    its default. Use as ``@benchmark`` or ``@benchmark(keys=["n_experiences"])``."""
    keys = frozenset([keys] if isinstance(keys, str) else keys)
    if scenario not in ("class", "task", "domain"):
        raise ValueError(f"@benchmark: scenario must be 'class', 'task' or 'domain', got {scenario!r}")

    def mark(f):
        if not callable(f):
            raise TypeError(f"@benchmark marks a function (cfg, seed) -> Stream, got {type(f).__name__}")
        doc = description or (f.__doc__ or "").strip().split("\n")[0]
        f.__lifelong_benchmark__ = BenchmarkSpec(keys, scenario, doc)
        return f

    return mark if fn is None else mark(fn)


# -- what each kind must be ----------------------------------------------------------------------

def _check_kind(obj: Any, kind: str) -> str | None:
    """None if ``obj`` is a ``kind``, else what it must be. Calls nothing on ``obj``."""
    if kind == "strategy":
        from .strategies.base import Compose, Strategy

        if isinstance(obj, type) and issubclass(obj, Strategy) and obj is not Compose:
            return None
        return "a subclass of lifelong.strategies.Strategy"
    if kind in ("model", "extractor"):
        from torch import nn

        if isinstance(obj, type) and issubclass(obj, nn.Module):
            return None
        return "a subclass of torch.nn.Module"
    if kind == "benchmark":
        if callable(obj) and isinstance(getattr(obj, "__lifelong_benchmark__", None), BenchmarkSpec):
            return None
        return "a function (cfg, seed) -> Stream marked with @lifelong.registry.benchmark"
    raise ValueError(f"unknown kind {kind!r}")


def _describe(obj: Any) -> str:
    if isinstance(obj, type):
        return f"the class {obj.__module__}.{obj.__qualname__}"
    if callable(obj):
        return f"the {type(obj).__name__} {getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}"
    return f"a {type(obj).__name__}"


# -- resolving -----------------------------------------------------------------------------------

def import_reference(ref: str, key: str) -> Any:
    """``"package.module:Name"`` -> the object, importing the module only if it is allowed.
    No kind check (use :func:`resolve`)."""
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise ConfigError(f"{key} must look like 'package.module:ClassName', got {ref!r}")
    mod_name, attr = (s.strip() for s in ref.split(":"))
    if not _DOTTED.fullmatch(mod_name) or not _DOTTED.fullmatch(attr):
        raise ConfigError(f"{key} must look like 'package.module:ClassName', got {ref!r}")
    if not is_allowed(mod_name):
        raise ConfigError(f"{key}: module '{mod_name}' (from {ref!r}) is not on the allow-list, so it was not "
                          f"imported; {_HOW}")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ConfigError(f"{key}: cannot import '{mod_name}' ({exc}); is it installed or on PYTHONPATH?") from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{key}: '{mod_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
        if isinstance(obj, types.ModuleType):  # the allow-list is about modules: no detours through others
            raise ConfigError(f"{key}: {ref!r} reaches the module '{obj.__name__}' through '{mod_name}'; name what "
                              "you mean in its own module, 'package.module:Name'")
    return obj


def entry_point_names(kind: str) -> list[str]:
    """Plain names installed packages register for ``kind`` (strategy, model, benchmark)."""
    return sorted({ep.name for ep in importlib.metadata.entry_points(group=GROUPS[kind])})


def _entry_point(name: str, kind: str, key: str):
    eps = [ep for ep in importlib.metadata.entry_points(group=GROUPS[kind]) if ep.name == name]
    if not eps:
        return None
    if len({ep.value for ep in eps}) > 1:
        raise ConfigError(f"{key}: several installed packages register the {kind} '{name}' (entry point group "
                          f"{GROUPS[kind]}): {', '.join(sorted(ep.value for ep in eps))}; name one as "
                          "'package.module:Name'")
    try:
        return eps[0].load()
    except Exception as exc:
        raise ConfigError(f"{key}: the installed entry point {name} = {eps[0].value} ({GROUPS[kind]}) failed "
                          f"to load: {exc}") from None


def resolve(name: str, kind: str, key: str) -> Any | None:
    """A reference or an entry-point name -> the checked object; ``None`` if ``name`` is a plain
    name that no installed package registers (the caller then lists its built-ins).

    ``kind``: ``strategy``, ``model``, ``benchmark`` or ``extractor`` (no entry points);
    ``key``: the config key, for messages."""
    if is_reference(name):
        obj, origin = import_reference(name, key), repr(name)
    elif kind in GROUPS:
        obj, origin = _entry_point(name, kind, key), f"the entry point '{name}' ({GROUPS[kind]})"
        if obj is None:
            return None
    else:
        raise ConfigError(f"{key} must look like 'package.module:ClassName', got {name!r}")
    wrong = _check_kind(obj, kind)
    if wrong:
        raise ConfigError(f"{key}: {origin} names {_describe(obj)}, but a {kind} must be {wrong}; "
                          "it was not called")
    return obj


def reference_help(kind: str) -> str:
    """The tail of an 'unknown name' message: how to name your own."""
    what = {"strategy": "Class", "model": "Class", "benchmark": "function"}[kind]
    installed = entry_point_names(kind)
    tail = f"; installed ({GROUPS[kind]}): {', '.join(installed)}" if installed else ""
    return f"or your own as 'package.module:{what}' (its module allowed by {ENV}){tail}"


__all__ = ["ENV", "GROUPS", "BenchmarkSpec", "allow_modules", "allowed_modules", "benchmark",
           "entry_point_names", "import_reference", "is_allowed", "is_reference", "reference_help", "resolve"]
