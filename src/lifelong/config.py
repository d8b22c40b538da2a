"""The run configuration: one serialisable object; a run is a pure function of it.

Every section forbids unknown keys. Validation errors become one :class:`ConfigError` that
names the key and what is allowed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from .errors import ConfigError
from .schedules import ScheduleConfig

# every section: unknown keys are errors, and no float anywhere may be inf or NaN (a learning rate
# of .inf gives a NaN run, not an error)
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


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
            from .registry import resolve

            try:  # imported only if allowed, and checked to be an nn.Module class, before anything is called
                resolve(self.module, "extractor", key="features.module")
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
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
    # permuted-mnist: zero pixels added on each side before permuting (van de Ven's reference: 2, 28x28 -> 32x32)
    pad: Optional[int] = Field(None, ge=0, le=64)
    features: Optional[FeaturesConfig] = None  # frozen pretrained features instead of raw inputs
    # generalized class-IL (G-ACIL / Si-Blurry): fraction of each blurry class's training samples
    # moved from its own experience to the others; blurry_disjoint: fraction of classes kept disjoint
    blurry: Optional[float] = Field(None, gt=0.0, lt=1.0)
    blurry_disjoint: Optional[float] = Field(None, ge=0.0, le=1.0)
    # experience order of split presets (lifelong.streams.orderings); order_scores: one difficulty per class
    order: Optional[Literal["random", "curriculum", "anti-curriculum"]] = None
    order_scores: Optional[list[float]] = None  # None: a linear probe's training loss per experience
    # scole-*: sampling weight per class (None: uniform); training / test samples per class (None: all)
    class_probs: Optional[list[Annotated[float, Field(ge=0.0)]]] = None
    train_per_class: Optional[int] = Field(None, ge=1)
    test_per_class: Optional[int] = Field(None, ge=1)
    # powerlaw-permuted-mnist: revisit law, its exponent, number of tasks, samples per visit / per task test set
    revisit: Optional[Literal["power_law", "uniform", "none"]] = None
    revisit_alpha: Optional[float] = Field(None, gt=0.0)
    n_tasks: Optional[int] = Field(None, ge=1)
    train_per_experience: Optional[int] = Field(None, ge=1)
    test_per_task: Optional[int] = Field(None, ge=1)


class ModelConfig(BaseModel):
    model_config = _STRICT
    # mlp, cnn, lite0_head (on features {layer: blocks}), an installed entry point (group
    # lifelong.models) or your own "package.module:Class" (lifelong.registry: allow-list, contract)
    name: str = "mlp"
    hidden: Optional[list[Annotated[int, Field(ge=1)]]] = None  # mlp: widths (default [400, 400]); cnn: fc widths
    channels: Optional[list[Annotated[int, Field(ge=1)]]] = None  # cnn only
    head: Optional[Literal["single", "incremental", "multi"]] = None  # None: by scenario
    # start from saved weights (a state-dict file or a run's checkpoint.pt) and/or hold a fixed mask
    # ({parameter name: bool tensor} file) through training (lifelong.strategies._start_from)
    init_from: Optional[str] = None
    mask: Optional[str] = None

    @field_validator("init_from", "mask")
    @classmethod
    def _file_exists(cls, path: Optional[str]) -> Optional[str]:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"file not found: {path}")
        return path

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        """A built-in, or a reference resolved now (allow-list, an nn.Module subclass), before any data loads."""
        from . import registry
        from .models import BACKBONES, backbone_class

        if name in BACKBONES:
            return name
        if not registry.is_reference(name) and name not in registry.entry_point_names("model"):
            builtins = ", ".join(repr(b) for b in BACKBONES)
            raise ValueError(f"input should be one of {builtins}, {registry.reference_help('model')} (got {name!r})")
        try:
            backbone_class(name)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("model.name: ")) from None
        return name


class StrategyConfig(BaseModel):
    """``name`` (``"er"``, or several joined by ``+`` such as ``"er+ewc"``) and the method's
    hyper-parameters as further keys (see ``lifelong list``)."""

    model_config = ConfigDict(extra="allow")
    name: str = "finetune"

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class OptimizerConfig(BaseModel):
    """The optimizer and the passes over the data: shared by a run's ``train`` section and a
    test-time-adaptation run's source training."""

    model_config = _STRICT
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.0, ge=0)


