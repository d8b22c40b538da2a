"""Evaluation: exact end-of-experience accuracy, and continual evaluation during training.

Continual evaluation (De Lange, van de Ven & Tuytelaars, ICLR 2023) evaluates every ``every``
training iterations on a fixed subsample of each seen experience's test (or validation) set,
drawn once per seed, so that the temporary collapse of old-experience accuracy when a new
experience starts (the stability gap) becomes visible. Evaluation runs without autograd, in
one batched forward over all seen experiences, and its time is measured apart from training.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .streams import Experience, Split


def task_ids(exp: Experience, data: Split) -> torch.Tensor:
    """Each sample's task id: the split's own, else the experience's."""
    if data.t is not None:
        return data.t
    return torch.full((len(data),), exp.task_id, dtype=torch.long, device=data.y.device)


@torch.no_grad()
def evaluate(strategy, experiences: list[Experience], batch_size: int = 1000, split: str = "test",
             task_aware_predict: bool = False, agnostic: bool = True) -> tuple[list[float] | None, list[float]]:
    """Accuracy on each experience: (task-agnostic, task-aware).

    Task-agnostic takes the argmax of ``strategy.predict(x, None)`` over every output; task-aware
    only over the experience's own classes (the task id is known at test time). With
    ``task_aware_predict`` (task-IL), the task-aware scores come from ``strategy.predict(x,
    task)`` with the samples' task ids, so a method can answer with a task's own mask,
    sub-network or generated weights. ``agnostic=False`` (task-IL only) skips the task-agnostic
    prediction, which costs one more forward per batch, and one per learned task for a method
    that routes each task through its own parameters; the task-agnostic accuracies are then None."""
    if not (agnostic or task_aware_predict):
        raise ValueError("agnostic=False needs task_aware_predict: the task-aware scores would come from the "
                         "task-agnostic prediction")
    model = strategy.model
    was_training = model.training
    model.eval()
    hits = []  # per experience: (2,) counts, kept on the device until all are done (no sync per batch)
    for exp in experiences:
        data: Split = getattr(exp, split)
        classes = torch.as_tensor(exp.classes, device=data.y.device)
        hit_any = torch.zeros((), dtype=torch.long, device=data.y.device)
        hit_task = torch.zeros((), dtype=torch.long, device=data.y.device)
        tids = task_ids(exp, data) if task_aware_predict else None
        for s in range(0, len(data), batch_size):
            x, y = data.x[s:s + batch_size], data.y[s:s + batch_size]
            if agnostic:
                scores = strategy.predict(x, None)
                hit_any += (scores.argmax(1) == y).sum()
            if tids is not None:
                scores = strategy.predict(x, tids[s:s + batch_size])
            hit_task += (classes[scores[:, classes].argmax(1)] == y).sum()
        hits.append(torch.stack([hit_any, hit_task]))
    model.train(was_training)
    if len({h.device for h in hits}) == 1:
        counts = torch.stack(hits).tolist()
    else:  # experiences on different devices
        counts = [h.tolist() for h in hits]
    aware = [t / max(len(getattr(e, split)), 1) for (_, t), e in zip(counts, experiences)]
    if not agnostic:
        return None, aware
    return [a / max(len(getattr(e, split)), 1) for (a, _), e in zip(counts, experiences)], aware


class ContinualEvaluator:
    """Evaluates every ``every`` iterations on ``subsample`` fixed samples per seen experience.

    The curve is ``steps`` (S,) and ``acc`` (S, T), NaN for experiences not seen yet.
    """

    def __init__(self, experiences: list[Experience], n_classes: int, every: int, subsample: int = 1000,
                 task_aware: bool = False, seed: int = 0, split: str = "test", batch_size: int = 5000):
        self.every, self.task_aware, self.batch_size = every, task_aware, batch_size
        g = torch.Generator().manual_seed(seed + 104729)
        xs, ys, ts, ends = [], [], [], []
        masks = torch.zeros(len(experiences), n_classes, dtype=torch.bool)
        for j, e in enumerate(experiences):
            data = getattr(e, split)
            idx = torch.randperm(len(data), generator=g)[:subsample].to(data.y.device)
            xs.append(data.x[idx])
            ys.append(data.y[idx])
            ts.append(task_ids(e, data)[idx])
            ends.append(sum(len(y) for y in ys))
            masks[j, e.classes] = True
        self.x, self.y, self.t = torch.cat(xs), torch.cat(ys), torch.cat(ts)
        self.ends = ends
        self.seg = torch.cat([torch.full((len(y),), j, dtype=torch.long) for j, y in enumerate(ys)]).to(self.y.device)
        self.masks = masks.to(self.y.device)
        self.T = len(experiences)
        self.steps: list[int] = []
        self.rows: list[np.ndarray] = []
        self.time_s = 0.0

    @torch.no_grad()
    def maybe_evaluate(self, strategy, step: int, seen: int, force: bool = False) -> None:
        """After global update ``step`` (1-based) with experiences 0..seen-1 seen; every
        ``every`` updates, or now with ``force`` (after a closed-form fit)."""
        if step % self.every and not force:
            return
        t0 = time.perf_counter()
        model = strategy.model
        model.eval()
        end = self.ends[seen - 1]
        hits = []
        for s in range(0, end, self.batch_size):
            x, y, seg = self.x[s:min(s + self.batch_size, end)], self.y[s:min(s + self.batch_size, end)], \
                self.seg[s:min(s + self.batch_size, end)]
            scores = strategy.predict(x, self.t[s:min(s + self.batch_size, end)] if self.task_aware else None)
            if self.task_aware:
                scores = scores.masked_fill(~self.masks[seg], float("-inf"))
            hits.append(scores.argmax(1) == y)
        hit = torch.cat(hits).float()
        seg = self.seg[:end]
        acc = torch.zeros(seen, device=hit.device).index_add_(0, seg, hit) / torch.bincount(seg, minlength=seen)
        row = np.full(self.T, np.nan)
        row[:seen] = acc.cpu().numpy()
        self.steps.append(step)
        self.rows.append(row)
        model.train()
        self.time_s += time.perf_counter() - t0

    def state(self) -> dict:
        """What a checkpoint keeps: the curve so far (the subsample is a function of the seed)."""
        return {"steps": [int(v) for v in self.steps], "rows": [[float(v) for v in r] for r in self.rows],
                "time_s": self.time_s}

    def load_state(self, state: dict) -> None:
        self.steps = list(state["steps"])
        self.rows = [np.asarray(r, dtype=float) for r in state["rows"]]
        self.time_s = float(state["time_s"])

    @property
    def latest(self) -> float | None:
        return float(np.nanmean(self.rows[-1])) if self.rows else None

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        acc = np.stack(self.rows) if self.rows else np.zeros((0, self.T))
        return np.asarray(self.steps, dtype=np.int64), acc
