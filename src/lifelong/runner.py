"""From a config to results: build the stream, model and strategy, train, write the run folder.

``run(config)`` is a pure function of the config (which holds the seed): the same config gives
the same numbers, and a run resumed from a checkpoint gives the numbers of a run never
interrupted. ``run_to_folder`` adds the run folder (results.json, config.yaml, checkpoint.pt,
curves.csv): checkpointed while it runs, resumed when rerun, results.json written last; an
existing folder of anything else is never overwritten (:mod:`lifelong.runfolder`).
"""
from __future__ import annotations

import platform
import shutil
import time
from pathlib import Path

import torch
import yaml

from . import __version__
from .config import (RunConfig, check_compile, check_eval_scenario, check_passes, parse_config,
                     validate_strategy_params)
from .errors import ConfigError
from .models import build_model
from .sparse import run_costs, strategy_flops, strategy_masks, strategy_samples
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
    members = [get_strategy_class(n)(**p) for n, p in validate_strategy_params(cfg.strategy)]
    init_from, mask = getattr(cfg.model, "init_from", None), getattr(cfg.model, "mask", None)  # TTA's model has neither
    if init_from or mask:  # saved weights / a fixed mask: a member ahead of the method
        from .strategies._start_from import StartFrom

        composed = Compose(StartFrom(init_from, mask), *members)
        composed.name = "+".join(m.name for m in members)
        return composed
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


def run(config: RunConfig | dict, monitor=None, checkpointer=None, resume: dict | None = None) -> dict:
    """Run one configuration; returns the results dict (also what ``results.json`` holds).
    ``checkpointer`` / ``resume``: see :func:`lifelong.training.train`."""
    cfg = config if isinstance(config, RunConfig) else parse_config(config)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    strategy = build_strategy(cfg)  # before any data loads: a bad composition is refused at once
    check_strategy(cfg, strategy)
    stream = run_stream(cfg)
    check_stream(cfg, strategy, stream)
    task_free, selection = bool(cfg.online and cfg.online.task_free), bool(cfg.eval.selection)
    torch.manual_seed(cfg.seed)
    m = cfg.model
    kwargs = {k: v for k, v in (("hidden", m.hidden), ("channels", m.channels)) if v is not None}
    model = build_model(m.name, stream.input_shape, stream.n_classes, stream.scenario, m.head, **kwargs).to(device)
    if cfg.train.compile:
        model.backbone.compile(backend=cfg.train.compile)  # in place: state_dict keys unchanged
    tc = cfg.train
    train_seed = cfg.seed if tc.seed is None else tc.seed  # batch order and the method's draws
    strategy.setup(model, device, train_seed)
    if cfg.model.mask:
        from .strategies._start_from import refuse_own_masks

        refuse_own_masks(strategy)
    t0 = time.perf_counter()
    batch_size = cfg.online.batch_size if cfg.online else tc.batch_size
    result = train(stream.to(device), strategy, make_optimizer_factory(tc), batch_size=batch_size,
                   iterations=tc.iterations, epochs=tc.epochs, seed=train_seed,
                   reset_optimizer=tc.reset_optimizer, eval_batch_size=cfg.eval.batch_size,
                   eval_every=cfg.eval.every, eval_subsample=cfg.eval.subsample,
                   eval_split="valid" if selection else cfg.eval.split, matrix_split="valid" if selection else "test",
                   monitor=monitor, schedule=build_run_schedule(tc, stream, batch_size), grad_clip_norm=tc.grad_clip_norm,
                   precision=tc.precision or "fp32", record_grad_norms=bool(tc.record_grad_norms),
                   checkpointer=checkpointer, resume=resume, task_free=task_free,
                   online_accuracy=bool(cfg.online and cfg.online.accuracy), eval_agnostic=cfg.eval.task_agnostic)
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
        "evaluated_on": "valid" if selection else "test",  # the split of the accuracy matrix
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
    # parameters {total, nonzero} and flops {inference_per_sample, training} (lifelong.sparse)
    out.update(run_costs(model, stream.input_shape, result.samples_trained + strategy_samples(strategy),
                         strategy_masks(strategy),
                         task=stream.experiences[-1].task_id if stream.scenario == "task" else None,
                         counted=strategy_flops(strategy)))
    for m in getattr(strategy, "members", None) or [strategy]:  # a method's own count of what it trains and
        if callable(getattr(m, "parameter_count", None)):  # stores, when not the model's parameters (hnet: the
            out["parameters"].update(m.parameter_count())  # hypernetwork and embeddings; "trainable")
            break
    if tc.record_grad_norms:
        out["grad_norms"] = result.grad_norms
    if result.online:  # the accuracy on each incoming batch before training on it. Undefined (NaN, null in
        # results.json) for an experience where the strategy trained on none of the incoming samples (a memory,
        # stored features, a closed-form fit), and then for the run: a part of the stream is not the whole
        out["online_accuracy"], out["online_accuracy_per_experience"] = online_summary(result.online)
    if checkpointer is not None:  # execution facts, like the timings (they differ between resumed runs)
        out["checkpoints"] = {"saved": checkpointer.saves, "time_s": checkpointer.time_s,
                              "resumed_from": None if resume is None else list(resume["next"])}
    out["_state"] = {"model": model.state_dict(), "strategy": strategy.extra_state()}
    out["_curve"] = result.curve
    return out


