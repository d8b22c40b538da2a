"""Learning-rate schedules: the factor by which every parameter group's base learning rate is
multiplied at each iteration, per experience (``over: experience``) or over the whole stream
(``over: stream``). Config: ``train.schedule`` (:class:`ScheduleConfig`); docs/schedules.md.

A schedule is a function of time sampled at the start of each iteration: with a budget of ``T``
iterations after ``W`` warm-up iterations, iteration ``it`` (0-based) gets the value at
``u = (it - W) / (T - W)``, and the decays would reach their end value at ``u = 1``, just after
the last step, so no step is taken at a zero learning rate. ``m`` is ``min_factor``.

- ``constant``: 1.
- ``cosine``: ``m + (1 - m) (1 + cos(pi u)) / 2``; with ``over: experience`` repeated (and
  re-warmed) every experience.
- ``linear``: ``m + (1 - m) (1 - u)``. Defazio, Cutkosky, Mehta, Mishchenko 2023, "When, Why and
  How Much? Adaptive Learning Rate Scheduling by Refinement" (arXiv 2310.07831): linear decay
  matches or beats cosine.
- ``wsd`` (warmup-stable-decay; Hu et al. 2024, Hägele et al. 2024): 1 while
  ``u < 1 - decay_fraction``, then linear to ``m`` (default ``decay_fraction`` 0.2).
- ``infinite``: Ibrahim et al. 2024, "Simple and Scalable Strategies to Continually Pre-train
  Large Language Models" (arXiv 2403.08763). Warm-up once (``(s + 1) / W`` for the first ``W``
  updates of the stream), cosine cooldown from 1 to ``c = constant_factor`` over ``cooldown``
  updates, constant ``c``, and an exponential anneal ``c (m / c)^((j + 1) / A)``, ``j = 0 ..
  A-1``, over the last ``A = round(decay_fraction * T)`` iterations of every experience
  (``over: experience``) or of the stream only (``over: stream``); the anneal ends at ``m`` on its
  last iteration (``m > 0``). Defaults from the paper: ``c = 0.55`` (eta_const 1.65e-4 / eta_max
  3e-4), ``m = 0.1`` (3e-5 / 3e-4), ``decay_fraction`` 0.1, no cooldown.
- ``refined``: Defazio et al. 2023, Algorithm 1 (SGD, l2 norms). The gradient norms of a previous
  run (``grad_norms_from``: its results.json, recorded with ``train.record_grad_norms: true``; or
  inline ``grad_norms``), median-filtered over a window of ``median_width`` (default 0.1, the
  authors' code) of the sequence, give ``w_t = g_t^-2 sum_{p > t} g_p^-2``, divided by its
  maximum. It makes its own warm-up and final annealing, so ``warmup`` is refused. With
  ``over: experience`` a results.json is split at its ``boundaries`` (experience ``i`` gets the
  refinement of the norms of the source run's experience ``i``); an inline list shapes every
  experience.

Warm-up: ``(it + 1) / W`` for ``it < W``, per experience with ``over: experience``, once at the
start of the stream with ``over: stream`` (``infinite`` warms up once in either case).

Where we differ from the papers:

- refined: the authors' reference code (facebookresearch/adaptive_scheduling,
  ``find_closed_form_schedule``) weights by ``g_t^-2 sum_{p>t} g_p^-2``; we checked that this,
  not ``g_t^-2 sum_{p>t} g_p^2``, lowers the paper's last-iterate bound
  (tests/test_schedules.py). The filtered norms are resampled (linear interpolation) to ``T + 1``
  points ``t = 0 .. T`` so that constant norms give exactly our ``linear`` schedule, and
  ``min_factor`` floors it as for the other decays. Only the SGD (l2) variant: the paper's Adam
  variant needs l1 norms, which the loop does not record.
- infinite: the anneal is applied in place (the next experience returns to ``c`` at once, without
  warm-up), where Ibrahim et al. anneal a copy and continue from the un-annealed checkpoint.

Everything is computed when the schedule is built (:func:`build_schedule`); a step is one list
lookup (:meth:`Schedule.factor`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import ConfigError

ScheduleName = Literal["constant", "cosine", "linear", "wsd", "infinite", "refined"]

# which optional keys each schedule takes (given elsewhere, a key is an error, not silently unused)
_APPLIES = {
    "min_factor": ("cosine", "linear", "wsd", "infinite", "refined"),
    "decay_fraction": ("wsd", "infinite"),
    "cooldown": ("infinite",),
    "constant_factor": ("infinite",),
    "grad_norms": ("refined",),
    "grad_norms_from": ("refined",),
    "median_width": ("refined",),
}
_DEFAULTS = {  # resolved by the validator, so that a run's config records the values it used
    "min_factor": {"infinite": 0.1},  # Ibrahim et al.: eta_min = 3e-5 = 0.1 eta_max
    "decay_fraction": {"wsd": 0.2, "infinite": 0.1},
    "cooldown": {"infinite": 0},
    "constant_factor": {"infinite": 0.55},  # Ibrahim et al.: eta_const = 1.65e-4, eta_max = 3e-4
    "median_width": {"refined": 0.1},  # Defazio et al.'s reference code: sigma2 = 0.1
}


class ScheduleConfig(BaseModel):
    """``train.schedule``: ``name`` and its options (see the module docstring and docs/schedules.md).
    Options that do not apply to the named schedule are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: ScheduleName = "constant"
    over: Literal["experience", "stream"] = "experience"  # decay per experience, or once over the stream
    warmup: int = Field(0, ge=0)  # iterations of linear warm-up (not for refined: it makes its own)
    min_factor: Optional[float] = Field(None, ge=0.0, lt=1.0)  # where the decays end (default 0; infinite 0.1)
    decay_fraction: Optional[float] = Field(None, gt=0.0, le=1.0)  # wsd / infinite: share of the budget decaying
    cooldown: Optional[int] = Field(None, ge=0)  # infinite: iterations of cosine cooldown 1 -> constant_factor
    constant_factor: Optional[float] = Field(None, gt=0.0, le=1.0)  # infinite: the constant phase's level
    grad_norms: Optional[list[float]] = Field(None, min_length=2)  # refined: one gradient norm per update
    grad_norms_from: Optional[str] = None  # refined: a results.json (or its run folder) holding grad_norms
    median_width: Optional[float] = Field(None, gt=0.0, le=1.0)  # refined: median filter width / sequence length

    @model_validator(mode="after")
    def _per_schedule(self):
        for key, names in _APPLIES.items():
            if getattr(self, key) is not None and self.name not in names:
                raise ValueError(f"schedule.{key} applies only to {', '.join(repr(n) for n in names)}, "
                                 f"not {self.name!r}")
        for key, per_name in _DEFAULTS.items():
            if getattr(self, key) is None and self.name in per_name:
                setattr(self, key, per_name[self.name])
        if self.min_factor is None and self.name in _APPLIES["min_factor"]:
            self.min_factor = 0.0
        if self.name == "refined":
            if self.warmup:
                raise ValueError("schedule.warmup does not apply to 'refined' (the refined schedule makes its "
                                 "own warm-up from the gradient norms); remove it")
            if (self.grad_norms is None) == (self.grad_norms_from is None):
                raise ValueError("schedule 'refined' needs exactly one of schedule.grad_norms (a list of gradient "
                                 "norms, one per update) or schedule.grad_norms_from (a results.json of a run with "
                                 "train.record_grad_norms: true)")
            if self.grad_norms is not None and not all(g > 0 for g in self.grad_norms):
                raise ValueError("schedule.grad_norms must all be positive finite numbers")
            if self.grad_norms_from is not None:
                load_grad_norms(self.grad_norms_from)  # a missing or wrong file fails now, before any data loads
        if self.name == "infinite":
            if self.min_factor <= 0 or self.min_factor >= self.constant_factor:
                raise ValueError(f"schedule.min_factor must lie in (0, constant_factor={self.constant_factor}) for "
                                 f"'infinite' (its anneal is exponential from constant_factor down to min_factor); "
                                 f"got {self.min_factor}")
        return self


