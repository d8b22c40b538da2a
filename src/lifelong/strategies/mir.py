"""MIR: maximally interfered retrieval.

Aljundi, Caccia, Belilovsky, Caccia, Lin, Charlin & Tuytelaars (2019), "Online Continual
Learning with Maximal Interfered Retrieval" (NeurIPS), github.com/optimass/Maximally_Interfered_Retrieval
(ER-MIR, ``mir_replay``).

Replay as in ER with a reservoir memory, but the replayed samples are not drawn uniformly.
For each incoming minibatch:

1. ``mir_candidates`` (C) samples are drawn uniformly from the memory;
2. a virtual SGD step is taken on the incoming minibatch at the CURRENT learning rate
   (``self.context.lr``, after any schedule): ``theta_v = theta - lr * grad CE(incoming)``;
3. each candidate is scored by how much that step would raise its loss,
   ``CE(f_theta_v(x), y) - CE(f_theta(x), y)``, and the k with the largest increase
   (``replay_batch_size``, default the stream's minibatch size) are replayed with the
   incoming samples (one cross-entropy over the joined batch, as ER).

The virtual step uses ``torch.func.functional_call`` (the model is never modified) and is a
plain SGD step whatever the optimizer is, as in the paper.

Paper defaults (MNIST): C = 50 candidates (``--subsample 50``), k = 10 replayed, incoming
batch 10, SGD at lr 0.1, one pass; memory 50 per class (``mem_size=500`` on 10 classes).
Where we differ: the authors' code draws candidates only from previous tasks' samples (it
knows the task boundaries); here from the whole memory (task-free). Its loss is the sum of
the incoming and replayed means; ours is the mean over the joined batch, the same up to a
factor 2 when both halves have the same size (then lr 0.05 here = their 0.1). When k > C,
k candidates are drawn. The scoring forwards run in the model's training mode, so a model with
batch norm also updates its running statistics on the candidates.
"""
from typing import Annotated, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch.func import functional_call

from ._memory import MemoryStrategy


def interference_scores(model: torch.nn.Module, x, y, t, cand_x, cand_y, cand_t, lr: float) -> torch.Tensor:
    """Per candidate, ``CE after - CE before`` a virtual SGD step at ``lr`` on ``(x, y, t)``."""
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    grads = torch.autograd.grad(F.cross_entropy(model(x, t), y), params, allow_unused=True)
    virtual = {n: p.detach() - lr * g if g is not None else p.detach() for n, p, g in zip(names, params, grads)}
    with torch.no_grad():
        before = F.cross_entropy(model(cand_x, cand_t), cand_y, reduction="none")
        after = F.cross_entropy(functional_call(model, virtual, (cand_x, cand_t)), cand_y, reduction="none")
    return after - before


class MIR(MemoryStrategy):
    name = "mir"
    paper = "Aljundi et al. 2019, Online Continual Learning with Maximal Interfered Retrieval (NeurIPS)"
    mem_policy = "reservoir"  # MemoryStrategy: an online reservoir, filled in after_step
    mem_per_class = None

    def __init__(self, mem_size: Annotated[int, Field(ge=1)] = 500,
                 mir_candidates: Annotated[int, Field(ge=1)] = 50,
                 replay_batch_size: Optional[Annotated[int, Field(ge=1)]] = None):
        super().__init__()
        self.mem_size = mem_size
        self.mir_candidates = mir_candidates
        self.replay_batch_size = replay_batch_size

    def augment(self, batch):
        if len(self.buffer_) == 0:
            return batch
        k = self.replay_batch_size or batch.n_new
        cx, cy, ct = self.buffer_.sample(max(self.mir_candidates, k))
        lr = self.context.lr if self.context.lr is not None else 0.0
        n = batch.n_new  # the virtual step is on the incoming samples only
        scores = interference_scores(self.model, batch.x[:n], batch.y[:n], batch.t[:n], cx, cy, ct, lr)
        top = torch.sort(scores, descending=True, stable=True).indices[:k]  # ties: earlier draw first
        return batch.cat(cx[top], cy[top], ct[top])
