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

Output folder (``out_dir``): ``soup_spec.json`` (what defines the soup: the validated config,
the schedule, the retrain values, ``vary``, ``retrains``; written first), ``dense.pt``,
``cycle<k>/{mask,retrain<i>,soup,imp,imp_mask}.pt``, each with a ``.json`` next to it (a run's
results without its state, a mask's counts, a soup's accuracy and parameter counts),
``soups.json`` (written after every cycle) and ``soups.md`` (the table).

Resume: running the same soup into the same folder (same ``soup_spec.json``) continues it. A
piece is finished when its ``.pt`` and its ``.json`` both exist and read back; each is written
atomically (a temporary sibling renamed over it), the ``.json`` after the ``.pt``. A finished
piece is loaded, not computed again; any other (missing, a ``.pt`` without its ``.json``, a
truncated file) is computed again, and a retrain interrupted mid-run starts again from its
beginning (its run checkpoints are not kept). Every number of ``soups.json`` is read back from
the pieces' files, so a resumed soup's ``soups.json`` is identical to an uninterrupted one's
(CPU runs are deterministic; on a GPU, as deterministic as the runs). A folder holding another
soup (a different ``soup_spec.json``) or anything else is refused, untouched; one process at a
time works in a folder (a lock on ``soup_spec.json``). A soup stopped before anything was
computed (a dense run that diverges) leaves the folder as it was.
"""
from __future__ import annotations

import contextlib
import copy
import json
import pickle
from pathlib import Path
from typing import Callable, Sequence

import torch

from .config import RunConfig, parse_config
from .errors import ConfigError
from .runfolder import EXECUTION_KEYS

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
    state dict to ``item["state_path"]`` and then the results without the state next to it
    (``.json``), both atomically: together they are a finished piece. Returns the results."""
    from .runner import run

    res = run(item["config"])
    state = res.pop("_state")["model"]
    res.pop("_curve", None)
    _save_piece(Path(item["state_path"]), state, res)
    return res


def _save_piece(pt: Path, state, info: dict) -> None:
    """``pt`` and then ``pt.json``, each written atomically (a temporary sibling renamed over
    it); the old ``.json`` goes first, so a ``.json`` always belongs to the ``.pt`` before it."""
    from .io import atomic_torch_save, atomic_write_json

    pt.with_suffix(".json").unlink(missing_ok=True)
    atomic_torch_save(pt, state)
    atomic_write_json(pt.with_suffix(".json"), info)


def _load_piece(pt: Path):
    """``(state, info)`` of a finished piece, or None when its ``.pt`` or ``.json`` is missing or
    cannot be read (a half-written or truncated file): that piece is computed again."""
    js = pt.with_suffix(".json")
    if not (pt.is_file() and js.is_file()):
        return None
    try:
        return torch.load(pt, weights_only=True), json.loads(js.read_text())
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError):
        return None


def _piece(pt: Path, make: Callable[[], tuple]) -> tuple:
    """The finished piece at ``pt``, or ``make()``'s ``(state, info)`` saved there. Either way
    ``info`` is what its ``.json`` reads back, so a resumed soup sees the same numbers."""
    done = _load_piece(pt)
    if done is None:
        state, info = make()
        _save_piece(pt, state, info)
        done = state, json.loads(pt.with_suffix(".json").read_text())
    return done


def _runs(ex, items: list[dict]) -> list[tuple]:
    """``(state, results)`` of each run: finished pieces are loaded, the others run first
    (together, through the executor) from their beginning."""
    done = [_load_piece(Path(it["state_path"])) for it in items]
    for _ in ex.map(_train_and_save, [it for it, d in zip(items, done) if d is None]):
        pass
    out = []
    for it, d in zip(items, done):
        d = d or _load_piece(Path(it["state_path"]))
        if d is None:
            raise RuntimeError(f"the run saving {it['state_path']} finished but its files cannot be read back")
        out.append(d)
    return out


# --------------------------------------------------------------------------- the folder
SPEC = "soup_spec.json"


