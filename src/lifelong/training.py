"""The training loop. Everything a method does happens in its strategy's hooks."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import checkpoint as ckpt
from . import metrics
from .errors import ConfigError, DivergenceError
from .evaluation import ContinualEvaluator, evaluate
from .streams import Experience, Stream
from .strategies.base import Batch, StepContext, Strategy


def index_batches(n: int, batch_size: int, generator: torch.Generator, iterations: int | None = None,
                  epochs: int = 1):
    """Shuffled minibatch indices: ``iterations`` batches (cycling epochs), else ``epochs`` passes."""
    done, total = 0, iterations
    while total is None or done < total:
        perm = torch.randperm(n, generator=generator)
        for s in range(0, n, batch_size):
            if total is not None and done >= total:
                return
            yield perm[s:s + batch_size]
            done += 1
        if total is None:
            epochs -= 1
            if epochs <= 0:
                return


@dataclass
class RunResult:
    scenario: str
    task_agnostic_matrix: list[list[float]] | None = field(default_factory=list)  # None: not measured (task-IL,
    # eval.task_agnostic false)
    task_aware_matrix: list[list[float]] = field(default_factory=list)
    initial_agnostic: list[float] | None = field(default_factory=list)
    initial_aware: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # mean training loss per experience
    train_time_s: float = 0.0
    eval_time_s: float = 0.0
    boundaries: list[int] = field(default_factory=list)  # global update at which each experience ended (a
    # gradient step is one update; an experience fitted in closed form, without gradient steps, is one)
    curve: tuple | None = None  # (steps (S,), acc (S, T)) from continual evaluation
    continual_eval_time_s: float = 0.0
    grad_norms: list = field(default_factory=list)  # with record_grad_norms: one per update
    online: list = field(default_factory=list)  # with online_accuracy: [hits, seen] per experience
    samples_trained: int = 0  # samples of every training step, after augment (replayed ones count): training FLOPs

    @property
    def task_aware(self) -> bool:
        return self.scenario == "task"

    @property
    def accuracy_matrix(self) -> list[list[float]]:
        """The scenario's own protocol: task-aware for task-IL, task-agnostic otherwise."""
        return self.task_aware_matrix if self.task_aware else self.task_agnostic_matrix

    def metrics(self) -> dict[str, float]:
        init = self.initial_aware if self.task_aware else self.initial_agnostic
        out = metrics.summary(self.accuracy_matrix, init)
        if self.scenario == "class":  # the task-aware view differs only in class-IL
            out.update({f"task_aware_{k}": v for k, v in metrics.summary(self.task_aware_matrix).items()})
        return out