class TrainConfig(OptimizerConfig):
    """How each experience is trained. ``iterations``: per experience, one number or one per
    experience (None: ``epochs`` passes). ``grad_clip_norm``: clip the gradients' total L2 norm
    (after the strategy's ``before_step``). ``precision``: fp32, or autocast to bf16 / fp16 (fp16
    with a gradient scaler). ``compile``: ``torch.compile`` the backbone with this backend
    (``inductor`` on a GPU; ``eager``/``aot_eager`` to check a model compiles). ``record_grad_norms``:
    store each update's gradient norm in results (``grad_norms``, for the refined schedule).
    New keys default to null, so that reproduce's cache keys (which drop null keys) stay valid."""

    model_config = _STRICT
    iterations: Union[Annotated[int, Field(ge=1)], list[Annotated[int, Field(ge=1)]], None] = None
    grad_clip_norm: Optional[float] = Field(None, gt=0)
    precision: Optional[Literal["fp32", "bf16", "fp16"]] = None  # None: fp32
    compile: Optional[Literal["inductor", "aot_eager", "eager"]] = None
    record_grad_norms: Optional[bool] = None  # None: false
    schedule: Optional[ScheduleConfig] = None  # learning-rate schedule (lifelong.schedules); None: constant
    betas: tuple[float, float] = (0.9, 0.999)
    reset_optimizer: bool = True
    # the seed of training's draws (batch order, a method's own draws); None: the run's seed. The
    # stream (class order, splits, permutations) and the model's initialisation follow `seed`.
    seed: Optional[int] = None


class EvalConfig(BaseModel):
    """End-of-experience evaluation is always exact on the full test sets; ``every`` adds
    continual evaluation (every ``every`` iterations, on ``subsample`` fixed samples per seen
    experience) for the stability-gap metrics. ``every: null`` turns it off."""

    model_config = _STRICT
    every: Optional[int] = Field(10, ge=1)
    subsample: int = Field(500, ge=1)
    split: Literal["test", "valid"] = "test"
    batch_size: int = Field(1000, ge=1)
    # Task-IL runs also measure the task-agnostic accuracy matrix (every output competes, the task
    # id unknown): one more prediction per test batch, and one per learned task for a method that
    # routes each task through its own parameters (CLR, PackNet, HAT, the hypernetworks), which
    # can make evaluation most of a run's time. false: only the task-aware matrix (the task-IL
    # protocol's). Class- and domain-IL are evaluated task-agnostically: false is refused there.
    task_agnostic: bool = True
    # A model-selection run (a tuning trial): every evaluation (the accuracy matrix and the
    # continual curve) reads the validation splits, and the test splits are removed from the
    # stream before training, so nothing of them is read. Needs benchmark.val_fraction > 0.
    selection: Optional[bool] = None  # None: false


class TrackingConfig(BaseModel):
    """Optional logging (needs ``pip install -e '.[tracking]'``): TensorBoard event files in the
    run folder's ``tensorboard/``; MLflow to a local store (default ``./mlruns``)."""

    model_config = _STRICT
    tensorboard: bool = False
    mlflow: bool = False
    mlflow_uri: Optional[str] = None
    every: int = Field(10, ge=1)  # log the training loss every N iterations


class CheckpointConfig(BaseModel):
    """When a run saves its full state for resuming (besides every experience end): every
    ``every_iterations`` updates and/or every ``every_seconds`` of wall time (null: 300 s). An
    execution setting: it never changes a run's numbers."""

    model_config = _STRICT
    every_iterations: Optional[int] = Field(None, ge=1)
    every_seconds: Optional[float] = Field(None, gt=0)


class OnlineConfig(BaseModel):
    """Online continual learning: one pass over each experience's data in small batches
    (``batch_size``, default 10, replacing ``train.batch_size``), each incoming batch first
    predicted (the online accuracy in results). ``task_free``: no boundary reaches the strategy
    (only methods that need none may run; class- and domain-IL)."""

    model_config = _STRICT
    batch_size: int = Field(10, ge=1)
    task_free: bool = False
    accuracy: bool = True  # record the online accuracy (one extra forward pass per batch)


