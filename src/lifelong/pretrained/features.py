"""Dataset -> features: run a frozen extractor over both splits of a dataset, through the cache."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Literal

import torch

from ..data.base import DatasetSplits, TensorDataset
from ..data.text import TextDataset, TextSplits, text_fingerprint
from ..errors import ConfigError
from .cache import FORMAT, FeatureCache
from .extractors import FeatureExtractor, LocalModule, build_extractor, stderr_log


def tensor_fingerprint(ds: TensorDataset) -> str:
    """sha256 of a dataset's raw inputs (dtype, shape, bytes) and its int64 labels."""
    h = hashlib.sha256()
    x = ds.x.detach().cpu().contiguous()
    h.update(f"{x.dtype}{tuple(x.shape)}".encode())
    if x.numel():
        h.update(memoryview(x.numpy()).cast("B"))
    h.update(ds.y.detach().cpu().numpy().astype("<i8").tobytes())
    return h.hexdigest()


def dataset_fingerprint(ds: TensorDataset | TextDataset) -> str:
    return text_fingerprint(ds) if isinstance(ds, TextDataset) else tensor_fingerprint(ds)


def feature_key(ds: TensorDataset | TextDataset, split: str, extractor: FeatureExtractor) -> dict:
    """The cache key of one dataset split under ``extractor``."""
    shape = ["text"] if isinstance(ds, TextDataset) else list(ds.input_shape)
    return {"format": FORMAT,
            "dataset": {"name": ds.name, "split": split, "n": len(ds), "input_shape": shape,
                        "fingerprint": dataset_fingerprint(ds)},
            "extractor": extractor.identity()}


def _as_cache(cache) -> FeatureCache | None:
    if cache is False:
        return None
    if isinstance(cache, FeatureCache):
        return cache
    return FeatureCache(cache)  # None: the default folder; str / Path: that folder


def featurize(data: DatasetSplits | TextSplits, extractor: FeatureExtractor,
              cache: FeatureCache | str | Path | None | Literal[False] = None, batch_size: int | None = None,
              log: Callable[[str], None] | None = stderr_log) -> DatasetSplits:
    """Both splits of ``data`` as features: a :class:`DatasetSplits` of float32 (N, out_dim)
    inputs with the same labels, names and class names, ready for any stream builder.

    ``cache``: a :class:`FeatureCache`, a folder, ``None`` (the default folder) or ``False``
    (compute, store nothing). ``batch_size``: None for the extractor's default (128 images, 32
    texts); it does not enter the cache key. ``log`` gets progress lines (``None``: quiet)."""
    text = isinstance(data, TextSplits)
    if text and extractor.modality != "text":
        raise ConfigError(f"'{data.name}' is a text dataset; its features need a text encoder "
                          f"(backbone minilm), not {extractor.name}")
    if not text and extractor.modality == "text":
        raise ConfigError(f"backbone {extractor.name} encodes text, but '{data.name}' holds tensors; "
                          "use efficientnet_lite0 or local for images")
    if not text and isinstance(extractor, LocalModule):
        shapes = {tuple(data.train.input_shape), tuple(data.test.input_shape)}
        if len(shapes) != 1:
            raise ConfigError(f"'{data.name}': train and test inputs differ in shape: {sorted(shapes)}")
        extractor.infer_out_dim(shapes.pop())
    store = _as_cache(cache)
    if store is not None and log is not None and store.log is None:
        store.log = log
    out = []
    for split in ("train", "test"):
        ds = getattr(data, split)
        inputs = ds.texts if text else ds.x

        def compute(ds=ds, inputs=inputs, split=split):
            return extractor.extract(inputs, batch_size=batch_size, log=log, what=f"{ds.name}/{split}"), ds.y

        if store is None:
            x, y = compute()
        else:
            x, y = store.get(feature_key(ds, split, extractor), compute)
            if not torch.equal(y, ds.y.cpu()):  # the key's fingerprint covers y; a cheap second check
                raise ConfigError(f"feature cache: labels of {ds.name}/{split} do not match the dataset")
        out.append(TensorDataset(ds.name, x, ds.y, list(ds.class_names)))
    return DatasetSplits(*out)


def extractor_from_config(fcfg) -> FeatureExtractor:
    """A :class:`~lifelong.config.FeaturesConfig` -> its extractor."""
    if fcfg.backbone == "efficientnet_lite0":
        return build_extractor("efficientnet_lite0", image_size=fcfg.image_size, layer=fcfg.layer)
    if fcfg.backbone == "minilm":
        return build_extractor("minilm")
    return build_extractor("local", module=fcfg.module, weights=fcfg.weights, kwargs=fcfg.kwargs,
                           image_size=fcfg.image_size)


def featurize_from_config(datasets: list, fcfg, log: Callable[[str], None] | None = stderr_log) -> list[DatasetSplits]:
    """Every dataset of a benchmark through the extractor and cache that ``fcfg`` names."""
    extractor = extractor_from_config(fcfg)
    store = FeatureCache(fcfg.cache_dir, log=log)
    return [featurize(d, extractor, store, batch_size=fcfg.batch_size, log=log) for d in datasets]
