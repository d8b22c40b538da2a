"""Experience replay (ER).

Chaudhry, Rohrbach, Elhoseiny, Ajanthan, Dokania, Torr & Ranzato (2019), "On Tiny Episodic
Memories in Continual Learning" (arXiv:1902.10486). Mammoth's ``er.py`` has the same shape.

Each training minibatch is joined by a minibatch drawn uniformly from a memory of earlier
samples and the usual cross-entropy is taken over both. In the paper the replayed minibatch
has the size of the stream's minibatch (``replay_batch_size=None``), and reservoir sampling
is the memory policy that works best; ``mem_size=2000`` is the total budget iCaRL uses
(Rebuffi et al. 2017, K=2000) -- the paper itself studies tiny memories (1-5 per class).

Memory filling (``lifelong.buffers``):
- ``mem_policy="reservoir"``: online, every stream sample (not the replayed ones) is offered
  to the reservoir in ``after_step``; no task boundaries needed.
- ``mem_policy="class_balanced"``: at the end of each experience a random selection per class
  of its training data is stored, old classes shrinking to an equal share of ``mem_size``.
- ``mem_per_class=k`` (overrides ``mem_size``): as class-balanced but ``k`` per class, the
  memory growing with the classes -- van de Ven, Tuytelaars & Tolias (2022) store 100 per class,
  selected at random at the end of each context.

Loss weighting: by default the cross-entropy is the mean over the joined batch (new and
replayed samples weigh alike). ``er_new_weight=w`` instead takes
``w * mean(CE new) + (1 - w) * mean(CE replayed)``, as De Lange, van de Ven & Tuytelaars
(2023, the stability-gap paper) do with ``Lw_new = 0.3`` on Split MNIST.
"""
from typing import Annotated, Literal, Optional

import torch.nn.functional as F
from pydantic import Field

from ._memory import MemoryStrategy


class ER(MemoryStrategy):
    name = "er"
    paper = "Chaudhry et al. 2019, On Tiny Episodic Memories in Continual Learning"

    def __init__(self, mem_size: Annotated[int, Field(ge=1)] = 2000,
                 mem_policy: Literal["reservoir", "class_balanced"] = "reservoir",
                 mem_per_class: Optional[Annotated[int, Field(ge=1)]] = None,
                 replay_batch_size: Optional[Annotated[int, Field(ge=1)]] = None,
                 er_new_weight: Optional[Annotated[float, Field(ge=0, le=1)]] = None):
        super().__init__()
        self.mem_size = mem_size
        self.mem_policy = mem_policy
        self.mem_per_class = mem_per_class
        self.replay_batch_size = replay_batch_size
        self.er_new_weight = er_new_weight

    def augment(self, batch):
        if len(self.buffer_) == 0:
            return batch
        return batch.cat(*self.buffer_.sample(self.replay_batch_size or batch.n_new))

    def loss(self, logits, batch):
        w, n = self.er_new_weight, batch.n_new
        if w is None or n == len(batch.y):
            return F.cross_entropy(logits, batch.y)
        return w * F.cross_entropy(logits[:n], batch.y[:n]) + (1 - w) * F.cross_entropy(logits[n:], batch.y[n:])
