"""The tune spec: a YAML file with the base run config, the protocol, the study settings, the
budget and the search space (see :mod:`lifelong.tuning` and docs/tuning.md)."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)

PROTOCOLS = ("reality-check", "current-task", "test")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "asha", "hyperband", "none")


class ProtocolSpec(BaseModel):
    """``reality-check`` (Cha & Cho): tune on ``tune_on`` (phase 1), report on each ``report_on``
    (phase 2). ``current-task``: tune on each ``report_on`` benchmark's validation splits of the
    experiences seen so far, report on its test splits. ``test``: tune on each ``report_on``
    benchmark's test splits (only with --allow-tune-on-test; marked as such everywhere).
    ``tune_on`` / ``report_on`` are benchmark sections merged over the base config's."""

    model_config = _STRICT
    name: Literal["reality-check", "current-task", "test"] = "current-task"
    tune_on: Optional[dict[str, Any]] = None
    report_on: Optional[list[dict[str, Any]]] = None  # None: the base config's benchmark
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    val_fraction: float = Field(0.1, gt=0, lt=1)  # used where the base config leaves benchmark.val_fraction 0


class StudySpec(BaseModel):
    model_config = _STRICT
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["median", "asha", "hyperband", "none"] = "median"
    seed: int = Field(0, ge=0)  # the sampler's seed
    objective: str = "average_accuracy"  # a number in results.json
    direction: Literal["maximize", "minimize"] = "maximize"
    n_startup_trials: int = Field(5, ge=0)  # the median pruner waits for this many finished trials
    # no trial is pruned before this many experiences: after the first one every method has only
    # learned one task, and a regulariser's strength shows only once it has something to protect
    prune_after: int = Field(2, ge=1)


class BudgetSpec(BaseModel):
    model_config = _STRICT
    trials: int = Field(20, ge=1)  # finished (complete or pruned) trials per study
    timeout_s: Optional[float] = Field(None, gt=0)  # per study; no new batch starts after it
    parallel: int = Field(1, ge=1)  # trials asked per batch and run at once by the executor


class TuneSpec(BaseModel):
    model_config = _STRICT
    base: dict[str, Any] = Field(default_factory=dict)  # any lifelong run config
    protocol: ProtocolSpec = ProtocolSpec()
    study: StudySpec = StudySpec()
    budget: BudgetSpec = BudgetSpec()
    space: dict[str, Any] = Field(default_factory=dict)
    strategies: dict[str, Any] = Field(default_factory=dict)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def parse_spec(data: Any) -> TuneSpec:
    from ..config import _format_validation_error

    if not isinstance(data, dict):
        raise ConfigError(f"a tune spec must be a mapping (base, protocol, study, budget, space, strategies), "
                          f"got {type(data).__name__}")
    try:
        spec = TuneSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"tune spec: {_format_validation_error(exc)}") from None
    if spec.protocol.name == "reality-check" and not spec.protocol.tune_on:
        raise ConfigError("protocol reality-check tunes on another dataset's scenario: give protocol.tune_on "
                          "(e.g. {name: split-fashion-mnist}) and protocol.report_on")
    if spec.protocol.name != "reality-check" and spec.protocol.tune_on:
        raise ConfigError(f"protocol.tune_on applies only to reality-check; protocol '{spec.protocol.name}' tunes on "
                          "each report_on benchmark")
    st = spec.study
    if st.pruner != "none" and (st.direction != "maximize" or "accuracy" not in st.objective):
        raise ConfigError(f"study.pruner '{st.pruner}' stops trials by their accuracy on the experiences seen so far, "
                          f"which fits an accuracy objective that is maximized, not {st.direction} "
                          f"'{st.objective}'; set study.pruner: none")
    if len(set(spec.protocol.seeds)) != len(spec.protocol.seeds) or any(s < 0 for s in spec.protocol.seeds):
        raise ConfigError(f"protocol.seeds must be distinct seeds >= 0, got {spec.protocol.seeds}")
    return spec