def check_strategy(cfg: RunConfig, strategy) -> None:
    """What the built strategy refuses of the config, before any data loads."""
    if cfg.online and cfg.online.task_free and not strategy.supports_task_free:
        raise ConfigError(f"strategy '{strategy.name}' needs experience boundaries (it acts in before_experience, "
                          f"train_data or after_experience), so it cannot run with online.task_free: true")
    check_compile(cfg, strategy.name, strategy.compile_refusal)
    check_passes(cfg, strategy.name, strategy.train_passes())


def run_stream(cfg: RunConfig):
    """The stream a run trains on: the benchmark for the run's seed, without its test splits in
    model selection (``eval.selection``: they leave the run before anything trains)."""
    stream = build_benchmark(cfg.benchmark, cfg.seed)
    return stream.without_test() if cfg.eval.selection else stream


def check_stream(cfg: RunConfig, strategy, stream) -> None:
    """What can only be checked against the stream: budgets per experience, the scenario the
    strategy and the options need, classes shared by tasks, a schedule's sizes. Of these, only the
    ones ``stream_can_refuse`` names can refuse a run that ``config.check_runnable`` and
    ``check_strategy`` accepted (they check the scenarios from the config): a check added here is
    added there."""
    check_iterations(cfg.train.iterations, len(stream))
    if cfg.online and cfg.online.task_free and stream.scenario == "task":
        raise ConfigError("online.task_free applies to class- and domain-incremental streams; task-IL gives every "
                          "sample its task, so set benchmark.scenario to class or domain")
    if stream.scenario not in strategy.scenarios:
        raise ConfigError(f"strategy '{strategy.name}' supports scenarios {list(strategy.scenarios)}, "
                          f"not '{stream.scenario}'")
    check_eval_scenario(cfg, stream.scenario)
    check_task_disjoint(strategy, stream)
    check_schedule_budgets(cfg.train, stream, strategy)


def stream_can_refuse(cfg: RunConfig, strategy) -> bool:
    """Whether ``check_stream`` can refuse a run the config checks accepted: a budget
    per experience (the stream's length), online.task_free (a task-IL stream), a method that needs
    each class in one task (the tasks' classes), a schedule with a method that does not size its
    training set from the stream (the experiences' sizes)."""
    tc = cfg.train
    return (isinstance(tc.iterations, list) or bool(cfg.online and cfg.online.task_free)
            or strategy.task_disjoint_classes or (tc.schedule is not None and not strategy.epochs_from_stream))