def _differences(a, b, path: str = "") -> list[str]:
    """The dotted keys where two specs differ (``config.train.lr``, ``retrains``)."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else [path or "the whole file"]
    out = []
    for k in sorted(set(a) | set(b)):
        out += _differences(a.get(k), b.get(k), f"{path}.{k}" if path else k)
    return out


def _numbers_of(spec):
    """What a spec's results depend on: as run folders do, the config's execution keys (device,
    threads, tracking, checkpoint) are left out, so a soup resumes on another device."""
    if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict):
        return spec
    return dict(spec, config={k: v for k, v in spec["config"].items() if k not in EXECUTION_KEYS})


def check_soup_folder(out: Path, spec: dict) -> bool:
    """True when ``out`` holds this soup (its ``soup_spec.json`` equals ``spec``): resume it;
    False when it is missing or empty: start. Anything else is refused, untouched."""
    if not out.exists():
        return False
    if out.is_dir():
        entries = [p for p in out.iterdir() if not p.name.startswith(f".{SPEC}.tmp-")]  # killed writing the spec
        if not entries:
            return False
        try:
            stored = json.loads((out / SPEC).read_text())
        except (OSError, ValueError):
            stored = None
        if _numbers_of(stored) == _numbers_of(spec):
            return True
        if isinstance(stored, dict) and stored.get("method") == spec["method"]:
            raise ConfigError(f"soup folder {out} holds another soup (its {SPEC} differs in "
                              f"{', '.join(_differences(_numbers_of(stored), _numbers_of(spec)))}); nothing was "
                              "overwritten. Choose another "
                              "--out, remove it yourself, or resume it with the settings that made it")
    raise ConfigError(f"run folder {out} already exists and is not empty (and is not a soup's folder: no {SPEC}); "
                      "nothing was overwritten. Choose another --out, or remove it yourself")


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
    from .io import atomic_write_json, strict_json_dumps
    from .runner import build_strategy

    cfg = config if isinstance(config, RunConfig) else parse_config(config)
    base = cfg.to_dict()
    if base["model"].get("init_from") or base["model"].get("mask"):
        raise ConfigError("sparse model soups sets model.init_from and model.mask itself; remove them from the config")
    schedule = check_schedule(sparsities) if sparsities is not None else geometric_sparsities(sparsity, cycles)
    values = retrain_values(vary, retrains, cfg.seed, weight_decays)
    out = Path(out_dir)
    spec = json.loads(strict_json_dumps({"method": "sparse-model-soups", "config": base, "schedule": schedule,
                                         "values": values, "vary": vary, "retrains": retrains}))
    resume = check_soup_folder(out, spec)
    check_soupable(build_strategy(cfg))
    models = _Models(cfg)
    probe = build_strategy(cfg)  # masks a method creates in setup (GraNet, SparCL) show only then
    probe.setup(models.model(), models.device, cfg.seed)
    check_soupable(probe)
    ex = get_executor(executor, workers)
    getattr(ex, "connect", lambda: None)()  # one pool (or Ray) for every cycle
    created = not out.exists()
    try:
        if not resume:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / SPEC, spec)
        with _locked(out):
            for tmp in out.rglob(".*.tmp-*"):  # half-written files of a killed run (we hold the lock)
                tmp.unlink(missing_ok=True)
            try:
                return _cycles(ex, out, base, schedule, values, vary, retrains, models, on_cycle)
            except BaseException:
                if not resume and [p.name for p in out.iterdir()] == [SPEC]:  # nothing computed (a diverged
                    (out / SPEC).unlink()  # dense run): leave the folder as it was, free for a corrected soup
                    if created:
                        out.rmdir()
                raise
    finally:
        getattr(ex, "close", lambda: None)()


@contextlib.contextmanager
def _locked(out: Path):
    """One process at a time in a soup folder: a lock on its spec, released when the process
    ends, even by kill -9."""
    from .runfolder import Lock, RunFolderError

    try:
        lock = Lock(out / SPEC).__enter__()
    except RunFolderError:
        raise RunFolderError(f"soup folder {out} is being written by another process right now; wait for it, "
                             "or choose another --out") from None
    try:
        yield
    finally:
        lock.__exit__()


def _cycles(ex, out: Path, base: dict, schedule: list[float], values: list, vary: str, retrains: int,
            models: _Models, on_cycle) -> dict:
    """The dense run and the cycles. Every piece (``X.pt`` with its ``X.json``) already finished
    in ``out`` is loaded instead of computed."""
    from .io import atomic_write_json, atomic_write_text

    def retrain_config(value, init: Path, mask: Path) -> dict:
        c = copy.deepcopy(base)
        c["model"]["init_from"], c["model"]["mask"] = str(init.resolve()), str(mask.resolve())
        c["train"]["seed" if vary == "seed" else "weight_decay"] = value
        return parse_config(c).to_dict()  # validated (the files exist now)

    def pruned(path: Path, state: dict, previous: dict | None, s: float) -> tuple[dict, dict]:
        def make():  # the masks and their counts
            masks = models.prune(state, previous, s)
            return masks, {"sparsity": s, "kept": sum(int(m.sum()) for m in masks.values()),
                           "weights": sum(m.numel() for m in masks.values())}
        return _piece(path, make)

    results = {"method": "sparse-model-soups", "paper": "Zimmer, Spiegel & Pokutta 2024 (ICLR)",
               "config": base, "cycles": len(schedule), "retrains": retrains, "vary": vary, "values": values,
               "schedule": schedule, "split": models.split}
    dense_path = out / "dense.pt"
    ((dense, dense_res),) = _runs(ex, [{"config": base, "state_path": str(dense_path.resolve())}])
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
        folder.mkdir(exist_ok=True)
        masks, mask_info = pruned(folder / "mask.pt", soup, soup_masks, s)
        items = [{"config": retrain_config(v, soup_path, folder / "mask.pt"),
                  "state_path": str((folder / f"retrain{i}.pt").resolve())} for i, v in enumerate(values)]
        if k > 1:  # IMP's own chain (its cycle 1 is the first retrain)
            imp_masks, _ = pruned(folder / "imp_mask.pt", imp, imp_masks, s)
            items.append({"config": retrain_config(values[0], imp_path, folder / "imp_mask.pt"),
                          "state_path": str((folder / "imp.pt").resolve())})
        done = _runs(ex, items)
        runs = [r for _, r in done]

        def make_soup():
            soup = average_states([st for st, _ in done[:retrains]])
            return soup, {"soup": _entry(models.accuracy(soup)), "parameters": models.counts(soup, masks)}

        soup_path = folder / "soup.pt"
        soup, soup_info = _piece(soup_path, make_soup)
        soup_masks = masks
        last = 0 if k == 1 else -1  # IMP's model: the first retrain in cycle 1, its own run after
        (imp, imp_res), imp_path = done[last], Path(items[last]["state_path"])
        if k == 1:
            imp_masks = masks
        retrain_rows = [dict(_entry(r["accuracy_matrix"][-1]), value=v) for r, v in zip(runs, values)]
        soup_entry, counts = soup_info["soup"], soup_info["parameters"]
        cycle = {"cycle": k, "sparsity": s, "measured_sparsity": 1 - mask_info["kept"] / mask_info["weights"],
                 "parameters": counts, "soup": soup_entry, "retrains": retrain_rows,
                 "best_retrain": max(r["accuracy"] for r in retrain_rows),
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
