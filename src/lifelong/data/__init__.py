"""Datasets: built-in (from installed packages) and user folders (standard on-disk formats)."""
from __future__ import annotations

from typing import Callable

from ..errors import ConfigError
from .base import DatasetSplits, TensorDataset, safe_unpickle
from .builtin import animal_mnist, digits, fashion_mnist, mnist

#: name -> loader(data_dir or None) -> DatasetSplits
DATASETS: dict[str, Callable[..., DatasetSplits]] = {
    "mnist": lambda data_dir=None: mnist(),
    "fashion_mnist": lambda data_dir=None: fashion_mnist(data_dir),
    "animal_mnist": lambda data_dir=None: animal_mnist(),
    "digits": lambda data_dir=None: digits(),
}


def register_dataset(name: str, loader: Callable[..., DatasetSplits]) -> None:
    DATASETS[name] = loader


def load_dataset(name: str, data_dir: str | None = None) -> DatasetSplits:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset '{name}'; allowed: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](data_dir=data_dir)


__all__ = ["DATASETS", "DatasetSplits", "TensorDataset", "load_dataset", "register_dataset", "safe_unpickle",
           "mnist", "fashion_mnist", "animal_mnist", "digits"]
