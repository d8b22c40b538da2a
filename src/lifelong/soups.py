"""Sparse Model Soups (SMS): prune-retrain cycles whose retrains share one mask and are averaged.

Zimmer, Spiegel & Pokutta (2024), "Sparse Model Soups: A Recipe for Improved Pruning via Model
Averaging" (ICLR); reference code github.com/ZIB-IOL/SMS. Iterative magnitude pruning (IMP)
alternates pruning and retraining; SMS retrains ``m`` copies of each pruned model, differing only
in batch order (``vary="seed"``, the reference's ``pruned_seed``) or weight decay, and averages
them. Copies pruned from one model share its mask, so their average is exactly as sparse; each
cycle starts from the previous cycle's soup.

Here a "model" is a whole continual run (any method: finetune, ER, EWC, ...), so SMS works at
the level of runs and its retrains go through the run executor (sequential, process, Ray):

- cycle 0: the dense run of the user's config;
- cycle k = 1..K: the previous soup is pruned by global magnitude (every ``nn.Linear`` /
  ``nn.Conv2d`` weight of the model, heads included; biases and norms dense;
  :meth:`lifelong.sparse.SparseMasks.prune_to`) to sparsity ``s_k`` among the weights its mask
  still holds; ``m`` retrains, each the same continual run started from the soup's weights
  (``model.init_from``) with the mask held fixed (``model.mask``: weights outside it exactly 0
  throughout), differing in ``train.seed`` (batch order and the method's draws; the stream,
  which follows ``seed``, stays the same) or in ``train.weight_decay``; soup_k = the uniform
  average of the ``m`` final models, evaluated on every experience's test split.
- IMP baseline: the same chain with one retrain per cycle (the first retrain's setting), each
  cycle pruning its own previous model. Its cycle 1 is the first retrain of the soup's cycle 1
  (same start, mask and setting), so it is not run twice.
- "best single retrain": the best of a cycle's ``m`` retrains by their test accuracy (an
  optimistic choice: the reference's greedy soup selects on validation data).

Defaults (reference ``main.py``): ``sparsity = 0.9`` reached geometrically, each cycle removing
the same fraction ``1 - (1 - S)^(1/K)`` of the remaining weights, so ``s_k = 1 - (1 - S)^(k/K)``
(a list of sparsities may be given instead); uniform soup (``UniformEnsembling``, the default;
greedy soup not implemented); ``vary = "seed"`` (``ensemble_by='pruned_seed'``); ``m = 3``
retrains (the paper's sketch of one phase, its Figure 2; the code's ``n_splits_total`` defaults
to 2) and ``K = 3`` cycles (our choice; the code's ``n_phases`` defaults to 1).

Where we differ:
- A retrain is the full continual run of the config (every experience in order, the method's
  own memory and penalties starting empty), not a few epochs on one dataset; its learning rate
  is the config's (and its ``train.schedule``), not the reference's linear decay to 0 (``LLR``):
  set ``train.schedule`` for that.
- Batch-norm statistics are averaged with the weights, not recalibrated on training data after
  souping (the reference's ``bn_recalibration_frac``); the built-in models have no batch norm.
- Refused (one message): a method without gradient steps or trained on stored features, one
  whose predictions use learned state beyond the weights (it overrides ``predict``: iCaRL's
  exemplar means, an isolation method's task masks, a hypernetwork), and one with masks of its
  own (sparse training, PackNet): averaging their weights would not average the model.
- With ``vary="weight_decay"`` every retrain keeps the run's seed; the default decays are
  ``0, 1e-5, 1e-4, ...`` (one per retrain) unless given.

Output folder (``out_dir``, refused if it exists and is not empty): ``dense.pt``,
``cycle<k>/{mask,retrain<i>,soup,imp,imp_mask}.pt``, ``soups.json`` (written after every cycle)
and ``soups.md`` (the table).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Sequence

import torch

from .config import RunConfig, parse_config
from .errors import ConfigError

VARY = ("seed", "weight_decay")


# --------------------------------------------------------------------------- settings
def geometric_sparsities(target: float, cycles: int) -> list[float]:
    """The reference's schedule: each cycle prunes ``1 - (1 - target)^(1/cycles)`` of the weights
    left, so after cycle k the sparsity is ``1 - (1 - target)^(k/cycles)``."""
    check_sparsity(target, "--sparsity")
    if not (isinstance(cycles, int) and cycles >= 1):
        raise ConfigError(f"--cycles must be an integer >= 1, got {cycles!r}")
    return [1.0 - (1.0 - target) ** (k / cycles) for k in range(1, cycles + 1)]


def check_sparsity(value, what: str) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1
    if not ok:  # NaN fails too
        raise ConfigError(f"{what} must be a number in (0, 1), got {value!r}")


def check_schedule(sparsities: Sequence[float]) -> list[float]:
    out = [float(s) for s in sparsities]
    if not out:
        raise ConfigError("--sparsities: give at least one sparsity")
    for s in out:
        check_sparsity(s, "every sparsity of --sparsities")
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ConfigError(f"--sparsities must increase from cycle to cycle (pruning never grows), got {out}")
    return out


def retrain_values(vary: str, retrains: int, seed: int, weight_decays: Sequence[float] | None = None) -> list:
    """What differs between the retrains: ``train.seed`` values ``seed + 1 .. seed + m`` (the
    reference's ``seed + split_val``), or weight decays."""
    if vary not in VARY:
        raise ConfigError(f"--vary must be one of {', '.join(VARY)}, got {vary!r}")
    if not (isinstance(retrains, int) and retrains >= 1):
        raise ConfigError(f"--retrains must be an integer >= 1, got {retrains!r}")
    if vary == "seed":
        if weight_decays:
            raise ConfigError("--weight-decays is for --vary weight_decay")
        return [seed + i + 1 for i in range(retrains)]
    wds = list(weight_decays) if weight_decays else [0.0] + [10.0 ** (i - 5) for i in range(retrains - 1)]
    if len(wds) != retrains:
        raise ConfigError(f"--weight-decays gives {len(wds)} values for {retrains} retrains; give one per retrain")
    if any(not (w >= 0 and w < float("inf")) for w in wds):
        raise ConfigError(f"every weight decay must be a finite number >= 0, got {wds}")
    return [float(w) for w in wds]


def check_soupable(strategy) -> None:
    """Refuse, with one message, a method whose model averaging would not average the model."""
    from .strategies.base import _overrides

    for m in getattr(strategy, "members", None) or [strategy]:
        why = None
        if m.gradient_free or not m.feeds_inputs:
            why = "learns without gradient steps on the stream's inputs (closed form or stored features)"
        elif _overrides(m, "predict"):
            why = ("predicts with learned state beyond the model's weights (it owns predict), which averaging "
                   "the retrains' weights cannot combine")
        elif hasattr(m, "masks_") or callable(getattr(m, "sparsity_masks", None)):
            why = "keeps masks of its own, which the soup's fixed mask would contradict"
        if why:
            raise ConfigError(f"sparse model soups: strategy '{m.name}' {why}; choose a method such as finetune, "
                              "er, ewc, lwf or der")


# --------------------------------------------------------------------------- the pieces
def _train_and_save(item: dict) -> dict:
    """Executor entry (top level, picklable): run ``item["config"]``, save the final model's
    state dict to ``item["state_path"]``, return the results without the state."""
    from .runner import run

    res = run(item["config"])
    torch.save(res.pop("_state")["model"], item["state_path"])
    res.pop("_curve", None)
    return res


def average_states(states: Sequence[dict]) -> dict:
    """The uniform soup: every floating-point entry averaged; any other entry (an incremental
    head's active outputs, a task head's class lists, counters) must be the same in all, and is
    taken from the first."""
    if not states:
        raise ValueError("no state dicts to average")
    keys = list(states[0])
    out = {}
    for k in keys:
        vals = [s[k] for s in states]
        if torch.is_tensor(vals[0]) and vals[0].is_floating_point():
            out[k] = torch.stack([v.float() for v in vals]).mean(0).to(vals[0].dtype)
        else:
            out[k] = copy.deepcopy(vals[0])
    return out


class _Models:
    """The config's stream and fresh models, to prune and evaluate saved states."""

    def __init__(self, cfg: RunConfig):
        from .runner import resolve_device
        from .streams.presets import build_benchmark

        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.stream = build_benchmark(cfg.benchmark, cfg.seed).to(self.device)
        self.split = "valid" if cfg.eval.selection else "test"

    def model(self, state: dict | None = None):
        from .models import build_model

        m = self.cfg.model
        kwargs = {k: v for k, v in (("hidden", m.hidden), ("channels", m.channels)) if v is not None}
        model = build_model(m.name, self.stream.input_shape, self.stream.n_classes, self.stream.scenario, m.head,
                            **kwargs)
        if state is not None:
            model.load_state_dict(state)  # a task head's extra state creates the head before its weights load
        return model.to(self.device)

    def accuracy(self, state: dict) -> list[float]:
        """Final accuracy on every experience (the headline view: task-aware in task-IL), as the
        last row of a run's accuracy matrix."""
        from .evaluation import evaluate
        from .strategies.base import Strategy

        task = self.stream.scenario == "task"
        s = Strategy().setup(self.model(state), self.device, self.cfg.seed)
        agnostic, aware = evaluate(s, self.stream.experiences, self.cfg.eval.batch_size, split=self.split,
                                   task_aware_predict=task)
        return aware if task else agnostic

    def prune(self, state: dict, previous: dict | None, sparsity: float) -> dict[str, torch.Tensor]:
        """Global magnitude pruning of ``state`` to ``sparsity`` over every Linear/Conv2d weight,
        within ``previous`` ({parameter name: mask}, None: dense). Returns the new masks."""
        from .sparse import SparseMasks

        model = self.model(state)
        masks = SparseMasks(model, 0.0, "uniform")  # all active
        if previous is not None:
            masks.load_state_dict({"masks": {k: previous[f"{k}.weight"] for k in masks.masks}})
        masks.prune_to(1.0 - sparsity, "magnitude", "global")
        return {f"{k}.weight": m.cpu().clone() for k, m in masks.masks.items()}

    def counts(self, state: dict, masks: dict | None) -> dict:
        from .sparse import count_parameters

        model = self.model(state)
        total, nonzero = count_parameters(model, masks)
        return {"total": total, "nonzero": nonzero}


def _mean(xs):
    return sum(xs) / len(xs)


def _entry(per_experience: list[float]) -> dict:
    return {"accuracy": _mean(per_experience), "per_experience": per_experience}


# --------------------------------------------------------------------------- the cycles
def sparse_model_soups(config: dict | RunConfig, out_dir: str | Path, *, cycles: int = 3, retrains: int = 3,
                       sparsity: float = 0.9, sparsities: Sequence[float] | None = None, vary: str = "seed",
                       weight_decays: Sequence[float] | None = None, executor="sequential", workers: int = 2,
                       on_cycle: Callable[[dict], None] | None = None) -> dict:
    """Run SMS (module docstring) on ``config``; returns (and writes to ``out_dir/soups.json``)
    the results: ``dense``, and per cycle the sparsity, the soup's accuracy, every retrain's,
    the best and mean single retrain, IMP's, and the parameter counts. ``on_cycle(row)`` is
    called as each cycle (0: dense) finishes."""
    from .executor import get_executor
    from .runner import build_strategy, check_out_dir

    cfg = config if isinstance(config, RunConfig) else parse_config(config)
    base = cfg.to_dict()
    if base["model"].get("init_from") or base["model"].get("mask"):
        raise ConfigError("sparse model soups sets model.init_from and model.mask itself; remove them from the config")
    schedule = check_schedule(sparsities) if sparsities is not None else geometric_sparsities(sparsity, cycles)
    values = retrain_values(vary, retrains, cfg.seed, weight_decays)
    out = Path(out_dir)
    check_out_dir(out)
    check_soupable(build_strategy(cfg))
    models = _Models(cfg)
    probe = build_strategy(cfg)  # masks a method creates in setup (GraNet, SparCL) show only then
    probe.setup(models.model(), models.device, cfg.seed)
    check_soupable(probe)
    ex = get_executor(executor, workers)
    getattr(ex, "connect", lambda: None)()  # one pool (or Ray) for every cycle
    try:
        out.mkdir(parents=True, exist_ok=True)
        return _cycles(ex, out, base, schedule, values, vary, retrains, models, on_cycle)
    finally:
        getattr(ex, "close", lambda: None)()


def _cycles(ex, out: Path, base: dict, schedule: list[float], values: list, vary: str, retrains: int,
            models: _Models, on_cycle) -> dict:
    from .io import atomic_write_json, atomic_write_text

    def retrain_config(value, init: Path, mask: Path) -> dict:
        c = copy.deepcopy(base)
        c["model"]["init_from"], c["model"]["mask"] = str(init.resolve()), str(mask.resolve())
        c["train"]["seed" if vary == "seed" else "weight_decay"] = value
        return parse_config(c).to_dict()  # validated (the files exist now)

    results = {"method": "sparse-model-soups", "paper": "Zimmer, Spiegel & Pokutta 2024 (ICLR)",
               "config": base, "cycles": len(schedule), "retrains": retrains, "vary": vary, "values": values,
               "schedule": schedule, "split": models.split}
    dense_path = out / "dense.pt"
    (dense_res,) = list(ex.map(_train_and_save, [{"config": base, "state_path": str(dense_path.resolve())}]))
    dense = torch.load(dense_path, weights_only=True)
    per = dense_res["accuracy_matrix"][-1]
    results["dense"] = dict(_entry(per), parameters=models.counts(dense, None))
    rows = [{"cycle": 0, "sparsity": 0.0, "soup": results["dense"]["accuracy"], "best": None, "mean": None,
             "imp": results["dense"]["accuracy"], "nonzero": results["dense"]["parameters"]["nonzero"],
             "total": results["dense"]["parameters"]["total"]}]
    results["rows"], results["cycle_results"] = rows, []
    if on_cycle:
        on_cycle(rows[0])
    soup, soup_masks, imp, imp_masks = dense, None, dense, None
    soup_path = imp_path = dense_path
    for k, s in enumerate(schedule, start=1):
        folder = out / f"cycle{k}"
        folder.mkdir()
        masks = models.prune(soup, soup_masks, s)
        torch.save(masks, folder / "mask.pt")
        items = [{"config": retrain_config(v, soup_path, folder / "mask.pt"),
                  "state_path": str((folder / f"retrain{i}.pt").resolve())} for i, v in enumerate(values)]
        if k > 1:  # IMP's own chain (its cycle 1 is the first retrain)
            imp_masks = models.prune(imp, imp_masks, s)
            torch.save(imp_masks, folder / "imp_mask.pt")
            items.append({"config": retrain_config(values[0], imp_path, folder / "imp_mask.pt"),
                          "state_path": str((folder / "imp.pt").resolve())})
        runs = list(ex.map(_train_and_save, items))
        states = [torch.load(it["state_path"], weights_only=True) for it in items[:retrains]]
        soup = average_states(states)
        soup_path = folder / "soup.pt"
        torch.save(soup, soup_path)
        soup_masks = masks
        if k == 1:
            imp_masks, imp_path, imp_res = masks, Path(items[0]["state_path"]), runs[0]
            imp = states[0]
        else:
            imp_path, imp_res = folder / "imp.pt", runs[-1]
            imp = torch.load(imp_path, weights_only=True)
        retrain_rows = [dict(_entry(r["accuracy_matrix"][-1]), value=v) for r, v in zip(runs, values)]
        soup_entry = _entry(models.accuracy(soup))
        counts = models.counts(soup, masks)
        cycle = {"cycle": k, "sparsity": s, "measured_sparsity": 1 - sum(int(m.sum()) for m in masks.values())
                 / sum(m.numel() for m in masks.values()), "parameters": counts, "soup": soup_entry,
                 "retrains": retrain_rows, "best_retrain": max(r["accuracy"] for r in retrain_rows),
                 "mean_retrain": _mean([r["accuracy"] for r in retrain_rows]),
                 "imp": _entry(imp_res["accuracy_matrix"][-1])}
        results["cycle_results"].append(cycle)
        rows.append({"cycle": k, "sparsity": s, "soup": soup_entry["accuracy"], "best": cycle["best_retrain"],
                     "mean": cycle["mean_retrain"], "imp": cycle["imp"]["accuracy"], "nonzero": counts["nonzero"],
                     "total": counts["total"]})
        atomic_write_json(out / "soups.json", results)
        if on_cycle:
            on_cycle(rows[-1])
    atomic_write_json(out / "soups.json", results)
    atomic_write_text(out / "soups.md", table_markdown(results))
    return results


def table_markdown(results: dict) -> str:
    """One row per cycle: sparsity, soup, best and mean single retrain, IMP, nonzero parameters."""
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
    lines = [f"Sparse model soups: m = {results['retrains']} retrains per cycle (vary {results['vary']}), "
             f"accuracy on the {results['split']} splits after the last experience (%)", "",
             "| cycle | sparsity | soup | best retrain | mean retrain | IMP | nonzero / total parameters |",
             "|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['cycle']} | {100 * r['sparsity']:.1f}% | {pct(r['soup'])} | {pct(r['best'])} | "
                     f"{pct(r['mean'])} | {pct(r['imp'])} | {r['nonzero']} / {r['total']} |")
    return "\n".join(lines) + "\n"


__all__ = ["VARY", "average_states", "check_soupable", "geometric_sparsities", "retrain_values",
           "sparse_model_soups", "table_markdown"]
