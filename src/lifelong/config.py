"""The run configuration: one serialisable object; a run is a pure function of it.

Every section forbids unknown keys. Validation errors become one :class:`ConfigError` that
names the key and what is allowed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from .errors import ConfigError

_STRICT = ConfigDict(extra="forbid")


class FeaturesConfig(BaseModel):
    """Replace the benchmark's datasets by features of a frozen pretrained extractor, computed
    once and cached on disk (see docs/pretrained.md). ``image_size``: efficientnet_lite0 (default
    32) and local (default: no resizing); ``module``, ``weights``, ``kwargs``: local only."""

    model_config = _STRICT
    backbone: Literal["efficientnet_lite0", "local", "minilm"]
    image_size: Optional[int] = Field(None, ge=32)
    # efficientnet_lite0 only: "head" = the pooled 1280-d features (default); "blocks" = the last
    # block's 320-channel map, before the 1x1 head convolution, for model `lite0_head`, which
    # trains that pretrained convolution (SLCA's slow learner, L2 toward pretrained weights)
    layer: Optional[Literal["head", "blocks"]] = None
    batch_size: Optional[int] = Field(None, ge=1)  # None: 128 (images), 32 (minilm)
    cache_dir: Optional[str] = None  # None: $LIFELONG_CACHE_DIR or ~/.cache/lifelong/features
    module: Optional[str] = None  # local: "package.module:ClassName"
    weights: Optional[str] = None  # local: a file written by torch.save(model.state_dict(), path)
    kwargs: Optional[dict[str, Any]] = None  # local: ClassName(**kwargs)

    @model_validator(mode="after")
    def _per_backbone(self):
        if self.backbone == "local":
            missing = [k for k in ("module", "weights") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"backbone 'local' needs features.{missing[0]} "
                                 "(module: 'package.module:ClassName', weights: a state-dict file)")
        else:
            given = [k for k in ("module", "weights", "kwargs") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"features.{given[0]} applies only to backbone 'local', not '{self.backbone}'")
        if self.layer is not None and self.backbone != "efficientnet_lite0":
            raise ValueError(f"features.layer applies only to backbone 'efficientnet_lite0', not '{self.backbone}'")
        if self.backbone == "minilm" and self.image_size is not None:
            raise ValueError("features.image_size does not apply to the text encoder minilm")
        if self.backbone == "efficientnet_lite0" and self.image_size is None:
            self.image_size = 32  # resolved, so that the run's config records it
        if self.batch_size is None:
            self.batch_size = 32 if self.backbone == "minilm" else 128
        return self


class BenchmarkConfig(BaseModel):
    model_config = _STRICT
    name: str = "split-mnist"
    scenario: Optional[Literal["class", "task", "domain"]] = None  # None: the benchmark's default
    n_experiences: Optional[int] = Field(None, ge=1)
    classes_per_experience: Optional[int] = Field(None, ge=1)
    first_experience_classes: Optional[int] = Field(None, ge=1)
    class_order: Union[Literal["random"], list[int], None] = None
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    data_dir: Optional[str] = None
    angles: Optional[list[float]] = None
    permute_first: Optional[bool] = None
    features: Optional[FeaturesConfig] = None  # frozen pretrained features instead of raw inputs
    # generalized class-IL (G-ACIL / Si-Blurry): fraction of each blurry class's training samples
    # moved from its own experience to the others; blurry_disjoint: fraction of classes kept disjoint
    blurry: Optional[float] = Field(None, gt=0.0, lt=1.0)
    blurry_disjoint: Optional[float] = Field(None, ge=0.0, le=1.0)


class ModelConfig(BaseModel):
    model_config = _STRICT
    name: Literal["mlp", "cnn", "lite0_head"] = "mlp"  # lite0_head: on features {layer: blocks}
    hidden: Optional[list[int]] = None  # mlp: hidden widths (default [400, 400]); cnn: fc widths
    channels: Optional[list[int]] = None  # cnn only
    head: Optional[Literal["single", "incremental", "multi"]] = None  # None: by scenario


class StrategyConfig(BaseModel):
    """``name`` (``"er"``, or several joined by ``+`` such as ``"er+ewc"``) and the method's
    hyper-parameters as further keys (see ``lifelong list``)."""

    model_config = ConfigDict(extra="allow")
    name: str = "finetune"

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainConfig(BaseModel):
    model_config = _STRICT
    iterations: Optional[int] = Field(None, ge=1)  # per experience; None: use epochs
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    reset_optimizer: bool = True


class EvalConfig(BaseModel):
    """End-of-experience evaluation is always exact on the full test sets; ``every`` adds
    continual evaluation (every ``every`` iterations, on ``subsample`` fixed samples per seen
    experience) for the stability-gap metrics. ``every: null`` turns it off."""

    model_config = _STRICT
    every: Optional[int] = Field(10, ge=1)
    subsample: int = Field(500, ge=1)
    split: Literal["test", "valid"] = "test"
    batch_size: int = Field(1000, ge=1)


class TrackingConfig(BaseModel):
    """Optional logging (needs ``pip install -e '.[tracking]'``): TensorBoard event files in the
    run folder's ``tensorboard/``; MLflow to a local store (default ``./mlruns``)."""

    model_config = _STRICT
    tensorboard: bool = False
    mlflow: bool = False
    mlflow_uri: Optional[str] = None
    every: int = Field(10, ge=1)  # log the training loss every N iterations