class RunConfig(BaseModel):
    model_config = _STRICT
    benchmark: BenchmarkConfig = BenchmarkConfig()
    model: ModelConfig = ModelConfig()
    strategy: StrategyConfig = StrategyConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    checkpoint: Optional[CheckpointConfig] = None  # null: every experience end and every 300 s
    online: Optional[OnlineConfig] = None  # null: offline (train.iterations / train.epochs per experience)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: Optional[int] = Field(None, ge=1)  # torch intra-op threads; None: torch's default

    @model_validator(mode="after")
    def _selection_needs_validation(self):
        if self.eval.selection and not self.benchmark.val_fraction:
            raise ValueError("eval.selection evaluates on the validation splits, but benchmark.val_fraction is 0: "
                             "set benchmark.val_fraction (e.g. 0.1)")
        return self

    @model_validator(mode="after")
    def _online_is_one_pass(self):
        if self.online is not None:
            if self.train.iterations is not None:
                raise ValueError("online training is one pass over each experience: remove train.iterations "
                                 "(or remove the online section)")
            if self.train.epochs != 1:
                raise ValueError(f"online training is one pass over each experience: train.epochs must be 1, "
                                 f"got {self.train.epochs}")
        return self

    def to_dict(self) -> dict:
        return json.loads(self.model_dump_json())


_SECTION_EXAMPLES = {"strategy": "strategy: {name: er, mem_size: 200}", "benchmark": "benchmark: {name: split-mnist}",
                     "model": "model: {name: mlp}", "train": "train: {iterations: 500}"}


def _format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        key = prefix + ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}'")
        elif err["type"] in ("model_type", "model_attributes_type", "dict_type"):  # `strategy: er`
            lines.append(f"config key '{key}' is a section: give a mapping of its keys (e.g. "
                         f"{_SECTION_EXAMPLES.get(key, key + ': {...}')}), not {err.get('input')!r}")
        elif err["type"] == "finite_number":
            lines.append(f"config key '{key}': must be a finite number (got {err.get('input')!r})")
        elif err["type"] == "literal_error":
            lines.append(f"config key '{key}': {err['msg'].lower()} (got {err.get('input')!r})")
        elif err["type"] == "value_error":  # our own validators: the message says it all
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"config key '{key}': {msg}" if key else msg)  # a whole-config rule names its keys
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
    check_sections(data)
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


