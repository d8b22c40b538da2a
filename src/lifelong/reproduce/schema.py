"""The schema of a protocol file (``docs/protocols.md``), as strict pydantic models.

Every level refuses unknown keys, and values are not coerced (``seeds: "5"`` or ``points: 1e5``,
which YAML 1.1 reads as a string, are refused rather than guessed). :func:`parse_protocol` checks
the structure and the cross-references (a method named under ``published`` exists, a scenario a
method lists is defined, ...) and turns every problem into one :class:`~lifelong.errors.ConfigError`
that names the file and the key. The RunConfig fragments themselves (``base``, ``config``,
``method_params``, ``seed_configs``) are checked against the run config schema by
:func:`lifelong.reproduce.protocol.check_configs`.
"""
from __future__ import annotations

import typing
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError

Scenario = Literal["task", "domain", "class"]
SCENARIOS: tuple[str, ...] = typing.get_args(Scenario)
#: keys of a run's results dict that a protocol may compare (every run reports them)
Metric = Literal["average_accuracy", "average_incremental_accuracy", "forgetting", "bwt", "fwt"]

_STRICT = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
Fragment = dict[str, Any]  # a part of a RunConfig, validated by lifelong.config.parse_config


class Citation(BaseModel):
    model_config = _STRICT
    paper: str                                   # authors (year). title. venue. doi
    table: Optional[str] = None                  # where the published values come from
    arxiv: Optional[str] = None
    code: Optional[str] = None                   # the reference implementation
    paper_seeds: Optional[int] = Field(None, ge=1)   # how many seeds the paper averaged


class ScenarioSpec(BaseModel):
    model_config = _STRICT
    label: Optional[str] = None
    config: Optional[Fragment] = None            # merged into base
    method_params: Optional[dict[str, Optional[dict[str, Any]]]] = None   # merged into a method's strategy


class MethodSpec(BaseModel):
    model_config = _STRICT
    label: Optional[str] = None
    config: Fragment                             # at least {strategy: {name: ...}}
    scenarios: Optional[list[Scenario]] = None   # None: every scenario of the protocol


class Tolerance(BaseModel):
    model_config = _STRICT
    points: float = Field(3.0, ge=0)             # accuracy points
    se_multiplier: float = Field(2.0, ge=0)      # times the standard error of our mean


class Cell(BaseModel):
    model_config = _STRICT
    mean: Optional[float]                        # null: not reported / not found (no verdict)
    sem: Optional[float] = Field(None, ge=0)
    source: Optional[str] = None


class ValueTable(BaseModel):
    """Published (or context) values: mean ± s.e.m. per scenario and method, with provenance."""
    model_config = _STRICT
    source: Optional[str] = None
    provenance: Literal["primary", "secondary"] = "primary"   # secondary: a transcription, flagged
    task: Optional[dict[str, Cell]] = None
    domain: Optional[dict[str, Cell]] = None
    class_: Optional[dict[str, Cell]] = Field(None, alias="class")

    def cells(self) -> dict[str, dict[str, Cell]]:
        return {s: t for s, t in (("task", self.task), ("domain", self.domain), ("class", self.class_)) if t}


class Notes(BaseModel):
    model_config = _STRICT
    general: Optional[list[str]] = None
    cells: Optional[dict[Scenario, dict[str, str]]] = None


class ProtocolFile(BaseModel):
    """A whole protocol file. Only ``name``, ``base``, ``scenarios`` and ``methods`` are required."""
    model_config = _STRICT
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")   # also the default output folder's name
    title: Optional[str] = None
    citation: Optional[Citation] = None
    metric: Metric = "average_accuracy"
    seeds: int = Field(5, ge=1)                  # default number of seeds: first_seed .. first_seed + seeds - 1
    first_seed: int = Field(0, ge=0)
    seed_configs: Optional[dict[Annotated[int, Field(ge=0)], Optional[Fragment]]] = None   # a seed's own changes
    default_scenarios: Optional[list[Scenario]] = None
    base: Fragment
    scenarios: dict[Scenario, Optional[ScenarioSpec]] = Field(min_length=1)
    methods: dict[str, MethodSpec] = Field(min_length=1)
    tolerance: Optional[Tolerance] = None
    published: Optional[ValueTable] = None
    reference: Optional[ValueTable] = None       # context only, never used for a verdict
    evidence: Optional[list[str]] = None
    notes: Optional[Notes] = None


