"""The consoles every command prints to, and the progress displays of long commands."""
from __future__ import annotations

import time

from rich.console import Console

console = Console(stderr=False)
err_console = Console(stderr=True)


def _progress(*columns):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *columns,
                    TimeElapsedColumn(), console=console, transient=False)


class RichMonitor:
    """``lifelong run``: a progress bar per experience (iteration, loss, continual accuracy);
    the accuracy row on the seen experiences when the experience ends."""

    def __init__(self, n_experiences: int):
        from rich.progress import TextColumn

        self.n = n_experiences
        self.progress = _progress(TextColumn("loss {task.fields[loss]}"), TextColumn("acc {task.fields[acc]}"))
        self.task = None

    def start(self, exp, n_iters):
        if self.task is None:
            self.progress.start()
        self.every = max(1, n_iters // 50)
        self.task = self.progress.add_task(f"experience {exp.index + 1}/{self.n}", total=n_iters, loss="-", acc="-")

    def step(self, it, loss, continual_acc=None):
        if (it + 1) % self.every == 0:
            self.loss = float(loss.detach())
            acc = "-" if continual_acc is None else f"{100 * continual_acc:.1f}"
            self.progress.update(self.task, completed=it + 1, loss=f"{self.loss:.3f}", acc=acc)

    def end(self, exp, result):
        total = self.progress.tasks[-1].total
        self.progress.remove_task(self.task)
        row = result.accuracy_matrix[-1]
        self.progress.console.print(f"experience {exp.index + 1}/{self.n}: {total} iterations, final loss "
                                    f"{getattr(self, 'loss', float('nan')):.3f}; accuracy on seen: "
                                    + " ".join(f"{100 * a:.1f}" for a in row[: exp.index + 1]))
        if exp.index + 1 == self.n:
            self.progress.stop()


class ReproduceProgress:
    """Hooks for :func:`lifelong.reproduce.reproduce`: one bar over the runs, a line per finished run."""

    def __init__(self):
        self.progress = _progress()
        self.task = None
        self.t0 = None

    def start(self, total, cached, todo):
        console.print(f"{total} runs: {cached} in the cache, {todo} to compute")
        if todo:
            self.progress.start()
            self.task = self.progress.add_task("runs", total=todo)

    def running(self, spec):
        self.t0 = time.perf_counter()
        if self.task is not None:
            self.progress.update(self.task, description=f"running {spec.label}")

    def finished(self, spec, res):
        wall = res.get("wall_time_s")
        self.progress.console.print(f"done: {spec.label}: {100 * res['average_accuracy']:.2f}%"
                                    + (f" ({wall:.0f} s)" if wall is not None else ""))
        if self.task is not None:
            self.progress.advance(self.task)

    def failed(self, spec, error):
        self.progress.console.print(f"[red]failed:[/red] {spec.label}: {error}")
        if self.task is not None:
            self.progress.advance(self.task)

    def stop(self):
        if self.task is not None:
            self.progress.update(self.task, description="runs")
            self.progress.stop()
            self.task = None