def preflight(configs: list[RunConfig]) -> None:
    """Every check a run makes before training, for every run of a sweep, before the first starts:
    a run that would be refused after the others had trained is refused now. The stream is built
    only where a check needs it (``stream_can_refuse``), once per benchmark and seed."""
    by_stream: dict[tuple, list] = {}
    for cfg in configs:
        strategy = build_strategy(cfg)
        check_strategy(cfg, strategy)
        if stream_can_refuse(cfg, strategy):
            key = (cfg.benchmark.model_dump_json(), cfg.seed, bool(cfg.eval.selection))
            by_stream.setdefault(key, []).append((cfg, strategy))
    for runs in by_stream.values():  # one stream in memory at a time
        stream = run_stream(runs[0][0])
        for cfg, strategy in runs:
            check_stream(cfg, strategy, stream)
        del stream


def check_task_disjoint(strategy, stream) -> None:
    """A method that needs each class in one task (``Strategy.task_disjoint_classes``) against a
    task-IL stream whose tasks share a class: refused before training."""
    if stream.scenario != "task" or not strategy.task_disjoint_classes:
        return
    owner = {}
    for e in stream.experiences:
        for c in e.classes:
            if owner.setdefault(c, e.task_id) != e.task_id:
                raise ConfigError(f"strategy '{strategy.name}' needs each class in one task in task-IL, but benchmark "
                                  f"'{stream.name}' has class {c} in tasks {owner[c]} and {e.task_id}: use a benchmark "
                                  f"whose tasks have their own classes (a split one), or benchmark.scenario: class")


def check_schedule_budgets(tc, stream, strategy) -> None:
    """``train.schedule`` is planned before the run, from each experience's budget; with
    ``train.epochs`` that budget comes from the experience's training set, which a method that
    trains on a set of its own (``Strategy.epochs_from_stream``) does not use: refused before
    training (the schedule would run out, or stop short)."""
    if tc.schedule is None or strategy.epochs_from_stream:
        return
    from .training import iteration_budget

    from_epochs = [e.index for e in stream if iteration_budget(e, tc.iterations) is None]
    if from_epochs:
        raise ConfigError(f"train.schedule is planned from each experience's training set with train.epochs, but "
                          f"strategy '{strategy.name}' trains on a set of its own size (see its docs): give "
                          f"train.iterations (one number, or one per experience) with the schedule, or remove "
                          f"train.schedule")


def online_summary(online: list[list[int]]) -> tuple[float, list[float]]:
    """The run's online accuracy and each experience's, from [hits, seen] per experience; NaN for
    an experience that predicted nothing, and then for the run (a part is not the whole)."""
    hits, seen = sum(h for h, _ in online), sum(n for _, n in online)
    per = [h / n if n else float("nan") for h, n in online]
    return (hits / seen if all(n for _, n in online) else float("nan")), per


def check_iterations(iterations, n_experiences: int) -> None:
    if isinstance(iterations, list) and len(iterations) != n_experiences:
        raise ConfigError(f"config key 'train.iterations': {len(iterations)} budgets given for a stream of "
                          f"{n_experiences} experiences; give one number, or one per experience")