# ----------------------------------------------------------------------------- errors
def _unwrap(t):
    """The type inside ``Optional[...]`` / ``Annotated[...]``."""
    while True:
        origin = typing.get_origin(t)
        if origin is Annotated:
            t = typing.get_args(t)[0]
        elif origin is typing.Union:
            args = [a for a in typing.get_args(t) if a is not type(None)]
            if len(args) != 1:
                return t
            t = args[0]
        else:
            return t


def _keys_of(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


def _allowed_keys(loc: tuple) -> list[str]:
    """The keys the schema allows in the mapping that holds ``loc``'s last key."""
    t: Any = ProtocolFile
    for part in loc[:-1]:
        t = _unwrap(t)
        if isinstance(t, type) and issubclass(t, BaseModel):
            field = next((f for n, f in t.model_fields.items() if part in (n, f.alias)), None)
            if field is None:
                return []
            t = field.annotation
        elif typing.get_origin(t) in (dict, list):
            t = typing.get_args(t)[-1]
        else:
            return []
    t = _unwrap(t)
    return _keys_of(t) if isinstance(t, type) and issubclass(t, BaseModel) else []


def _dotted(loc) -> str:
    return ".".join(str(p) for p in loc)


def _message(err: dict) -> str:
    loc, kind, got = tuple(err["loc"]), err["type"], err.get("input")
    if not loc:
        return f"the file must hold a mapping of protocol keys (got {type(got).__name__})"
    if loc[-1] == "[key]":  # a mapping's key is wrong (a scenario that does not exist, a seed that is not an int)
        return f"key '{_dotted(loc[:-2]) or '(top level)'}': {loc[-2]!r} is not allowed as a key here: {err['msg']}"
    key = _dotted(loc)
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc)
        return f"unknown key '{key}'" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
    if kind == "missing":
        return f"missing required key '{key}'"
    return f"key '{key}': {err['msg']} (got {got!r})"


def _cross_references(p: ProtocolFile) -> list[str]:
    """What the schema alone cannot see: names that must refer to a defined scenario or method."""
    scen, meth = list(p.scenarios), list(p.methods)
    problems = []

    def need_scenario(key: str, s: str) -> None:
        if s not in scen:
            problems.append(f"key '{key}': scenario '{s}' is not defined under 'scenarios' "
                            f"(defined: {', '.join(scen)})")

    def need_method(key: str, m: str) -> None:
        if m not in meth:
            problems.append(f"key '{key}': unknown method '{m}'; the protocol's methods: {', '.join(meth)}")

    for s, spec in p.scenarios.items():
        for m in (spec.method_params or {}) if spec else {}:
            need_method(f"scenarios.{s}.method_params.{m}", m)
    for m, spec in p.methods.items():
        strategy = spec.config.get("strategy")
        if not (isinstance(strategy, dict) and strategy.get("name")):
            problems.append(f"missing required key 'methods.{m}.config.strategy.name': every method names its "
                            "strategy (e.g. config: {strategy: {name: ewc}})")
        for s in spec.scenarios or []:
            need_scenario(f"methods.{m}.scenarios", s)
    for s in p.default_scenarios or []:
        need_scenario("default_scenarios", s)
    for section in ("published", "reference"):
        table = getattr(p, section)
        for s, cells in (table.cells() if table else {}).items():
            need_scenario(f"{section}.{s}", s)
            for m in cells:
                need_method(f"{section}.{s}.{m}", m)
    for s, cells in ((p.notes.cells or {}) if p.notes else {}).items():
        need_scenario(f"notes.cells.{s}", s)
        for m in cells:
            need_method(f"notes.cells.{s}.{m}", m)
    return problems


def parse_protocol(data: Any, where: str = "protocol") -> ProtocolFile:
    """The validated protocol; one :class:`ConfigError` naming ``where`` and every wrong key otherwise."""
    try:
        spec = ProtocolFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"protocol {where}: " + "; ".join(_message(e) for e in exc.errors())) from None
    problems = _cross_references(spec)
    if problems:
        raise ConfigError(f"protocol {where}: " + "; ".join(problems))
    return spec
