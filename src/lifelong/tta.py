"""Test-time adaptation (TTA): a source model meets a long, changing stream of unlabelled test
batches and may adapt on them (see docs/test-time-adaptation.md).

The protocol (online, as Tent and CoTTA evaluate):

1. A source model is trained on clean data with the ordinary loop (``lifelong.training.train``),
   here on clean MNIST.
2. The test stream (``lifelong.streams.corruptions.tta_stream``) is a sequence of batches of test
   images under corruptions that change every ``per_corruption`` images, cycling through the
   corruptions ``cycles`` times. Labels are never shown to the strategy.
3. For each batch in order, ``strategy.adapt(x)`` returns the scores it predicts for the batch
   BEFORE adapting on it, then adapts (a strategy that does not override ``adapt`` is the source
   model, unchanged). Those predictions are scored: the batch's error is the fraction of its
   argmax predictions that differ from the labels. Nothing is ever evaluated again after
   adaptation, so a method cannot see a batch before it is scored on it.
4. Each batch's error is recorded with its position, corruption and cycle; the summary gives
   the error per corruption per cycle, per cycle and overall (each weighted by images).

``run_tta(config)`` does all of this from a config dict (a :class:`TTAConfig`; unknown keys and
bad values are refused with one ConfigError before any data loads) and returns a
JSON-serialisable dict; ``run_tta_to_folder`` also writes ``results.json``, ``config.yaml`` and
``curve.csv`` (one row per batch). A run is a pure function of its config (which holds the seed).

A strategy may define ``check_adaptable(model)``, raising ConfigError for a model it cannot
adapt (Tent: no normalisation layers); it is called when the model is built, before data loads.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import __version__
from .config import OptimizerConfig, StrategyConfig, TrainConfig, _format_validation_error, validate_strategy_params
from .errors import ConfigError
from .streams.corruptions import CORRUPTIONS, TTAStream, tta_stream

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
CorruptionName = Literal[tuple(CORRUPTIONS)]  # type: ignore[valid-type]


class TTAStreamConfig(BaseModel):
    """The corrupted test stream: ``corruptions`` in order (default all), each for
    ``per_corruption`` images at ``severity``, the whole sequence repeated ``cycles`` times."""

    model_config = _STRICT
    corruptions: list[CorruptionName] = Field(default_factory=lambda: list(CORRUPTIONS), min_length=1)
    severity: int = Field(5, ge=1, le=5)
    cycles: int = Field(10, ge=1)
    per_corruption: int = Field(1000, ge=2)
    batch_size: int = Field(64, ge=2)

    @model_validator(mode="after")
    def _no_single_image_batch(self):
        if self.per_corruption % self.batch_size == 1:
            raise ValueError(f"per_corruption {self.per_corruption} leaves a batch of one image after batches of "
                             f"{self.batch_size} (no batch statistics); choose per_corruption % batch_size != 1")
        return self


class TTAModelConfig(BaseModel):
    """The source model: ``cnn`` (``channels``, one fc width in ``hidden``) or ``mlp`` (``hidden``
    widths), with batch norm (``norm: batch``, the default: Tent needs it) or without (null)."""

    model_config = _STRICT
    name: Literal["cnn", "mlp"] = "cnn"
    norm: Optional[Literal["batch"]] = "batch"
    channels: Optional[list[Annotated[int, Field(ge=1)]]] = None  # cnn: default [32, 64]
    hidden: Optional[list[Annotated[int, Field(ge=1)]]] = None  # cnn: [fc width] (default [256]); mlp: [400, 400]

    @model_validator(mode="after")
    def _per_model(self):
        if self.name == "mlp" and self.channels is not None:
            raise ValueError("model.channels applies only to model 'cnn'")
        if self.name == "cnn" and self.hidden is not None and len(self.hidden) != 1:
            raise ValueError(f"model 'cnn' has one hidden fc layer: hidden takes one width, got {self.hidden}")
        return self

    def kwargs(self) -> dict:
        out: dict[str, Any] = {"norm": self.norm}
        if self.channels is not None:
            out["channels"] = self.channels
        if self.hidden is not None:
            out["hidden"] = self.hidden[0] if self.name == "cnn" else self.hidden
        return out


class SourceTrainConfig(OptimizerConfig):
    """How the source model is trained on clean MNIST (the ordinary loop, one experience)."""

    iterations: Optional[int] = Field(None, ge=1)  # None: ``epochs`` passes


class TTAConfig(BaseModel):
    """A test-time-adaptation run (``lifelong.tta.run_tta``)."""

    model_config = _STRICT
    stream: TTAStreamConfig = TTAStreamConfig()
    model: TTAModelConfig = TTAModelConfig()
    train: SourceTrainConfig = SourceTrainConfig()
    strategy: StrategyConfig = StrategyConfig(name="tent")
    seed: int = 0
    device: str = "cpu"  # auto | cpu | cuda | cuda:N
    threads: Optional[int] = Field(None, ge=1)

    def to_dict(self) -> dict:
        return json.loads(self.model_dump_json())


def parse_tta_config(data: dict | TTAConfig) -> TTAConfig:
    """Validate a plain dict into a :class:`TTAConfig`, strategy parameters included; the model
    is built (no data) so that a strategy refuses a model it cannot adapt now."""
    if isinstance(data, TTAConfig):
        cfg = data
    else:
        try:
            cfg = TTAConfig.model_validate(data)
        except ValidationError as exc:
            msg = _format_validation_error(exc)
            first = exc.errors()[0]
            if first["type"] == "extra_forbidden":
                where: Any = TTAConfig
                for part in first["loc"][:-1]:
                    where = where.model_fields[str(part)].annotation
                msg += f"; allowed keys here: {', '.join(where.model_fields)}"
            raise ConfigError(msg) from None
    validate_strategy_params(cfg.strategy)
    with torch.random.fork_rng(devices=[]):  # checking builds a model: leave the global RNG as it was
        _build(cfg)
    return cfg


def _build(cfg: TTAConfig, device: torch.device | str = "cpu"):
    """The strategy and the (untrained) source model, checked against each other."""
    from .models import build_model
    from .runner import build_strategy

    strategy = build_strategy(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, (1, 28, 28), 10, "domain", **cfg.model.kwargs()).to(device)
    for member in getattr(strategy, "members", None) or [strategy]:  # a composition: each member's own check
        check = getattr(member, "check_adaptable", None)
        if check is not None:
            check(model)
    return strategy, model


@dataclass
class SourceModel:
    """A trained source model (its weights) and what the run records about its training."""

    state: dict
    clean_accuracy: float
    train_time_s: float
    key: dict  # the config parts that determine it (model, train, seed)


def _source_key(cfg: TTAConfig) -> dict:
    d = cfg.to_dict()
    return {"model": d["model"], "train": d["train"], "seed": d["seed"]}


def _prepare(config, data):
    """The checked config, the device, a fresh (strategy, model), and the data (MNIST unless given)."""
    from .runner import resolve_device

    cfg = parse_tta_config(config)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    strategy, model = _build(cfg, device)
    if data is None:
        from .data import mnist

        data = mnist()
    return cfg, device, strategy, model, data


def train_source(config: dict | TTAConfig, data=None) -> SourceModel:
    """Train the source model of ``config`` on clean MNIST (``data``: other DatasetSplits of
    28x28 grey images with 10 classes) with the ordinary loop, as fine-tuning on one experience."""
    from .runner import make_optimizer_factory
    from .strategies import Strategy
    from .streams import split_stream
    from .training import train

    cfg, device, _, model, data = _prepare(config, data)
    stream = split_stream(data, scenario="domain", n_experiences=1, seed=cfg.seed, name="mnist-clean").to(device)
    tc = cfg.train
    strategy = Strategy().setup(model, device, cfg.seed)
    t0 = time.perf_counter()
    res = train(stream, strategy, make_optimizer_factory(TrainConfig(**tc.model_dump())), batch_size=tc.batch_size,
                iterations=tc.iterations, epochs=tc.epochs, seed=cfg.seed, eval_every=None)
    return SourceModel({k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                       float(res.accuracy_matrix[-1][0]), time.perf_counter() - t0, _source_key(cfg))


def adapt_stream(strategy, stream, log_every: int = 0, log=print) -> list[dict]:
    """The online protocol: each batch's predictions are those ``strategy.adapt`` returns (made
    before it adapts on the batch); one record per batch."""
    records = []
    for b in stream:
        x = b.x.to(strategy.device)
        scores = strategy.adapt(x)
        if scores.ndim != 2 or len(scores) != len(x):
            raise ValueError(f"adapt must return scores (batch, classes), got shape {tuple(scores.shape)}")
        errors = int((scores.argmax(1).cpu() != b.y).sum())
        records.append({"position": b.position, "cycle": b.cycle, "corruption": b.corruption, "segment": b.segment,
                        "n": len(b.y), "errors": errors, "error": errors / len(b.y)})
        if log_every and (b.position + 1) % log_every == 0:
            recent = records[-log_every:]
            err = sum(r["errors"] for r in recent) / sum(r["n"] for r in recent)
            log(f"  batch {b.position + 1}/{len(stream)}: error {err:.3f} over the last {log_every} batches")
    return records


def summarize(records: list[dict], corruptions: list[str], cycles: int) -> dict:
    """Error per corruption per cycle, per cycle, per corruption, first/last cycle and overall."""
    def err(rs):
        n = sum(r["n"] for r in rs)
        return sum(r["errors"] for r in rs) / n if n else float("nan")

    by = {(c, k): [r for r in records if r["corruption"] == c and r["cycle"] == k] for c in corruptions
          for k in range(cycles)}
    per_cycle = [err([r for r in records if r["cycle"] == k]) for k in range(cycles)]
    return {
        "error": err(records),
        "error_per_cycle": per_cycle,
        "error_first_cycle": per_cycle[0],
        "error_last_cycle": per_cycle[-1],
        "error_per_corruption": {c: err([r for r in records if r["corruption"] == c]) for c in corruptions},
        "error_per_corruption_per_cycle": {c: [err(by[c, k]) for k in range(cycles)] for c in corruptions},
    }


def run_tta(config: dict | TTAConfig, source: SourceModel | None = None, data=None, log_every: int = 0,
            log=print) -> dict:
    """A TTA run from a config: train the source model (or take ``source``, trained by
    :func:`train_source` with the same model, train and seed settings), then run the adaptation
    stream with the configured strategy. ``data``: the DatasetSplits to use instead of MNIST
    (loaded otherwise). Returns a JSON-serialisable dict; ``curve`` holds one record per batch."""
    cfg, device, strategy, model, data = _prepare(config, data)  # data: loaded once, for the source and the stream
    if source is None:
        source = train_source(cfg, data)
    elif source.key != _source_key(cfg):
        raise ValueError(f"the given source model was trained with {source.key}, not {_source_key(cfg)}")
    model.load_state_dict(source.state)
    model.eval()  # the source model predicts as at evaluation; a TTA method sets its own modes in adapt
    strategy.setup(model, device, cfg.seed)
    s = cfg.stream
    stream: TTAStream = tta_stream(s.corruptions, s.cycles, s.per_corruption, s.batch_size, s.severity, cfg.seed,
                                   data)
    t0 = time.perf_counter()
    records = adapt_stream(strategy, stream, log_every, log)
    adapt_time = time.perf_counter() - t0
    return {
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "strategy": repr(strategy),
        "source": {"clean_accuracy": source.clean_accuracy, "train_time_s": source.train_time_s},
        "stream": {"corruptions": list(s.corruptions), "severity": s.severity, "cycles": s.cycles,
                   "per_corruption": s.per_corruption, "batch_size": s.batch_size, "n_batches": len(stream),
                   "n_images": stream.n_images},
        **summarize(records, list(s.corruptions), s.cycles),
        "adapt_time_s": adapt_time,
        "curve": records,
        "versions": {"lifelong": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "device": str(device),
    }


def write_curve(path: Path, records: list[dict]) -> None:
    """``curve.csv``: one row per batch (position, cycle, corruption, segment, n, errors, error)."""
    cols = ["position", "cycle", "corruption", "segment", "n", "errors", "error"]
    with open(path, "w") as f:
        f.write(",".join(cols) + "\n")
        for r in records:
            f.write(",".join(f"{r[c]:.6f}" if c == "error" else str(r[c]) for c in cols) + "\n")


def run_tta_to_folder(config: dict | TTAConfig, out_dir: str | Path, **kwargs) -> dict:
    """Run and write ``out_dir`` (results.json without the curve, config.yaml, curve.csv), by the
    rules of :mod:`lifelong.runfolder`: a folder of anything else is refused untouched, the same
    config's finished folder is reused, and files that cannot be written at the end go to a
    fallback folder named in the error (a TTA run is short: it is not checkpointed)."""
    import yaml

    from . import runfolder as rf
    from .io import strict_json_dumps

    out_dir = Path(out_dir)
    cfg = parse_tta_config(config)
    cfg_dict = cfg.to_dict()
    fp = rf.fingerprint(cfg_dict)
    state = rf.state_of(out_dir, fp)
    if state == "foreign":
        rf.refuse_foreign(out_dir)
    if state == "finished":
        return rf.load_finished(out_dir)
    partial = rf.prepare(out_dir, cfg_dict, fp)
    with rf.Lock(partial / "lock"):
        res = run_tta(cfg, **kwargs)
        curve = res.pop("curve")
        cols = ["position", "cycle", "corruption", "segment", "n", "errors", "error"]
        rows = [",".join(f"{r[c]:.6f}" if c == "error" else str(r[c]) for c in cols) for r in curve]
        rf.finish(out_dir, {"curve.csv": ("\n".join([",".join(cols), *rows]) + "\n").encode(),
                            "config.yaml": yaml.safe_dump(res["config"], sort_keys=False).encode(),
                            "results.json": strict_json_dumps(res).encode()})
    res["curve"] = curve
    return res