def check_sections(data: dict) -> None:
    """Every section of a config (``strategy``, ``train``, ...) must be a mapping: ``strategy: er``
    or ``--set strategy=er`` is one clear error, not a traceback further on."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    for key, field in RunConfig.model_fields.items():
        optional_and_null = data.get(key) is None and field.default is None
        if key in data and _submodel(field.annotation) is not None and not isinstance(data[key], dict) \
                and not optional_and_null:
            example = _SECTION_EXAMPLES.get(key, key + ": {...}")
            raise ConfigError(f"config key '{key}' is a section: give a mapping of its keys (e.g. {example}), "
                              f"not {data[key]!r}")


def strategy_param_model(cls) -> type[BaseModel]:
    """A pydantic model of a strategy's constructor parameters: types, ranges (``Annotated[...,
    Field(...)]``) and defaults come from the signature; no float may be inf or NaN. The one
    source for validation, error messages and ``lifelong list``."""
    import inspect
    import typing

    sig = inspect.signature(cls.__init__)
    hints = typing.get_type_hints(cls.__init__, include_extras=True)  # keep Annotated's Field
    fields = {}
    for name in cls.get_param_names():
        p = sig.parameters[name]
        default = p.default if p.default is not inspect.Parameter.empty else ...
        fields[name] = (hints.get(name, Any), default)
    return create_model(f"{cls.__name__}Params", __config__=_STRICT, **fields)


def validate_strategy_params(scfg: StrategyConfig) -> list[tuple[str, dict[str, Any]]]:
    """Check every key against the named strategies' parameters, before any data loads.

    The one place where strategy parameters are validated (``lifelong.runner.build_strategy``
    uses it; a strategy built in Python with ``ER(mem_size=-5)`` is not checked by its
    constructor, see docs/decisions.md). For a composition ``"a+b"`` a key reaches every member
    that takes it (``mem_size`` in ``"er+agem"`` sets both memories); a key no member takes is an
    error. Returns ``(name, params)`` per member, in order (``"er+er"`` gives two members)."""
    from .strategies import get_strategy_class

    names = [n.strip() for n in scfg.name.split("+")]
    classes = [get_strategy_class(n) for n in names]
    params = scfg.params
    allowed = list(dict.fromkeys(p for c in classes for p in c.get_param_names()))
    unknown = [k for k in params if k not in allowed]
    if unknown:
        raise ConfigError(f"unknown parameter 'strategy.{unknown[0]}' for strategy '{scfg.name}'; "
                          f"allowed: {', '.join(allowed) or '(none: it takes no parameters)'}")
    out = []
    for n, c in zip(names, classes):
        mine = {k: v for k, v in params.items() if k in c.get_param_names()}
        try:
            out.append((n, strategy_param_model(c).model_validate(mine).model_dump()))
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(exc, "strategy.")) from None
    return out


def check_runnable(cfg: RunConfig) -> None:
    """What can be known before any data loads, beyond the config's own types: the benchmark
    exists and every ``benchmark.*`` key given applies to it (``data_dir`` only for datasets read
    from a folder), and every member of the strategy supports the scenario the run will have.
    The command line calls it for every run of a sweep before the first one starts."""
    from .strategies import get_strategy_class
    from .streams.presets import benchmark_scenario

    scenario = benchmark_scenario(cfg.benchmark)
    check_eval_scenario(cfg, scenario)
    for name in cfg.strategy.name.split("+"):
        cls = get_strategy_class(name.strip())
        if scenario not in cls.scenarios:
            raise ConfigError(f"strategy '{name.strip()}' supports scenarios {', '.join(cls.scenarios)}, not "
                              f"'{scenario}' (benchmark '{cfg.benchmark.name}'); choose another strategy or set "
                              "benchmark.scenario (--scenario)")
        check_compile(cfg, name.strip(), cls.compile_refusal)
    for name, params in validate_strategy_params(cfg.strategy):
        check_passes(cfg, name, get_strategy_class(name)(**params).train_passes())


def check_passes(cfg: RunConfig, name: str, passes: int | None) -> None:
    """A strategy that fixes its own passes over the data it trains on (``Strategy.train_passes``:
    GDumb over its memory) leaves nothing to the run's budget keys, nor to a schedule sized from
    the stream's experiences: setting them too is refused, not silently overridden."""
    if passes is None:
        return
    t = cfg.train
    given = [k for k, v in (("train.iterations", t.iterations), ("train.epochs", t.epochs if t.epochs != 1 else None),
                            ("train.schedule", t.schedule)) if v is not None]
    if given:
        raise ConfigError(f"strategy '{name}' makes its own {passes} passes over its training data at each "
                          f"experience, which {' and '.join(given)} would also set: remove {', '.join(given)}, "
                          f"or remove the strategy's passes to let the run's budget decide")


def check_compile(cfg: RunConfig, name: str, refusal: str | None) -> None:
    """``train.compile`` with a strategy that cannot serve it (``Strategy.compile_refusal``)."""
    if cfg.train.compile and refusal:
        raise ConfigError(f"strategy '{name}' cannot run with train.compile: {refusal}; remove train.compile")


def check_eval_scenario(cfg: RunConfig, scenario: str) -> None:
    """``eval.task_agnostic: false`` only in task-IL, whose protocol is the task-aware matrix."""
    if not cfg.eval.task_agnostic and scenario != "task":
        raise ConfigError(f"eval.task_agnostic: false applies to task-IL only; the '{scenario}' scenario "
                          f"(benchmark '{cfg.benchmark.name}') is evaluated task-agnostically: remove "
                          "eval.task_agnostic or set benchmark.scenario to task")


def load_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
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
    if data is None or data == {}:  # an empty file is a mistake (wrong file?), not "all defaults"
        raise ConfigError(f"config file {path} is empty; give at least one section, e.g. "
                          "benchmark: {name: split-mnist}")
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