def train(stream: Stream, strategy: Strategy, make_optimizer: Callable, *, batch_size: int = 128,
          iterations: int | list[int] | None = None, epochs: int = 1, seed: int = 0, reset_optimizer: bool = True,
          eval_batch_size: int = 1000, eval_every: int | None = None, eval_subsample: int = 1000,
          eval_split: str = "test", monitor=None, schedule=None, grad_clip_norm: float | None = None,
          precision: str = "fp32", record_grad_norms: bool = False, checkpointer=None,
          resume: dict | None = None, task_free: bool = False, online_accuracy: bool = False,
          matrix_split: str = "test", eval_agnostic: bool = True) -> RunResult:
    """Train ``strategy`` (set up with its model) on every experience of ``stream`` in order,
    evaluating on all test experiences after each one and, with ``eval_every``, on a fixed
    subsample of the seen experiences every ``eval_every`` iterations (continual evaluation).

    ``iterations``: per experience (one number, or one per experience; an experience's own
    ``iterations`` wins), else ``epochs`` passes. ``schedule``: a :mod:`lifelong.schedules`
    schedule scaling every group's learning rate. ``precision``: fp32, bf16 or fp16 (autocast;
    fp16 with a gradient scaler, unscaled before ``before_step``). ``checkpointer``: saves a
    snapshot at every experience end and when ``checkpointer.due(step)``; ``resume``: such a
    snapshot, from which the run continues exactly as if never interrupted. ``task_free``: no
    boundary reaches the strategy (no ``before_experience``/``train_data``/``after_experience``,
    ``context.experience`` is None, one optimizer for the stream, output units activate as their
    labels arrive); the evaluation still records the matrix at the hidden boundaries.
    ``online_accuracy``: each incoming batch is first predicted (the online accuracy).
    ``matrix_split``: the split the accuracy matrix is measured on (``valid`` in model selection).
    ``eval_agnostic=False`` (task-IL): no task-agnostic matrix (``result.task_agnostic_matrix`` None)."""
    model, dev = strategy.model, strategy.device
    g = torch.Generator().manual_seed(seed)
    result = RunResult(stream.scenario, task_agnostic_matrix=[] if eval_agnostic else None)
    cont = None if not eval_every else ContinualEvaluator(
        stream.experiences, stream.n_classes, eval_every, eval_subsample, stream.scenario == "task", seed, eval_split)
    if not task_free:
        check_own_budgets(stream, strategy)
    amp = Precision(precision, dev)
    ctx = StepContext(grad_scaler=amp.scaler, stream=stream)
    strategy.set_context(ctx)
    schedule = None if schedule is None or schedule.is_constant else schedule
    task_aware = stream.scenario == "task"
    optimizer, start = None, (0, 0)
    if resume is None:
        t0 = time.perf_counter()
        result.initial_agnostic, result.initial_aware = evaluate(strategy, stream.experiences, eval_batch_size,
                                                                 split=matrix_split, task_aware_predict=task_aware,
                                                                 agnostic=eval_agnostic)
        result.eval_time_s += time.perf_counter() - t0
    else:
        start = resume_progress(resume, result, cont, ctx)
    for exp in stream:
        if exp.index < start[0]:
            continue
        t0 = time.perf_counter()
        resuming = resume is not None and exp.index == start[0]
        if resuming:  # the state this experience started from; the steps below replay its set-up
            boundary = resume["boundary"]
            optimizer = restore_boundary(boundary, strategy, optimizer, make_optimizer, amp.scaler)
            g.set_state(resume["batch_generator"])
        elif checkpointer:
            boundary = ckpt.model_and_strategy(strategy, None if reset_optimizer and not task_free else optimizer,
                                               amp.scaler)
        if task_free:  # the strategy sees batches only; the stream's training data as they come
            optimizer = optimizer or _optimizer_for(strategy.param_groups(), make_optimizer, None)
            data = exp.train
        else:
            model.observe(exp.classes, exp.task_id)
            strategy.before_experience(exp)
            optimizer = _optimizer_for(strategy.param_groups(), make_optimizer, None if reset_optimizer else optimizer)
            data = strategy.train_data(exp)  # None: the strategy fits in closed form (after_experience)
        budget, n_epochs = run_budget(exp, iterations, epochs, None if task_free else strategy.train_passes())
        n_iters = 0 if data is None else budget if budget is not None else n_epochs * -(-len(data) // batch_size)
        ctx.optimizer, ctx.experience, ctx.iteration, ctx.n_iterations = optimizer, None if task_free else exp, 0, n_iters
        if monitor:
            monitor.start(exp, n_iters)
        model.train()
        loss_sum = torch.zeros((), device=dev)
        online = torch.zeros(2, dtype=torch.long, device=dev) if online_accuracy else None  # hits, seen
        rows = online_rows(strategy, exp, data, task_free) if online is not None and n_iters else False
        g_start = g.get_state()
        skip = 0
        if resuming and resume["current"] is not None:  # interrupted inside this experience
            skip, loss_sum, online, done_s = restore_current(resume["current"], strategy, optimizer, amp.scaler, dev)
            t0 -= done_s  # the experience's time before the interruption counts as its time
        # One task-id tensor per experience, expanded to each batch (no allocation per step; an
        # expanded tensor cannot be written in place by mistake).
        task = None if data is None or data.t is not None else torch.full((1,), exp.task_id, device=data.y.device)
        batches = index_batches(len(data), batch_size, g, budget, n_epochs) if n_iters else ()
        for it, idx in enumerate(batches):
            if it < skip:
                continue
            ctx.iteration = it
            if schedule is not None:
                apply_schedule(schedule, optimizer, exp.index, it)
            idx = idx.to(data.y.device)
            t = data.t[idx] if task is None else task.expand(len(idx))
            batch = Batch(data.x[idx], data.y[idx], t, index=idx)
            if rows is not False:  # the incoming samples, predicted before the model trains on them
                online += online_hits(strategy, batch, task_aware, None if rows is None else rows[idx])
            if task_free:
                observe_labels(model, batch)
            batch = strategy.augment(batch)
            result.samples_trained += len(batch.y)  # a host int: no device sync
            with amp.autocast():
                logits = strategy.forward(batch)
                loss = strategy.loss(logits, batch)
                penalty = strategy.penalty(logits, batch)
                if not (isinstance(penalty, float) and penalty == 0.0):  # no penalty: no extra op
                    loss = loss + penalty
            optimizer.zero_grad(set_to_none=True)
            amp.backward(loss, optimizer)  # fp16: scaled backward, then gradients unscaled
            strategy.before_step(batch)
            if grad_clip_norm is not None or record_grad_norms:
                norm = torch.nn.utils.clip_grad_norm_(optimizer_params(optimizer), grad_clip_norm or float("inf"))
                if record_grad_norms:
                    result.grad_norms.append(norm.detach())
            amp.step(optimizer)
            strategy.after_step(batch, logits.detach())
            loss_sum += loss.detach()
            step = ctx.step = ctx.step + 1
            # a host float: on the CPU this costs nothing (torch.isfinite would allocate a tensor)
            if (dev.type == "cpu" or step % 20 == 0) and not math.isfinite(loss_sum.item()):
                raise DivergenceError(divergence_message(strategy, optimizer, exp, it, step, loss, precision))
            if cont:
                cont.maybe_evaluate(strategy, step, exp.index + 1)
            if monitor:
                monitor.step(it, loss, cont.latest if cont else None)
            if checkpointer and it + 1 < n_iters and checkpointer.due(step):
                checkpointer.save(snapshot(exp.index, it + 1, boundary, strategy, optimizer, amp.scaler, g_start,
                                           loss_sum, result, cont, ctx.step, online, time.perf_counter() - t0))
        if n_iters and not torch.isfinite(loss_sum):
            raise DivergenceError(divergence_message(strategy, optimizer, exp, n_iters - 1, ctx.step, loss_sum, precision))
        if online is not None:
            result.online.append(online.tolist())
        if not task_free:
            strategy.after_experience(exp)
        if n_iters == 0:  # a closed-form fit counts as one update; the curve records the model it gives
            ctx.step += 1
            if cont:
                cont.maybe_evaluate(strategy, ctx.step, exp.index + 1, force=True)
        result.boundaries.append(ctx.step)
        result.losses.append(loss_sum.item() / max(n_iters, 1))
        t1 = time.perf_counter()
        agn, awr = evaluate(strategy, stream.experiences, eval_batch_size, split=matrix_split,
                            task_aware_predict=task_aware, agnostic=eval_agnostic)
        result.task_aware_matrix.append(awr)
        if agn is not None:
            result.task_agnostic_matrix.append(agn)
        t2 = time.perf_counter()
        result.train_time_s += t1 - t0
        result.eval_time_s += t2 - t1
        if monitor:
            monitor.end(exp, result)
        if checkpointer and exp.index + 1 < len(stream):
            checkpointer.save(snapshot(exp.index + 1, 0, None, strategy,
                                       None if reset_optimizer and not task_free else optimizer,
                                       amp.scaler, g.get_state(), None, result, cont, ctx.step))
    if cont:
        result.curve, result.continual_eval_time_s = cont.curve(), cont.time_s
        result.train_time_s -= cont.time_s
    if result.grad_norms:
        result.grad_norms = [float(v) for v in result.grad_norms]
    return result


def _optimizer_for(groups, make_optimizer, optimizer):
    """A fresh optimizer over the strategy's parameter groups, or the old one extended with
    parameters added since (new heads), each in its group's settings."""
    if optimizer is None:
        return make_optimizer(groups)
    known = {id(p) for group in optimizer.param_groups for p in group["params"]}
    new = [dict(g, params=[p for p in g["params"] if id(p) not in known]) for g in groups]
    new = [g for g in new if g["params"]]
    if new:
        for group in make_optimizer(new).param_groups:  # the factory resolves lr_scale and defaults
            optimizer.add_param_group(group)
    return optimizer


def check_own_budgets(stream: Stream, strategy) -> None:
    """An experience's own iteration budget and a strategy's own passes would both set the same
    budget: refused before anything trains (``config.check_passes`` refuses the run's keys)."""
    own = [e.index for e in stream.experiences if e.iterations is not None]
    passes = strategy.train_passes()
    if own and passes is not None:
        raise ConfigError(f"experience {own[0]} has its own iteration budget and strategy '{strategy.name}' makes "
                          f"its own {passes} passes over its training data: set one of the two")


def run_budget(exp: Experience, iterations, epochs: int, passes: int | None) -> tuple[int | None, int]:
    """(iterations or None, passes) for one experience: the strategy's own pass count over its
    training data (:meth:`Strategy.train_passes`) when it fixes one, else the run's budget."""
    return (iteration_budget(exp, iterations), epochs) if passes is None else (None, passes)


def iteration_budget(exp: Experience, iterations: int | list[int] | None) -> int | None:
    """The experience's own budget, else the run's (one number, or one per experience)."""
    if exp.iterations is not None:
        return exp.iterations
    if isinstance(iterations, (list, tuple)):
        return iterations[exp.index]
    return iterations


def optimizer_params(optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


class Precision:
    """fp32, or autocast to bf16 / fp16 on the model's device; fp16 adds a gradient scaler whose
    gradients are unscaled right after ``backward`` (so ``before_step`` sees true gradients)."""

    DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(self, name: str, device: torch.device):
        self.dtype, self.device = self.DTYPES[name], device
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self):
        return contextlib.nullcontext() if self.dtype is None else torch.autocast(self.device.type, self.dtype)

    def backward(self, loss: torch.Tensor, optimizer) -> None:
        if self.scaler is None:
            loss.backward()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:  # skipped when the unscaled gradients hold inf/NaN (the scale then shrinks)
            self.scaler.step(optimizer)
            self.scaler.update()


def apply_schedule(schedule, optimizer, exp_index: int, it: int) -> None:
    """Every group's learning rate = its base rate (as the optimizer was built) x the factor."""
    f = schedule.factor(exp_index, it)
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("base_lr", group["lr"]) * f


def divergence_message(strategy, optimizer, exp, it: int, step: int, loss, precision: str) -> str:
    value = float(loss.detach().float()) if torch.is_tensor(loss) else float(loss)
    what = "NaN" if math.isnan(value) else "infinite"
    weights = [f"strategy.{k}={v!r}" for k, v in strategy.get_params().items()
               if isinstance(v, float) and not isinstance(v, bool)]
    msg = (f"the training loss became {what} at experience {exp.index + 1}, iteration {it + 1} (update {step}); "
           f"training stopped. Likely keys: train.lr (now {optimizer.param_groups[0]['lr']:g})")
    if weights:
        msg += ", the method's weights (" + ", ".join(weights) + ")"
    if precision == "fp16":
        msg += ", train.precision (fp16 overflows easily: try bf16 or fp32)"
    return msg


# ---------------------------------------------------------------------------------------------
# checkpoints: what a snapshot holds, and how a run continues from one (lifelong.checkpoint)
def snapshot(exp_index: int, iteration: int, boundary, strategy, optimizer, scaler, g_start, loss_sum,
             result: RunResult, cont, step: int, online=None, elapsed_s: float = 0.0) -> dict:
    """Resume at ``iteration`` of experience ``exp_index``. At an experience boundary
    (``iteration`` 0) the current state is the boundary; inside an experience the snapshot
    also holds the state the experience started from, whose set-up is replayed on resume, and the
    seconds the experience has run (``elapsed_s``: its training time so far, added on resume).
    ``g_start``: the batch-order generator as experience ``exp_index`` started (its batches are
    drawn again and the first ``iteration`` skipped)."""
    here = ckpt.model_and_strategy(strategy, optimizer, scaler)
    if iteration == 0:
        boundary, current = here, None
    else:
        current = dict(here, iteration=iteration, loss_sum=loss_sum.detach().clone(),
                       online=None if online is None else online.clone(), elapsed_s=elapsed_s)
    return {"format": ckpt.FORMAT, "next": [exp_index, iteration], "step": step, "batch_generator": g_start.clone(),
            "boundary": boundary, "current": current, "result": _result_state(result),
            "continual": None if cont is None else cont.state()}


def _result_state(result: RunResult) -> dict:
    state = {k: v for k, v in vars(result).items() if k not in ("curve", "grad_norms")}
    state["grad_norms"] = [float(v) for v in result.grad_norms]
    return ckpt._clone(state)


def resume_progress(resume: dict, result: RunResult, cont, ctx: StepContext) -> tuple[int, int]:
    """Partial results, curves and the update count from a snapshot; returns where to go on."""
    for k, v in ckpt._clone(resume["result"]).items():  # copies: the snapshot stays as it was
        setattr(result, k, v)
    if cont is not None and resume["continual"] is not None:
        cont.load_state(resume["continual"])
    ctx.step = resume["step"]
    return tuple(resume["next"])


def restore_boundary(boundary: dict, strategy, optimizer, make_optimizer, scaler):
    ckpt.restore_model_and_strategy(boundary, strategy, None, scaler)
    if boundary["optimizer"] is not None:  # a run that keeps its optimizer across experiences
        return ckpt.rebuild_optimizer(boundary["optimizer"], strategy, make_optimizer)
    return optimizer


def restore_current(current: dict, strategy, optimizer, scaler, dev):
    ckpt.restore_model_and_strategy(current, strategy, optimizer, scaler)
    online = current.get("online")
    return (current["iteration"], current["loss_sum"].to(dev, copy=True),
            None if online is None else online.to(dev, copy=True), current.get("elapsed_s", 0.0))


def online_rows(strategy, exp: Experience, data, task_free: bool):
    """The rows of ``data`` the online accuracy predicts: None for all of them, a bool mask for
    some, False for none (the strategy trains on none of the incoming samples: a memory, stored
    features; the online accuracy is then undefined for the experience)."""
    if task_free:
        return None
    mask = strategy.stream_rows(exp, data)
    if mask is None or not bool(mask.any()):
        return False
    return None if bool(mask.all()) else mask


@torch.no_grad()
def online_hits(strategy, batch: Batch, task_aware: bool, rows: torch.Tensor | None = None) -> torch.Tensor:
    """[correct, seen] of the model's predictions on an incoming batch (``rows``: only these), in
    evaluation mode."""
    x, y, t = (batch.x, batch.y, batch.t) if rows is None else (batch.x[rows], batch.y[rows], batch.t[rows])
    seen = torch.tensor(len(y), device=y.device)
    if len(y) == 0:
        return torch.stack([seen, seen])
    model = strategy.model
    model.eval()
    scores = strategy.predict(x, t if task_aware else None)
    model.train()
    return torch.stack([(scores.argmax(1) == y).sum(), seen])


def observe_labels(model, batch: Batch) -> None:
    """Task-free: an output unit becomes active when its label first arrives."""
    labels = torch.unique(batch.y).tolist()
    model.observe(labels, int(batch.t[0]))
