"""The training loop. Everything a method does happens in its strategy's hooks."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import metrics
from .evaluation import ContinualEvaluator, evaluate
from .streams import Stream
from .strategies.base import Batch, Strategy


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
    task_agnostic_matrix: list[list[float]] = field(default_factory=list)
    task_aware_matrix: list[list[float]] = field(default_factory=list)
    initial_agnostic: list[float] = field(default_factory=list)
    initial_aware: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # mean training loss per experience
    train_time_s: float = 0.0
    eval_time_s: float = 0.0
    boundaries: list[int] = field(default_factory=list)  # global update at which each experience ended (a
    # gradient step is one update; an experience fitted in closed form, without gradient steps, is one)
    curve: tuple | None = None  # (steps (S,), acc (S, T)) from continual evaluation
    continual_eval_time_s: float = 0.0

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
          iterations: int | None = None, epochs: int = 1, seed: int = 0, reset_optimizer: bool = True,
          eval_batch_size: int = 1000, eval_every: int | None = None, eval_subsample: int = 1000,
          eval_split: str = "test", monitor=None) -> RunResult:
    """Train ``strategy`` (set up with its model) on every experience of ``stream`` in order,
    evaluating on all test experiences after each one and, with ``eval_every``, on a fixed
    subsample of the seen experiences every ``eval_every`` iterations (continual evaluation)."""
    model, dev = strategy.model, strategy.device
    g = torch.Generator().manual_seed(seed)
    result = RunResult(stream.scenario)
    cont = None if not eval_every else ContinualEvaluator(
        stream.experiences, stream.n_classes, eval_every, eval_subsample, stream.scenario == "task", seed, eval_split)
    step = 0
    t0 = time.perf_counter()
    result.initial_agnostic, result.initial_aware = evaluate(strategy, stream.experiences, eval_batch_size)
    result.eval_time_s += time.perf_counter() - t0
    optimizer = None
    for exp in stream:
        t0 = time.perf_counter()
        model.observe(exp.classes, exp.task_id)
        strategy.before_experience(exp)
        optimizer = _optimizer_for(strategy.param_groups(), make_optimizer, None if reset_optimizer else optimizer)
        data = strategy.train_data(exp)  # None: the strategy fits in closed form (after_experience)
        n_iters = 0 if data is None else iterations if iterations is not None else epochs * -(-len(data) // batch_size)
        if monitor:
            monitor.start(exp, n_iters)
        model.train()
        loss_sum = torch.zeros((), device=dev)
        # One task-id tensor per experience, expanded to each batch (no allocation per step; an
        # expanded tensor cannot be written in place by mistake).
        task = None if data is None or data.t is not None else torch.full((1,), exp.task_id, device=data.y.device)
        for it, idx in enumerate(index_batches(len(data), batch_size, g, iterations, epochs) if n_iters else ()):
            idx = idx.to(data.y.device)
            t = data.t[idx] if task is None else task.expand(len(idx))
            batch = strategy.augment(Batch(data.x[idx], data.y[idx], t))
            logits = strategy.forward(batch)
            loss = strategy.loss(logits, batch)
            penalty = strategy.penalty(logits, batch)
            if not (isinstance(penalty, float) and penalty == 0.0):  # no penalty: no extra op
                loss = loss + penalty
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            strategy.before_step(batch)
            optimizer.step()
            strategy.after_step(batch, logits.detach())
            loss_sum += loss.detach()
            step += 1
            if cont:
                cont.maybe_evaluate(strategy, step, exp.index + 1)
            if monitor:
                monitor.step(it, loss, cont.latest if cont else None)
        strategy.after_experience(exp)
        if n_iters == 0:  # a closed-form fit counts as one update; the curve records the model it gives
            step += 1
            if cont:
                cont.maybe_evaluate(strategy, step, exp.index + 1, force=True)
        result.boundaries.append(step)
        result.losses.append(loss_sum.item() / max(n_iters, 1))
        t1 = time.perf_counter()
        agn, awr = evaluate(strategy, stream.experiences, eval_batch_size)
        result.task_agnostic_matrix.append(agn)
        result.task_aware_matrix.append(awr)
        t2 = time.perf_counter()
        result.train_time_s += t1 - t0
        result.eval_time_s += t2 - t1
        if monitor:
            monitor.end(exp, result)
    if cont:
        result.curve, result.continual_eval_time_s = cont.curve(), cont.time_s
        result.train_time_s -= cont.time_s
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
