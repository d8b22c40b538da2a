"""ER-ACE: experience replay with an asymmetric cross-entropy.

Caccia, Aljundi, Asadi, Tuytelaars, Pineau & Belilovsky (2022), "New Insights on Reducing
Abrupt Representation Change in Online Continual Learning" (ICLR), github.com/pclucas14/aml.

Replay as in ER (a reservoir memory; each incoming minibatch is joined by a replayed minibatch
of the same size), but the two halves are scored differently::

    loss = CE(incoming, softmax over the classes present in the incoming batch)
         + CE(replayed, softmax over every class seen so far)

The incoming samples therefore never push down the logits of classes absent from their batch
(the old classes), which is what causes the abrupt drift of old representations when new
classes arrive; the replayed samples still learn to tell old from new. The loss is the sum of
the two means, as in the authors' code; before the memory holds anything only the first term
is taken.

Paper defaults (online: one pass, incoming and replayed batch of 10, SGD at lr 0.1, reservoir
memory of 20-100 samples per class); ``mem_size=500`` here (50 per class on a 10-class
stream). Where we differ: the masked logits are set to ``-inf`` (the authors' code uses a
large negative number; the loss is the same); "every class seen so far" is the head's active
outputs (class-IL's incremental head activates a class when it first arrives).
``mem_policy="class_balanced"`` / ``mem_per_class`` are ER's options and not in the paper.
"""
from typing import Annotated, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from ._memory import MemoryStrategy


def ace_loss(logits: torch.Tensor, y: torch.Tensor, n_new: int) -> torch.Tensor:
    """The asymmetric cross-entropy: rows ``[:n_new]`` (incoming) over the classes present
    among their labels, the remaining rows (replayed) over all their finite logits."""
    present = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
    present[y[:n_new]] = True
    loss = F.cross_entropy(logits[:n_new].masked_fill(~present, float("-inf")), y[:n_new])
    if n_new < len(y):
        loss = loss + F.cross_entropy(logits[n_new:], y[n_new:])
    return loss


class ERACE(MemoryStrategy):
    name = "er_ace"
    paper = "Caccia et al. 2022, New Insights on Reducing Abrupt Representation Change in Online CL (ICLR)"
    scenarios = ("class", "task", "domain")

    def __init__(self, mem_size: Annotated[int, Field(ge=1)] = 500,
                 mem_policy: Literal["reservoir", "class_balanced"] = "reservoir",
                 mem_per_class: Optional[Annotated[int, Field(ge=1)]] = None,
                 replay_batch_size: Optional[Annotated[int, Field(ge=1)]] = None):
        super().__init__()
        self.mem_size = mem_size
        self.mem_policy = mem_policy
        self.mem_per_class = mem_per_class
        self.replay_batch_size = replay_batch_size

    def augment(self, batch):
        if len(self.buffer_) == 0:
            return batch
        return batch.cat(*self.buffer_.sample(self.replay_batch_size or batch.n_new))

    def loss(self, logits, batch):
        return ace_loss(logits, batch.y, batch.n_new)
