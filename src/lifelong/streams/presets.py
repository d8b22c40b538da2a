"""Named benchmarks: a name and a few keys -> a :class:`Stream`.

``split-<dataset>`` for every registered dataset, ``permuted-mnist``, ``rotated-mnist``,
``mnist-fashion-animal`` (one experience per dataset) and ``tweets-sentiment`` (text, data-
incremental). ``lifelong list`` prints this table.

``features: {backbone: ...}`` (split presets, ``mnist-fashion-animal``, ``tweets-sentiment``)
replaces the datasets by cached features of a frozen pretrained extractor *before* the stream
is split (``lifelong.pretrained``). ``blurry`` (split presets) makes the split a generalized
class-incremental one (:func:`~lifelong.streams.builders.blurry_stream`).

A benchmark of your own: ``name: "package.module:function"`` (its module allowed) or an
installed entry point, a function marked with :func:`lifelong.registry.benchmark`
(:func:`user_preset`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .. import registry
from ..data import DATASETS, load_dataset
from ..errors import ConfigError
from .base import Stream
from .builders import (_class_groups, blurry_stream, data_incremental_stream, permuted_stream, rotated_stream,
                       sequence_stream, split_stream)
from .orderings import reorder_stream
from .revisits import power_law_stream, scole_stream

COMMON_KEYS = {"name", "scenario", "val_fraction"}
#: datasets that ship with an installed package: ``data_dir`` does not apply to them (it is an
#: error, not ignored); every other dataset is read from a folder (``data_dir``) the user gives
SHIPPED = {"mnist", "animal_mnist", "digits"}


@dataclass
class Preset:
    description: str
    default_scenario: str
    keys: set[str]
    build: Callable[..., Stream]
    no_features: str | None = None  # why ``features`` does not apply (None: it does, if in ``keys``)


def _features(datasets: list, cfg) -> list:
    """The datasets, or their cached features when ``cfg.features`` is set."""
    if cfg.features is None:
        return datasets
    from ..pretrained import featurize_from_config  # lazy: only runs with features need it

    return featurize_from_config(datasets, cfg.features)


def _ordered(cfg, seed, stream: Stream) -> Stream:
    """``stream`` in the experience order ``benchmark.order`` asks for (lifelong.streams.orderings)."""
    if cfg.order is None:
        if cfg.order_scores is not None:
            raise ConfigError("benchmark.order_scores needs benchmark.order ('curriculum' or 'anti-curriculum')")
        return stream
    return reorder_stream(stream, cfg.order, cfg.order_scores, seed)


def _split(dataset: str) -> Preset:
    def build(cfg, seed):
        return _ordered(cfg, seed, build_unordered(cfg, seed))

    def build_unordered(cfg, seed):
        if cfg.blurry_disjoint is not None and cfg.blurry is None:
            raise ConfigError("benchmark.blurry_disjoint needs benchmark.blurry (the fraction of each blurry "
                              "class's samples that move to other experiences)")
        if cfg.blurry is not None and (cfg.scenario or "class") != "class":
            raise ConfigError(f"benchmark.blurry (generalized class-IL) needs scenario 'class', got '{cfg.scenario}'")
        data = load_dataset(dataset, cfg.data_dir)
        n_exp = cfg.n_experiences
        if n_exp is None and cfg.classes_per_experience is None:
            n_exp = 5 if data.n_classes == 10 else 10
        if cfg.features is not None:  # a wrong split fails now, not after a long extraction
            _class_groups(data.n_classes, n_exp, cfg.classes_per_experience, cfg.first_experience_classes,
                          cfg.class_order, torch.Generator())
            (data,) = _features([data], cfg)
        if cfg.blurry is not None:
            return blurry_stream(data, n_experiences=n_exp, blurry=cfg.blurry,
                                 blurry_disjoint=cfg.blurry_disjoint or 0.0,
                                 classes_per_experience=cfg.classes_per_experience,
                                 first_experience_classes=cfg.first_experience_classes, class_order=cfg.class_order,
                                 val_fraction=cfg.val_fraction, seed=seed, name=f"split-{dataset}")
        return split_stream(data, scenario=cfg.scenario or "class", n_experiences=n_exp,
                            classes_per_experience=cfg.classes_per_experience,
                            first_experience_classes=cfg.first_experience_classes, class_order=cfg.class_order,
                            val_fraction=cfg.val_fraction, seed=seed, name=f"split-{dataset}")

    return Preset(f"{dataset} classes split into experiences (default 5 x 2 for 10 classes); "
                  "blurry: generalized class-IL; order: curriculum", "class",
                  COMMON_KEYS | {"n_experiences", "classes_per_experience", "first_experience_classes", "class_order",
                                 "features", "blurry", "blurry_disjoint", "order", "order_scores"}
                  | ({"data_dir"} if dataset not in SHIPPED else set()),
                  build)


def _permuted(cfg, seed):
    return permuted_stream(load_dataset("mnist"), n_experiences=cfg.n_experiences or 10,
                           scenario=cfg.scenario or "domain", permute_first=bool(cfg.permute_first),
                           val_fraction=cfg.val_fraction, seed=seed, pad=cfg.pad or 0)


def _rotated(cfg, seed):
    return rotated_stream(load_dataset("mnist"), n_experiences=cfg.n_experiences or 10,
                          scenario=cfg.scenario or "domain", angles=cfg.angles, val_fraction=cfg.val_fraction,
                          seed=seed)


def _sequence(cfg, seed):
    data = _features([load_dataset(n) for n in ("mnist", "fashion_mnist", "animal_mnist")], cfg)
    return sequence_stream(data, scenario=cfg.scenario or "domain", val_fraction=cfg.val_fraction, seed=seed)


def _tweets(cfg, seed):
    from ..data.text import tweets

    if cfg.features is None:
        raise ConfigError("benchmark 'tweets-sentiment' holds text: it needs benchmark.features: {backbone: minilm} "
                          "(sentence embeddings; install the extra with: pip install \"lifelong[text]\")")
    if cfg.features.backbone != "minilm":
        raise ConfigError(f"benchmark 'tweets-sentiment' holds text: features.backbone must be 'minilm', "
                          f"got '{cfg.features.backbone}'")
    if cfg.scenario == "task":
        raise ConfigError("benchmark 'tweets-sentiment' is data-incremental (the same classes in every experience): "
                          "use scenario 'domain' (shared head) or 'class', not 'task'")
    (data,) = _features([tweets()], cfg)
    return data_incremental_stream(data, n_experiences=cfg.n_experiences or 5, scenario=cfg.scenario or "domain",
                                   val_fraction=cfg.val_fraction, seed=seed, name="tweets-sentiment")


def _scole(dataset: str) -> Preset:
    def build(cfg, seed):
        if cfg.scenario not in (None, "class"):
            raise ConfigError(f"scole-* streams are class-incremental (random classes recur): scenario 'class', "
                              f"not '{cfg.scenario}'")
        return scole_stream(load_dataset(dataset), n_experiences=cfg.n_experiences or 100,
                            classes_per_experience=cfg.classes_per_experience or 2, class_probs=cfg.class_probs,
                            train_per_class=cfg.train_per_class, test_per_class=cfg.test_per_class,
                            val_fraction=cfg.val_fraction, seed=seed, name=f"scole-{dataset}")

    return Preset(f"SCoLe: long stream (default 100) of experiences of random {dataset} classes (default 2) that "
                  "recur; class_probs: class frequencies", "class",
                  COMMON_KEYS | {"n_experiences", "classes_per_experience", "class_probs", "train_per_class",
                                 "test_per_class"}, build, no_features="its experiences draw samples anew")


def _power_law(cfg, seed):
    return power_law_stream(load_dataset("mnist"), n_tasks=cfg.n_tasks or 10, n_experiences=cfg.n_experiences or 50,
                            mode=cfg.revisit or "power_law", alpha=cfg.revisit_alpha or 1.0,
                            train_per_experience=cfg.train_per_experience or 1000,
                            test_per_task=cfg.test_per_task or 1000, scenario=cfg.scenario or "domain",
                            permute_first=bool(cfg.permute_first), val_fraction=cfg.val_fraction, seed=seed)


def presets() -> dict[str, Preset]:
    out = {f"split-{d.replace('_', '-')}": _split(d) for d in DATASETS}
    pixels = ("its experiences transform the pixels (a permutation or a rotation per experience), so a frozen "
              "extractor would have to run on every transformed copy of MNIST; features are supported on "
              "split-<dataset>, mnist-fashion-animal and tweets-sentiment")
    out["permuted-mnist"] = Preset("MNIST with one fixed pixel permutation per experience (default 10)", "domain",
                                   COMMON_KEYS | {"n_experiences", "permute_first", "pad"}, _permuted,
                                   no_features=pixels)
    out["rotated-mnist"] = Preset("MNIST rotated by a different angle per experience (default 10 in [0, 180))",
                                  "domain", COMMON_KEYS | {"n_experiences", "angles"}, _rotated, no_features=pixels)
    out["mnist-fashion-animal"] = Preset("MNIST -> Fashion-MNIST -> Animal-MNIST, one experience each "
                                         "(domain: shared 10 outputs; class: 30 classes)", "domain",
                                         COMMON_KEYS | {"features"}, _sequence)
    out["tweets-sentiment"] = Preset("tweet sentiment (3 classes, text) in the MiniLM space; data-incremental: "
                                     "the same classes in every experience, new tweets in chunks (default 5); "
                                     "needs features: {backbone: minilm}", "domain",
                                     COMMON_KEYS | {"n_experiences", "features"}, _tweets)
    for d in ("mnist", "digits"):
        out[f"scole-{d}"] = _scole(d)
    out["powerlaw-permuted-mnist"] = Preset(
        "permuted-MNIST tasks (default 10) revisited over the stream (default 50 visits) with probability ~ (time "
        "since last seen)^-revisit_alpha; revisit: power_law, uniform or none", "domain",
        COMMON_KEYS | {"n_experiences", "n_tasks", "revisit", "revisit_alpha", "train_per_experience",
                       "test_per_task", "permute_first"}, _power_law,
        no_features="its experiences transform the pixels (a permutation per task)")
    return out


def user_preset(name: str) -> Preset | None:
    """A benchmark of yours: ``"package.module:function"`` (its module allowed) or an installed
    entry point (group ``lifelong.benchmarks``), a function ``(cfg, seed) -> Stream`` marked with
    :func:`lifelong.registry.benchmark`; None if ``name`` is neither. Checked before it is
    called; its result is checked to be a :class:`Stream` of the scenario asked for."""
    fn = registry.resolve(name, "benchmark", key="benchmark.name")
    if fn is None:
        return None
    spec = fn.__lifelong_benchmark__
    from ..config import BenchmarkConfig

    wrong = sorted(spec.keys - set(BenchmarkConfig.model_fields))
    if wrong:
        raise ConfigError(f"benchmark '{name}' declares key '{wrong[0]}', which is no benchmark.* config key; "
                          f"the keys: {', '.join(BenchmarkConfig.model_fields)}")

    def build(cfg, seed):
        stream = fn(cfg, seed)
        if not isinstance(stream, Stream):
            raise ConfigError(f"benchmark '{name}' returned {type(stream).__name__}, not a lifelong.streams.Stream")
        want = cfg.scenario or spec.scenario
        if stream.scenario != want:
            raise ConfigError(f"benchmark '{name}' returned a {stream.scenario}-IL stream, but scenario '{want}' "
                              "was asked for")
        return stream

    return Preset(spec.description or f"your benchmark {name}", spec.scenario, COMMON_KEYS | spec.keys, build,
                  no_features=None if "features" in spec.keys else "it does not declare the key 'features'")


def build_benchmark(cfg, seed: int = 0) -> Stream:
    """Build the stream that ``cfg`` (a :class:`~lifelong.config.BenchmarkConfig`) names."""
    return check_benchmark(cfg).build(cfg, seed)


def check_benchmark(cfg) -> Preset:
    """The preset ``cfg`` names, after checking its keys apply to it; loads no data."""
    table = presets()
    preset = table.get(cfg.name) or user_preset(cfg.name)
    if preset is None:
        raise ConfigError(f"unknown benchmark '{cfg.name}'; allowed: {', '.join(table)}, "
                          f"{registry.reference_help('benchmark')}")
    if getattr(cfg, "features", None) is not None and preset.no_features:
        raise ConfigError(f"benchmark.features does not apply to '{cfg.name}': {preset.no_features}")
    extra = sorted(k for k in cfg.model_fields_set if k not in preset.keys and getattr(cfg, k) is not None)
    if extra:
        why = " (its data come with an installed package: no folder to give)" if extra[0] == "data_dir" else ""
        raise ConfigError(f"config key 'benchmark.{extra[0]}' does not apply to '{cfg.name}'{why}; "
                          f"its keys: {', '.join(sorted(preset.keys))}")
    return preset


def benchmark_scenario(cfg) -> str:
    """The scenario a benchmark config will run: its ``scenario`` or the preset's default."""
    return cfg.scenario or check_benchmark(cfg).default_scenario
