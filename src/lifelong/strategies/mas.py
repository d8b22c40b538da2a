"""MAS: memory aware synapses, with boundaries given or detected from the loss (task-free).

Aljundi, Babiloni, Elhoseiny, Rohrbach & Tuytelaars (2018), "Memory Aware Synapses: Learning
what (not) to forget" (ECCV); task-free: Aljundi, Kelchtermans & Tuytelaars (2019),
"Task-Free Continual Learning" (CVPR), and Aljundi's PhD thesis (a seed document).

- Importance: ``omega_k = mean_x |d ||f(x)||_2^2 / d theta_k|``, the sensitivity of the squared
  L2 norm of the output (the active logits) to each parameter, per sample (``torch.func``), on
  ``mas_samples`` samples. No labels are needed.
- Penalty: ``mas_lambda / 2 * sum_k omega_k (theta_k - theta*_k)^2`` around the parameters
  ``theta*`` at the last importance update.
- Importances are combined as a running average over updates, ``omega <- omega_new / n +
  (1 - 1/n) omega`` (the task-free paper's code); with boundaries given, one update per
  experience, on its training data.
- ``mas_task_free=True`` (Aljundi et al. 2019): no boundary is used. A window of the last
  ``mas_window`` batch losses (of the stream samples) is watched: after a peak, the next plateau
  triggers an importance update on the hard buffer: the ``mas_hard_buffer`` samples of highest
  loss among the recent batch and the previous hard buffer, which are also replayed with every
  batch. What counts as a peak and a plateau (``mas_detection``):

  - ``"absolute"``, the paper's: a peak when the window mean rises above the last plateau's
    mean plus its standard deviation; a plateau when the window mean is below
    ``mas_plateau_mean`` (0.2) and its variance below ``mas_plateau_variance`` (0.1). These
    values were set for the paper's MSE loss on its recent buffer; with the cross-entropy of
    batches of 10 they find 0 or 1 plateau per run on split digits (about 29 steps per
    experience: the loss never gets under 0.2), and on Split MNIST (1,200 steps) every
    boundary but late and with extra updates after loss spikes (``docs/methods-online.md``).
  - ``"relative"`` (default; ours, scale-free, for the cross-entropy): a plateau when the window
    mean falls below ``mas_plateau_drop`` (0.7) times the highest window mean since the peak; a
    peak when the window mean rises above the lowest window mean since the last plateau, ``low``,
    by ``mas_peak_rise`` (0.5) times the last drop's amplitude (``peak - low``). Multiplying
    every loss by a constant detects the same steps. Both values were chosen on online split
    digits (domain- and class-IL, seeds 0-1: 19 of the 20 boundaries found, none twice, each
    within 20 steps) and reported on Split MNIST (``benchmarks/mas_task_free.py``,
    ``docs/methods-online.md``).

  The steps of the updates are kept in ``detected_steps_``.

Defaults: ``mas_lambda=1`` (the MAS paper's lambda), window 5, hard buffer 30, absolute
thresholds 0.2 / 0.1, as in the task-free code (kkelchte/task_free_continual_learning);
``mas_samples=1000``. Where we differ: the relative detection is the default, and one loss
value is one stream batch's (the paper's is its recent buffer's, after several steps on it).
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from .base import Strategy


class MAS(Strategy):
    name = "mas"
    paper = "Aljundi et al. 2018 (ECCV), Memory Aware Synapses; task-free: Aljundi et al. 2019 (CVPR)"
    scenarios = ("class", "task", "domain")

    def __init__(self, mas_lambda: Annotated[float, Field(ge=0)] = 1.0,
                 mas_samples: Annotated[int, Field(ge=1)] = 1000,
                 mas_task_free: bool = False,
                 mas_window: Annotated[int, Field(ge=2)] = 5,
                 mas_plateau_mean: Annotated[float, Field(gt=0)] = 0.2,
                 mas_plateau_variance: Annotated[float, Field(gt=0)] = 0.1,
                 mas_hard_buffer: Annotated[int, Field(ge=1)] = 30,
                 mas_replay_hard: bool = True,
                 mas_detection: Literal["relative", "absolute"] = "relative",
                 mas_plateau_drop: Annotated[float, Field(gt=0, lt=1)] = 0.7,
                 mas_peak_rise: Annotated[float, Field(gt=0)] = 0.5):
        super().__init__()
        self.mas_lambda = mas_lambda
        self.mas_samples = mas_samples
        self.mas_task_free = mas_task_free
        self.mas_window = mas_window
        self.mas_plateau_mean = mas_plateau_mean
        self.mas_plateau_variance = mas_plateau_variance
        self.mas_hard_buffer = mas_hard_buffer
        self.mas_replay_hard = mas_replay_hard
        self.mas_detection = mas_detection
        self.mas_plateau_drop = mas_plateau_drop
        self.mas_peak_rise = mas_peak_rise

    @property
    def supports_task_free(self) -> bool:
        return self.mas_task_free

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        self.omega_: dict[str, torch.Tensor] = {}
        self.star_: dict[str, torch.Tensor] = {}
        self.updates_ = 0
        self.window_: list[float] = []
        self.plateau_: Optional[tuple[float, float]] = None  # (mean, variance) at the last update
        self.peak_ = True
        self.peak_mean_ = 0.0  # relative detection: the highest window mean since the last peak
        self.low_ = 0.0        # ... and the lowest since the last plateau
        self.detected_steps_: list[int] = []
        self.hard_: Optional[dict[str, torch.Tensor]] = None  # x, y, t of the hardest recent samples
        return self

    # -- importance ------------------------------------------------------------------------
    def importance(self, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean over samples of |d ||f(x)||^2 / d theta|, per sample (exact; one backward pass
        each, so per-task heads and any model work)."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        total = {n: torch.zeros_like(p) for n, p in named}
        was = self.model.training
        self.model.eval()
        for i in range(len(x)):
            out = self.model(x[i:i + 1], t[i:i + 1])
            out = torch.where(torch.isfinite(out), out, torch.zeros_like(out))  # inactive outputs: -inf
            grads = torch.autograd.grad((out ** 2).sum(), [p for _, p in named], allow_unused=True)
            for (n, _), g in zip(named, grads):
                if g is not None:
                    total[n] += g.abs()
        self.model.train(was)
        return {n: v / max(len(x), 1) for n, v in total.items()}

    def _update(self, x: torch.Tensor, t: torch.Tensor) -> None:
        new = self.importance(x, t)
        self.updates_ += 1
        k = 1.0 / self.updates_
        self.omega_ = {n: k * v + (1 - k) * self.omega_[n] if n in self.omega_ and self.omega_[n].shape == v.shape
                       else v for n, v in new.items()}
        self.star_ = {n: p.detach().clone() for n, p in self.model.named_parameters() if n in self.omega_}

    # -- hooks -----------------------------------------------------------------------------
    def penalty(self, logits, batch):
        if not self.omega_ or self.mas_lambda == 0:
            return 0.0
        total = 0.0
        for n, p in self.model.named_parameters():
            if n in self.omega_ and self.omega_[n].shape == p.shape:
                total = total + (self.omega_[n] * (p - self.star_[n]) ** 2).sum()
        return self.mas_lambda / 2 * total

    def augment(self, batch):
        if self.mas_task_free and self.mas_replay_hard and self.hard_ is not None:
            return batch.cat(self.hard_["x"], self.hard_["y"], self.hard_["t"])
        return batch

    @torch.no_grad()
    def after_step(self, batch, logits):
        if not self.mas_task_free:
            return
        losses = F.cross_entropy(logits.float(), batch.y, reduction="none")
        n = batch.n_new
        k = min(self.mas_hard_buffer, len(losses))  # the hardest among the batch and the hard buffer
        top = torch.topk(losses, k).indices
        self.hard_ = {"x": batch.x[top].clone(), "y": batch.y[top].clone(), "t": batch.t[top].clone()}
        if self.observe_loss(float(losses[:n].mean())):
            self.detected_steps_.append(self.context.step)
            with torch.enable_grad():
                self._update(self.hard_["x"], self.hard_["t"])

    def observe_loss(self, loss: float) -> bool:
        """Push one batch loss into the window; True when a plateau follows a peak (an importance
        update is due). ``after_step`` calls it with every stream batch's mean loss."""
        self.window_ = (self.window_ + [float(loss)])[-self.mas_window:]
        if len(self.window_) < self.mas_window:
            return False
        w = torch.tensor(self.window_, dtype=torch.float64)
        mean, var = float(w.mean()), float(w.var(unbiased=False))
        if self.mas_detection == "absolute":  # the paper's thresholds
            if not self.peak_ and self.plateau_ is not None and mean > self.plateau_[0] + self.plateau_[1] ** 0.5:
                self.peak_ = True  # the loss rose: new data
            plateau = mean < self.mas_plateau_mean and var < self.mas_plateau_variance
        else:  # scale-free: relative to the last peak and the lowest point since the plateau
            if not self.peak_:
                self.low_ = min(self.low_, mean)
                if mean > self.low_ + self.mas_peak_rise * (self.peak_mean_ - self.low_):
                    self.peak_, self.peak_mean_ = True, mean
            if self.peak_:
                self.peak_mean_ = max(self.peak_mean_, mean)
            plateau = mean < self.mas_plateau_drop * self.peak_mean_
        if self.peak_ and plateau:  # learned: consolidate
            self.plateau_, self.peak_, self.low_ = (mean, var), False, mean
            return True
        return False

    def after_experience(self, exp):
        if self.mas_task_free:
            return
        d = exp.train
        idx = torch.randperm(len(d), generator=self.generator)[:self.mas_samples].to(d.y.device)
        t = d.t[idx] if d.t is not None else torch.full((len(idx),), exp.task_id, device=d.y.device)
        self._update(d.x[idx], t)

    # -- state -----------------------------------------------------------------------------
    def extra_state(self):
        return {"omega": {n: v.clone() for n, v in self.omega_.items()},
                "star": {n: v.clone() for n, v in self.star_.items()}, "updates": self.updates_,
                "window": list(self.window_), "plateau": None if self.plateau_ is None else list(self.plateau_),
                "peak": self.peak_, "peak_mean": self.peak_mean_, "low": self.low_,
                "detected_steps": list(self.detected_steps_),
                "hard": None if self.hard_ is None else {k: v.clone() for k, v in self.hard_.items()}}

    def load_extra_state(self, state):
        dev = self.device
        self.omega_ = {n: v.to(dev) for n, v in state["omega"].items()}
        self.star_ = {n: v.to(dev) for n, v in state["star"].items()}
        self.updates_ = int(state["updates"])
        self.window_ = [float(v) for v in state["window"]]
        self.plateau_ = None if state["plateau"] is None else tuple(float(v) for v in state["plateau"])
        self.peak_ = bool(state["peak"])
        self.peak_mean_, self.low_ = float(state["peak_mean"]), float(state["low"])
        self.detected_steps_ = [int(v) for v in state["detected_steps"]]
        self.hard_ = None if state["hard"] is None else {k: v.to(dev) for k, v in state["hard"].items()}
