"""Named benchmarks: a name and a few keys -> a :class:`Stream`.

``split-<dataset>`` for every registered dataset, ``permuted-mnist``, ``rotated-mnist`` and
``mnist-fashion-animal`` (one experience per dataset). ``lifelong list`` prints this table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..data import DATASETS, load_dataset
from ..errors import ConfigError
from .base import Stream
from .builders import permuted_stream, rotated_stream, sequence_stream, split_stream

COMMON_KEYS = {"name", "scenario", "val_fraction", "data_dir"}


@dataclass
class Preset:
    description: str
    default_scenario: str
    keys: set[str]
    build: Callable[..., Stream]


def _split(dataset: str) -> Preset:
    def build(cfg, seed):
        data = load_dataset(dataset, cfg.data_dir)
        n_exp = cfg.n_experiences
        if n_exp is None and cfg.classes_per_experience is None:
            n_exp = 5 if data.n_classes == 10 else 10
        return split_stream(data, scenario=cfg.scenario or "class", n_experiences=n_exp,
                            classes_per_experience=cfg.classes_per_experience,
                            first_experience_classes=cfg.first_experience_classes, class_order=cfg.class_order,
                            val_fraction=cfg.val_fraction, seed=seed, name=f"split-{dataset}")

    return Preset(f"{dataset} classes split into experiences (default 5 x 2 for 10 classes)", "class",
                  COMMON_KEYS | {"n_experiences", "classes_per_experience", "first_experience_classes", "class_order"},
                  build)


def _permuted(cfg, seed):
    return permuted_stream(load_dataset("mnist"), n_experiences=cfg.n_experiences or 10,
                           scenario=cfg.scenario or "domain", permute_first=bool(cfg.permute_first),
                           val_fraction=cfg.val_fraction, seed=seed)


def _rotated(cfg, seed):
    return rotated_stream(load_dataset("mnist"), n_experiences=cfg.n_experiences or 10,
                          scenario=cfg.scenario or "domain", angles=cfg.angles, val_fraction=cfg.val_fraction,
                          seed=seed)


def _sequence(cfg, seed):
    data = [load_dataset(n) for n in ("mnist", "fashion_mnist", "animal_mnist")]
    return sequence_stream(data, scenario=cfg.scenario or "domain", val_fraction=cfg.val_fraction, seed=seed)


def presets() -> dict[str, Preset]:
    out = {f"split-{d.replace('_', '-')}": _split(d) for d in DATASETS}
    out["permuted-mnist"] = Preset("MNIST with one fixed pixel permutation per experience (default 10)", "domain",
                                   COMMON_KEYS | {"n_experiences", "permute_first"}, _permuted)
    out["rotated-mnist"] = Preset("MNIST rotated by a different angle per experience (default 10 in [0, 180))",
                                  "domain", COMMON_KEYS | {"n_experiences", "angles"}, _rotated)
    out["mnist-fashion-animal"] = Preset("MNIST -> Fashion-MNIST -> Animal-MNIST, one experience each "
                                         "(domain: shared 10 outputs; class: 30 classes)", "domain", COMMON_KEYS,
                                         _sequence)
    return out


def build_benchmark(cfg, seed: int = 0) -> Stream:
    """Build the stream that ``cfg`` (a :class:`~lifelong.config.BenchmarkConfig`) names."""
    table = presets()
    if cfg.name not in table:
        raise ConfigError(f"unknown benchmark '{cfg.name}'; allowed: {', '.join(table)}")
    preset = table[cfg.name]
    extra = sorted(k for k in cfg.model_fields_set if k not in preset.keys and getattr(cfg, k) is not None)
    if extra:
        raise ConfigError(f"config key 'benchmark.{extra[0]}' does not apply to '{cfg.name}'; "
                          f"its keys: {', '.join(sorted(preset.keys))}")
    return preset.build(cfg, seed)