class RunConfig(BaseModel):
    model_config = _STRICT
    benchmark: BenchmarkConfig = BenchmarkConfig()
    model: ModelConfig = ModelConfig()
    strategy: StrategyConfig = StrategyConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: Optional[int] = Field(None, ge=1)  # torch intra-op threads; None: torch's default

    def to_dict(self) -> dict:
        return json.loads(self.model_dump_json())


def _format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        key = prefix + ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}'")
        elif err["type"] == "literal_error":
            lines.append(f"config key '{key}': {err['msg'].lower()} (got {err.get('input')!r})")
        elif err["type"] == "value_error":  # our own validators: the message says it all
            lines.append(f"config key '{key}': {err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"config key '{key}': {err['msg']} (got {err.get('input')!r})")
    return "; ".join(lines)


def _submodel(annotation) -> type[BaseModel] | None:
    """The BaseModel inside an annotation (``Sub`` or ``Optional[Sub]``), else None."""
    import typing

    for a in (annotation, *typing.get_args(annotation)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc[:-1]:
        ann = model.model_fields.get(str(part))
        sub = None if ann is None else _submodel(ann.annotation)
        if sub is None:
            return []
        model = sub
    return list(model.model_fields)


def parse_config(data: dict) -> RunConfig:
    """Validate a plain dict into a :class:`RunConfig` (strategy params included)."""
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        msg = _format_validation_error(exc)
        first = exc.errors()[0]
        if first["type"] == "extra_forbidden":
            allowed = _allowed_keys(RunConfig, first["loc"])
            msg += f"; allowed keys here: {', '.join(allowed)}"
        raise ConfigError(msg) from None
    validate_strategy_params(cfg.strategy)
    return cfg


def strategy_param_model(cls) -> type[BaseModel]:
    """A pydantic model of a strategy's constructor parameters (types from annotations)."""
    import inspect
    import typing

    sig = inspect.signature(cls.__init__)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:
        hints = {}
    fields = {}
    for name in cls.get_param_names():
        p = sig.parameters[name]
        default = p.default if p.default is not inspect.Parameter.empty else ...
        fields[name] = (hints.get(name, Any), default)
    return create_model(f"{cls.__name__}Params", __config__=_STRICT, **fields)


def validate_strategy_params(scfg: StrategyConfig) -> dict[str, dict[str, Any]]:
    """Check every key against the named strategies' parameters; returns params per member."""
    from .strategies import get_strategy_class

    names = [n.strip() for n in scfg.name.split("+")]
    classes = [get_strategy_class(n) for n in names]
    params = scfg.params
    owners: dict[str, str] = {}
    for n, c in zip(names, classes):
        for p in c.get_param_names():
            owners.setdefault(p, n)
    unknown = [k for k in params if k not in owners]
    if unknown:
        allowed = ", ".join(owners) or "(none)"
        raise ConfigError(f"unknown parameter 'strategy.{unknown[0]}' for strategy '{scfg.name}'; "
                          f"allowed: {allowed}")
    out = {}
    for n, c in zip(names, classes):
        mine = {k: v for k, v in params.items() if owners[k] == n}
        try:
            out[n] = strategy_param_model(c).model_validate(mine).model_dump()
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(exc, "strategy.")) from None
    return out


def load_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {path} must end in .yaml, .yml, .toml or .json")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"could not parse {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections, got {type(data).__name__}")
    return data


def set_key(data: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict (used for command-line overrides)."""
    parts = dotted.split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"config key '{dotted}': '{p}' is not a section")
        cur = nxt
    cur[parts[-1]] = value