@dataclass
class Schedule:
    """Factors per experience, precomputed: ``factor(exp, it)`` is one lookup."""

    tables: list[list[float]]
    name: str = "constant"
    is_constant: bool = False
    budgets: list[int] = field(default_factory=list)

    def factor(self, exp: int, it: int) -> float:
        """The multiplier of every group's base learning rate at iteration ``it`` (0-based) of
        experience ``exp`` (0-based)."""
        return self.tables[exp][it]

    def flat(self) -> list[float]:
        """All factors of the stream in order (for plots and checks)."""
        return [f for table in self.tables for f in table]


# ---------------------------------------------------------------------------------------------
# the refinement (Defazio et al. 2023, Algorithm 1)


def median_filter(norms: Sequence[float], width: float = 0.1) -> np.ndarray:
    """The median-filtered gradient norms, as in the authors' reference code: an odd window of
    ``width * len(norms)`` points, the sequence reflected past its end (so the last values are
    not pulled toward the first ones) and held at its start."""
    from scipy.ndimage import median_filter as _median

    g = np.asarray(norms, dtype=np.float64)
    size = 2 * (int(width * len(g)) // 2) + 1
    if size <= 1:
        return g.copy()
    pad = 2 * size
    return _median(np.pad(g, (0, pad), mode="reflect"), size=size, mode="nearest")[:-pad]


def refine(norms: Sequence[float], n: int, width: float = 0.1) -> np.ndarray:
    """The refined schedule of ``n`` iterations from a gradient-norm sequence (any length >= 2).

    Median-filter the norms, resample them to ``n + 1`` points ``t = 0 .. n`` (linear
    interpolation over the fraction of training done), then ``w_t = g_t^-2 * sum_{p=t+1}^{n}
    g_p^-2`` for ``t = 0 .. n-1``, divided by its maximum. Constant norms give ``1 - t/n``."""
    g = np.asarray(norms, dtype=np.float64)
    if g.ndim != 1 or len(g) < 2 or n < 1:
        raise ValueError("refine needs at least two gradient norms and n >= 1")
    if not np.all(np.isfinite(g)) or np.any(g <= 0):
        raise ValueError("gradient norms must be positive and finite")
    g = median_filter(g, width)
    g = np.interp(np.linspace(0.0, 1.0, n + 1), np.linspace(0.0, 1.0, len(g)), g)
    inv = g ** -2.0
    tail = np.cumsum(inv[::-1])[::-1]  # tail[t] = sum_{p >= t} inv[p]
    w = inv[:n] * tail[1:]
    return w / w.max()


def load_grad_norms(path: str | Path) -> tuple[list[float], list[int] | None]:
    """``grad_norms`` (and ``boundaries``, if present) from a results.json or its run folder."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise ConfigError(f"config key 'train.schedule.grad_norms_from': file not found: {p}")
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"config key 'train.schedule.grad_norms_from': could not read {p}: {exc}") from None
    norms = data.get("grad_norms") if isinstance(data, dict) else None
    if not isinstance(norms, list) or len(norms) < 2:
        raise ConfigError(f"config key 'train.schedule.grad_norms_from': {p} holds no 'grad_norms' list; "
                          "record them with train.record_grad_norms: true")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in norms):
        raise ConfigError(f"config key 'train.schedule.grad_norms_from': the grad_norms in {p} must all be "
                          "positive finite numbers")
    bounds = data.get("boundaries")
    return [float(v) for v in norms], bounds if isinstance(bounds, list) else None


# ---------------------------------------------------------------------------------------------
# building


def _warm_then(shape, n: int, warmup: int) -> np.ndarray:
    """``warmup`` iterations of ``(it + 1) / warmup``, then ``shape(u)`` for ``u = (it - W) / (n - W)``."""
    out = np.empty(n)
    out[:warmup] = np.arange(1, warmup + 1) / max(warmup, 1)
    out[warmup:] = shape(np.arange(n - warmup) / (n - warmup))
    return out


def _decay(cfg: ScheduleConfig, n: int, warmup: int, norms=None) -> np.ndarray:
    m = cfg.min_factor or 0.0
    if cfg.name == "constant":
        return _warm_then(lambda u: np.ones_like(u), n, warmup)
    if cfg.name == "cosine":
        return _warm_then(lambda u: m + (1 - m) * (1 + np.cos(math.pi * u)) / 2, n, warmup)
    if cfg.name == "linear":
        return _warm_then(lambda u: m + (1 - m) * (1 - u), n, warmup)
    if cfg.name == "wsd":
        d = cfg.decay_fraction
        return _warm_then(lambda u: np.where(u < 1 - d, 1.0, m + (1 - m) * (1 - (u - (1 - d)) / d)), n, warmup)
    if cfg.name == "refined":
        return m + (1 - m) * refine(norms, n, cfg.median_width)
    raise AssertionError(cfg.name)


def _infinite(cfg: ScheduleConfig, budgets: list[int]) -> list[np.ndarray]:
    c, m, d, W, C = cfg.constant_factor, cfg.min_factor, cfg.decay_fraction, cfg.warmup, cfg.cooldown
    total = sum(budgets)
    f = np.full(total, c)
    s = np.arange(total)
    f[:W] = (s[:W] + 1) / max(W, 1)
    cool = slice(W, W + C)
    f[cool] = c + (1 - c) * (1 + np.cos(math.pi * (s[cool] - W) / max(C, 1))) / 2
    windows = [(sum(budgets[:e]), b) for e, b in enumerate(budgets)] if cfg.over == "experience" else [(0, total)]
    for start, length in windows:
        if length == 0:  # an experience fitted in closed form: no iterations to anneal
            continue
        a = max(1, int(round(d * length)))
        if start + length - a < W + C:
            raise ConfigError(f"config key 'train.schedule': the anneal ({a} iterations, decay_fraction={d}) of the "
                              f"window starting at update {start} overlaps warm-up + cooldown ({W} + {C}); "
                              "lower schedule.decay_fraction, warmup or cooldown, or train longer")
        f[start + length - a: start + length] = c * (m / c) ** (np.arange(1, a + 1) / a)  # ends at m
    return np.split(f, np.cumsum(budgets)[:-1])


def _refined_norms(cfg: ScheduleConfig, budgets: list[int]) -> list:
    """The gradient-norm sequence for each window (one per experience, or one for the stream)."""
    if cfg.grad_norms is not None:
        norms, bounds = list(cfg.grad_norms), None
    else:
        norms, bounds = load_grad_norms(cfg.grad_norms_from)
    if cfg.over == "stream":
        return [norms]
    if cfg.grad_norms is not None:
        return [norms] * len(budgets)  # an inline sequence: the shape of every experience
    if not bounds or bounds[-1] != len(norms) or len(bounds) != len(budgets):
        raise ConfigError(
            f"config key 'train.schedule.grad_norms_from': with over: experience the source run must have the same "
            f"number of experiences ({len(budgets)}) and one gradient norm per update (its boundaries "
            f"{bounds} vs {len(norms)} norms); use over: stream, or inline schedule.grad_norms")
    starts = [0] + list(bounds[:-1])
    segments = [norms[a:b] for a, b in zip(starts, bounds)]
    for e, seg in enumerate(segments):
        if len(seg) < 2:
            raise ConfigError(f"config key 'train.schedule.grad_norms_from': experience {e + 1} of the source run "
                              f"has {len(seg)} gradient norm(s); at least 2 are needed")
    return segments


def build_schedule(cfg: ScheduleConfig | dict | None, budgets: Sequence[int]) -> Schedule:
    """The schedule for a stream whose experience ``i`` runs ``budgets[i]`` iterations."""
    if cfg is None:
        cfg = ScheduleConfig()
    elif isinstance(cfg, dict):
        from pydantic import ValidationError

        try:
            cfg = ScheduleConfig.model_validate(cfg)
        except ValidationError as exc:
            from .config import _format_validation_error

            raise ConfigError(_format_validation_error(exc, "train.schedule.")) from None
    budgets = [int(b) for b in budgets]
    if any(b < 0 for b in budgets):
        raise ValueError(f"budgets must be >= 0, got {budgets}")
    if cfg.name == "constant" and cfg.warmup == 0:
        return Schedule([[1.0] * b for b in budgets], "constant", True, budgets)
    if cfg.name == "infinite":
        if cfg.warmup + cfg.cooldown >= sum(budgets):
            raise ConfigError(f"config key 'train.schedule': warmup + cooldown ({cfg.warmup} + {cfg.cooldown}) must "
                              f"be shorter than the stream ({sum(budgets)} iterations)")
        tables = _infinite(cfg, budgets)
    else:
        windows = budgets if cfg.over == "experience" else [sum(budgets)]
        too_short = [i for i, b in enumerate(windows) if 0 < b <= cfg.warmup]
        if too_short:
            where = f"experience {too_short[0] + 1}" if cfg.over == "experience" else "the stream"
            raise ConfigError(f"config key 'train.schedule.warmup': {cfg.warmup} warm-up iterations need a longer "
                              f"budget than {where} has ({windows[too_short[0]]} iterations)")
        norms = _refined_norms(cfg, budgets) if cfg.name == "refined" else [None] * len(windows)
        parts = [_decay(cfg, b, cfg.warmup, g) if b else np.zeros(0) for b, g in zip(windows, norms)]
        tables = parts if cfg.over == "experience" else np.split(parts[0], np.cumsum(budgets)[:-1])
    return Schedule([[float(v) for v in t] for t in tables], cfg.name, False, budgets)
