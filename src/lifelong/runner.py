"""From a config to results: build the stream, model and strategy, train, write the run folder.

``run(config)`` is a pure function of the config (which holds the seed): the same config gives
the same numbers. ``run_to_folder`` adds the run folder (results.json, config.yaml,
checkpoint.pt), written to a temporary folder and renamed at the end, so an interrupted run
leaves nothing half-written and an existing folder is never overwritten.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch
import yaml

from . import __version__
from .config import RunConfig, parse_config, validate_strategy_params
from .errors import ConfigError
from .models import build_model
from .strategies import Compose, get_strategy_class
from .streams.presets import build_benchmark
from .training import train


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but no CUDA device is available; use 'auto' or 'cpu'")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"config key 'device': unknown device '{name}'; allowed: auto, cpu, cuda, cuda:N") from None


def build_strategy(cfg: RunConfig):
    params = validate_strategy_params(cfg.strategy)
    members = [get_strategy_class(n)(**p) for n, p in params.items()]
    strategy = members[0] if len(members) == 1 else Compose(*members)
    return strategy


def _resolve_lr_scale(group: dict, lr: float) -> dict:
    """A strategy's parameter group -> an optimizer's: ``lr_scale`` becomes ``lr``."""
    group = dict(group)
    if "lr_scale" in group:
        group["lr"] = lr * group.pop("lr_scale")
    return group


def make_optimizer_factory(tc):
    def make(params):
        params = [_resolve_lr_scale(g, tc.lr) if isinstance(g, dict) else g for g in params]
        if tc.optimizer == "sgd":
            return torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
        cls = torch.optim.Adam if tc.optimizer == "adam" else torch.optim.AdamW
        return cls(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)

    return make


def run(config: RunConfig | dict, monitor=None) -> dict:
    """Run one configuration; returns the results dict (also what ``results.json`` holds)."""
    cfg = config if isinstance(config, RunConfig) else parse_config(config)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    stream = build_benchmark(cfg.benchmark, cfg.seed)
    strategy = build_strategy(cfg)
    if stream.scenario not in strategy.scenarios:
        raise ConfigError(f"strategy '{strategy.name}' supports scenarios {list(strategy.scenarios)}, "
                          f"not '{stream.scenario}'")
    torch.manual_seed(cfg.seed)
    m = cfg.model
    kwargs = {k: v for k, v in (("hidden", m.hidden), ("channels", m.channels)) if v is not None}
    model = build_model(m.name, stream.input_shape, stream.n_classes, stream.scenario, m.head, **kwargs).to(device)
    strategy.setup(model, device, cfg.seed)
    t0 = time.perf_counter()
    result = train(stream.to(device), strategy, make_optimizer_factory(cfg.train), batch_size=cfg.train.batch_size,
                   iterations=cfg.train.iterations, epochs=cfg.train.epochs, seed=cfg.seed,
                   reset_optimizer=cfg.train.reset_optimizer, eval_batch_size=cfg.eval.batch_size,
                   eval_every=cfg.eval.every, eval_subsample=cfg.eval.subsample, eval_split=cfg.eval.split,
                   monitor=monitor)
    wall = time.perf_counter() - t0
    out = {
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "benchmark": stream.name,
        "scenario": stream.scenario,
        "strategy": repr(strategy),
        "experiences": [{"index": e.index, "task_id": e.task_id, "classes": e.classes, "name": e.name,
                         "n_train": len(e.train), "n_valid": len(e.valid), "n_test": len(e.test)}
                        for e in stream],
        "accuracy_matrix": result.accuracy_matrix,
        "task_aware_accuracy_matrix": result.task_aware_matrix,
        "task_agnostic_accuracy_matrix": result.task_agnostic_matrix,
        "initial_accuracy": result.initial_aware if result.task_aware else result.initial_agnostic,
        **result.metrics(),
        "train_loss": result.losses,
        "boundaries": result.boundaries,
        "continual": _continual_summary(result, cfg),
        "wall_time_s": wall,
        "train_time_s": result.train_time_s,
        "eval_time_s": result.eval_time_s,
        "versions": {"lifelong": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "device": str(device),
    }
    out["_state"] = {"model": model.state_dict(), "strategy": strategy.extra_state()}
    out["_curve"] = result.curve
    return out


def _continual_summary(result, cfg) -> dict | None:
    if result.curve is None:
        return None
    from .continual_metrics import summary

    steps, acc = result.curve
    out = summary(steps, acc, result.boundaries)
    out.update(eval_every=cfg.eval.every, subsample=cfg.eval.subsample, eval_time_s=result.continual_eval_time_s)
    return out


def write_curve(path: Path, curve) -> None:
    """``curves.csv``: step, experience (being trained), eval_experience, accuracy."""
    import numpy as np

    steps, acc = curve
    with open(path, "w") as f:
        f.write("step,experience,eval_experience,accuracy\n")
        for s, row in zip(steps, acc):
            seen = np.flatnonzero(~np.isnan(row))
            cur = int(seen.max()) if len(seen) else 0
            for j in seen:
                f.write(f"{int(s)},{cur},{int(j)},{row[j]:.6f}\n")


def run_to_folder(config: RunConfig | dict, out_dir: str | Path, monitor=None) -> dict:
    """Run and write ``out_dir``; refuses to touch an existing non-empty folder.

    Everything is written into a temporary sibling folder first and renamed at the end."""
    from .tracking import MLflowMonitor, MultiMonitor, TensorBoardMonitor

    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    cfg = config if isinstance(config, RunConfig) else parse_config(config)
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tr = cfg.tracking
        monitors = MultiMonitor(
            monitor,
            TensorBoardMonitor(tmp / "tensorboard", tr.every, cfg.to_dict()) if tr.tensorboard else None,
            MLflowMonitor(tr.mlflow_uri, run_name=out_dir.name, config=cfg.to_dict(), every=tr.every)
            if tr.mlflow else None)
        with monitors:
            res = run(cfg, monitors)
            state, curve = res.pop("_state"), res.pop("_curve")
            (tmp / "results.json").write_text(json.dumps(res, indent=2))
            monitors.close(res, results_path=tmp / "results.json")
        (tmp / "config.yaml").write_text(yaml.safe_dump(res["config"], sort_keys=False))
        torch.save(state, tmp / "checkpoint.pt")
        if curve is not None:
            write_curve(tmp / "curves.csv", curve)
        check_out_dir(out_dir)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"run folder {out_dir} already exists and is not empty; nothing was overwritten. "
                          "Choose another --out, or remove it yourself")


def run_config_dict(cfg: dict) -> dict:
    """Top-level (picklable) entry for executors: a config dict -> results without state."""
    res = run(cfg)
    res.pop("_state", None)
    res.pop("_curve", None)
    return res