def build_run_schedule(tc, stream, batch_size: int):
    """The learning-rate schedule of ``train.schedule`` (None: constant), sized by the planned
    iterations of each experience (with ``epochs``, from the experience's training set size and
    the minibatch size the loop uses: ``online.batch_size`` in an online run)."""
    if getattr(tc, "schedule", None) is None:
        return None
    from .schedules import build_schedule
    from .training import iteration_budget

    budgets = []
    for exp in stream:
        b = iteration_budget(exp, tc.iterations)
        budgets.append(b if b is not None else tc.epochs * -(-len(exp.train) // batch_size))
    return build_schedule(tc.schedule, budgets)


def _continual_summary(result, cfg) -> dict | None:
    if result.curve is None:
        return None
    from .continual_metrics import summary

    steps, acc = result.curve
    out = summary(steps, acc, result.boundaries)
    out.update(eval_every=cfg.eval.every, subsample=cfg.eval.subsample, eval_time_s=result.continual_eval_time_s)
    return out


def curve_csv(curve) -> str:
    """``curves.csv``: step, experience (being trained), eval_experience, accuracy."""
    import numpy as np

    steps, acc = curve
    lines = ["step,experience,eval_experience,accuracy"]
    for s, row in zip(steps, acc):
        seen = np.flatnonzero(~np.isnan(row))
        cur = int(seen.max()) if len(seen) else 0
        lines += [f"{int(s)},{cur},{int(j)},{row[j]:.6f}" for j in seen]
    return "\n".join(lines) + "\n"


def write_curve(path: Path, curve) -> None:
    Path(path).write_text(curve_csv(curve))


def run_to_folder(config: RunConfig | dict, out_dir: str | Path, monitor=None, *, reuse: bool = True) -> dict:
    """Run into the folder ``out_dir`` (see :mod:`lifelong.runfolder`): a new or empty folder
    starts the run, a folder holding this config's interrupted run resumes it from its last
    checkpoint, a folder holding this config's finished run gives its stored results (with
    ``reuse``), anything else is refused untouched."""
    from . import runfolder as rf
    from .checkpoint import Checkpointer, load_checkpoint
    from .io import strict_json_dumps, to_strict_json
    from .tracking import MLflowMonitor, MultiMonitor, TensorBoardMonitor

    out_dir = Path(out_dir)
    cfg = config if isinstance(config, RunConfig) else parse_config(config)
    cfg_dict = cfg.to_dict()
    fp = rf.fingerprint(cfg_dict)
    state = rf.state_of(out_dir, fp)
    if state == "foreign" or (state == "finished" and not reuse):
        rf.refuse_foreign(out_dir)
    if state == "finished":
        rf.clean_partial(out_dir)  # a run killed after its results were in place
        return rf.load_finished(out_dir)
    build_strategy(cfg)  # a composition that would drop behaviour is refused before any folder is made
    created = not out_dir.exists()
    if state == "in progress":  # its checkpoint carries the fingerprint it was started with
        fp = rf.partial_fingerprint(out_dir) or fp
    partial = rf.prepare(out_dir, cfg_dict, fp)
    with rf.Lock(partial / "lock"), rf.discard_on_user_error(out_dir, created):
        rf.remove_stale_temporaries(partial)
        ck_cfg = cfg.checkpoint
        checkpointer = Checkpointer(partial / "resume.pt", fp,
                                    every_iterations=ck_cfg.every_iterations if ck_cfg else None,
                                    every_seconds=(ck_cfg.every_seconds or 300.0) if ck_cfg else 300.0)
        resume = load_checkpoint(partial / "resume.pt", fp) if (partial / "resume.pt").exists() else None
        tr = cfg.tracking
        monitors = MultiMonitor(
            monitor,
            TensorBoardMonitor(partial / "tensorboard", tr.every, cfg_dict) if tr.tensorboard else None,
            MLflowMonitor(tr.mlflow_uri, run_name=out_dir.name, config=cfg_dict, every=tr.every)
            if tr.mlflow else None)
        with monitors:
            res = run(cfg, monitors, checkpointer=checkpointer, resume=resume)
            state, curve = res.pop("_state"), res.pop("_curve")
            res, undefined = to_strict_json(res)
            res["status"] = "complete"
            res["undefined"] = undefined  # values that were NaN or infinite (null in the file)
            (partial / "results.json").write_text(strict_json_dumps(res))
            monitors.close(res, results_path=partial / "results.json")
        files = {"config.yaml": yaml.safe_dump(res["config"], sort_keys=False).encode(),
                 "checkpoint.pt": _torch_bytes(state), "results.json": strict_json_dumps(res).encode()}
        if curve is not None:
            files["curves.csv"] = curve_csv(curve).encode()
        if (partial / "tensorboard").is_dir():
            shutil.move(str(partial / "tensorboard"), str(out_dir / "tensorboard"))
        rf.finish(out_dir, files)
    return res


def _torch_bytes(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


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
