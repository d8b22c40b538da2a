"""iCaRL: incremental classifier and representation learning.

Rebuffi, Kolesnikov, Sperl & Lampert (2017), "iCaRL: Incremental Classifier and
Representation Learning" (CVPR 2017).

- Exemplars: a memory of ``mem_size`` samples (the paper's K=2000) split equally over the
  classes seen so far; or ``mem_per_class`` per class (van de Ven et al. 2022: 100), the memory
  growing with the classes. Each class's exemplars are chosen by herding (Algorithm 4): greedily,
  the sample that keeps the mean of the chosen L2-normalised features closest to the class
  mean. When the per-class share shrinks, each class keeps its first exemplars (Algorithm 5).
- Training (Algorithm 3): on the union of the experience's data and all exemplars, with a
  sigmoid binary cross-entropy over the active outputs; targets are one-hot labels for the
  new classes and, for the old classes, the sigmoid outputs of a frozen copy of the model
  from the end of the previous experience (distillation). Summed over outputs, averaged over
  the batch, as in van de Ven et al.'s implementation.
- Prediction: nearest mean of exemplars, on L2-normalised features, the means (renormalised)
  recomputed with the current model after each experience; scores are minus the distance,
  ``-inf`` for classes without exemplars.
"""
from typing import Annotated, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from ..streams import Split
from .base import Strategy, frozen_copy


def herding(features: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of ``min(m, n)`` distinct rows of ``features`` (n, d), in the greedy herding order:
    the k-th pick minimises ||mean - (sum of the k-1 picks + f) / k|| (Rebuffi et al., Alg. 4)."""
    f = features.float()
    mu, sq = f.mean(0), (f * f).sum(1)
    total, chosen = torch.zeros_like(mu), []
    taken = torch.zeros(len(f), dtype=torch.bool, device=f.device)
    for k in range(1, min(m, len(f)) + 1):
        a = mu - total / k  # ||a - f/k||^2 = ||a||^2 - 2/k a.f + ||f||^2/k^2
        score = (sq / k - 2 * (f @ a)).masked_fill(taken, float("inf"))
        i = int(score.argmin())
        chosen.append(i)
        taken[i] = True
        total += f[i]
    return torch.tensor(chosen, dtype=torch.long, device=features.device)


class ICaRL(Strategy):
    name = "icarl"
    epochs_from_stream = False  # the experience's samples and the exemplars
    paper = "Rebuffi et al. 2017, iCaRL: Incremental Classifier and Representation Learning"
    scenarios = ("class",)

    def __init__(self, mem_size: Annotated[int, Field(ge=1)] = 2000,
                 mem_per_class: Optional[Annotated[int, Field(ge=1)]] = None):
        super().__init__()
        self.mem_size = mem_size
        self.mem_per_class = mem_per_class

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        self.exemplars_ = None     # dict x, y, t, rank (herding order within the class)
        self.class_means_ = None   # (n_outputs, d), NaN rows for classes without exemplars
        self.old_model_ = None
        return self

    @torch.no_grad()
    def _features(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        return torch.cat([F.normalize(self.model.features(x[s:s + batch_size]), dim=1)
                          for s in range(0, max(len(x), 1), batch_size)])  # empty x: one empty chunk

    def train_data(self, exp):
        if self.exemplars_ is None:
            return exp.train
        d, e = exp.train, self.exemplars_
        t = d.t if d.t is not None else torch.full_like(d.y, exp.task_id)
        return Split(torch.cat([d.x, e["x"]]), torch.cat([d.y, e["y"]]), torch.cat([t, e["t"]]))

    def stream_rows(self, exp, data):  # the incoming samples first, the exemplars after them
        return torch.arange(len(data), device=data.y.device) < len(exp.train)

    def loss(self, logits, batch):
        active = torch.isfinite(logits).all(0)
        target = F.one_hot(batch.y, logits.shape[1]).to(logits.dtype)
        if self.old_model_ is not None:
            with torch.no_grad():
                old = self.old_model_(batch.x, batch.t)
            old_cols = torch.isfinite(old).all(0) & active
            target[:, old_cols] = torch.sigmoid(old[:, old_cols])
        bce = F.binary_cross_entropy_with_logits(logits[:, active], target[:, active], reduction="none")
        return bce.sum(1).mean()

    @torch.no_grad()
    def after_experience(self, exp):
        was_training = self.model.training
        self.model.eval()
        d = exp.train
        t = d.t if d.t is not None else torch.full_like(d.y, exp.task_id)
        e = self.exemplars_ or {"x": d.x[:0], "y": d.y[:0], "t": t[:0], "rank": d.y[:0]}
        n_classes = len(set(e["y"].tolist()) | set(exp.classes))
        m = self.mem_per_class if self.mem_per_class is not None else self.mem_size // n_classes
        keep = (e["rank"] < m) & ~torch.isin(e["y"], torch.tensor(exp.classes, device=e["y"].device))
        parts = [{k: v[keep] for k, v in e.items()}]
        for c in exp.classes:  # herding over the class's new data and any exemplars it had
            pool = {"x": torch.cat([d.x[d.y == c], e["x"][e["y"] == c]]),
                    "y": torch.cat([d.y[d.y == c], e["y"][e["y"] == c]]),
                    "t": torch.cat([t[d.y == c], e["t"][e["y"] == c]])}
            idx = herding(self._features(pool["x"]), m)
            rank = torch.arange(len(idx), device=idx.device)
            parts.append({k: v[idx] for k, v in pool.items()} | {"rank": rank})
        self.exemplars_ = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        self._update_means()
        self.old_model_ = frozen_copy(self.model)
        self.model.train(was_training)

    def _update_means(self):
        e = self.exemplars_
        feats = self._features(e["x"])
        n_out = self.model(e["x"][:1]).shape[1]
        means = feats.new_full((n_out, feats.shape[1]), float("nan"))
        for c in torch.unique(e["y"]).tolist():
            means[c] = F.normalize(feats[e["y"] == c].mean(0), dim=0)
        self.class_means_ = means

    @torch.no_grad()
    def predict(self, x, task=None):
        if self.class_means_ is None:
            return self.model(x, task)
        known = ~torch.isnan(self.class_means_[:, 0])
        dist = torch.cdist(self._features(x), self.class_means_.nan_to_num(0.0))
        return (-dist).masked_fill(~known, float("-inf"))

    def extra_state(self):
        return {"exemplars": self.exemplars_ or {}, "class_means": self.class_means_,
                "old_model": self.old_model_.state_dict() if self.old_model_ is not None else {}}

    def load_extra_state(self, state):
        self.exemplars_ = {k: v.to(self.device) for k, v in state["exemplars"].items()} or None
        means = state["class_means"]
        self.class_means_ = means.to(self.device) if means is not None else None
        self.old_model_ = frozen_copy(self.model, state["old_model"]) if state["old_model"] else None
