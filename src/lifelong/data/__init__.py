"""Datasets: built-in (from installed packages), user folders (standard on-disk formats) and text
datasets (strings; they become tensors only through a text encoder, see ``lifelong.pretrained``)."""
from __future__ import annotations

from typing import Callable

from ..errors import ConfigError
from .base import DatasetSplits, TensorDataset, safe_unpickle
from .builtin import animal_mnist, digits, fashion_mnist, mnist
from .folders import cifar10, cifar100, npz_folder
from .text import TEXT_DATASETS, TextDataset, TextSplits, load_text_dataset, tweets

#: name -> loader(data_dir or None) -> DatasetSplits
DATASETS: dict[str, Callable[..., DatasetSplits]] = {
    "mnist": lambda data_dir=None: mnist(),
    "fashion_mnist": lambda data_dir=None: fashion_mnist(data_dir),
    "animal_mnist": lambda data_dir=None: animal_mnist(),
    "digits": lambda data_dir=None: digits(),
    # from a folder the user gives (data_dir); None -> DatasetError saying how to give it
    "cifar10": lambda data_dir=None: cifar10(data_dir),
    "cifar100": lambda data_dir=None: cifar100(data_dir),
    "npz": lambda data_dir=None: npz_folder(data_dir),
}


def register_dataset(name: str, loader: Callable[..., DatasetSplits]) -> None:
    DATASETS[name] = loader


def load_dataset(name: str, data_dir: str | None = None) -> DatasetSplits:
    if name not in DATASETS and name in TEXT_DATASETS:
        raise ConfigError(f"'{name}' is a text dataset: it becomes tensors only through a text encoder; use the "
                          "benchmark 'tweets-sentiment' (benchmark.features: {backbone: minilm}), or "
                          "lifelong.data.load_text_dataset + lifelong.pretrained.featurize")
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset '{name}'; allowed: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](data_dir=data_dir)


__all__ = ["DATASETS", "DatasetSplits", "TensorDataset", "load_dataset", "register_dataset", "safe_unpickle",
           "mnist", "fashion_mnist", "animal_mnist", "digits", "cifar10", "cifar100", "npz_folder",
           "TEXT_DATASETS", "TextDataset", "TextSplits", "load_text_dataset", "tweets"]
