"""ER-ACE, a strategy of your own in its own file: experience replay with an asymmetric cross-entropy.

Caccia, Aljundi, Asadi, Tuytelaars, Pineau & Belilovsky (2022), "New Insights on Reducing Abrupt
Representation Change in Online Continual Learning" (ICLR). Replay as in ER (a reservoir memory,
a replayed minibatch as large as the stream's), but the stream's samples are scored only against
the classes present in their own minibatch, so learning new classes does not push down the
logits of old ones; the replayed samples get the usual cross-entropy over all active classes.
The loss is the sum of the two means, as in the paper's code. Our memory defaults are ER's.

Run it from the repository root (a config may import it only once you allow its module):

    LIFELONG_ALLOW_MODULES=my_strategy PYTHONPATH=examples \\
        lifelong run --benchmark split-digits --strategy my_strategy:MyReplay+ewc --iterations 100
"""
from typing import Annotated, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from lifelong.strategies.er import ER


class MyReplay(ER):
    name = "my_replay"  # the library has the full method as "er_ace"
    paper = "Caccia et al. 2022, New Insights on Reducing Abrupt Representation Change in Online CL (ICLR)"
    scenarios = ("class",)

    def __init__(self, mem_size: Annotated[int, Field(ge=1)] = 2000,
                 replay_batch_size: Optional[Annotated[int, Field(ge=1)]] = None):
        super().__init__(mem_size=mem_size, replay_batch_size=replay_batch_size)

    def loss(self, logits, batch):
        n = batch.n_new  # the stream's samples come first, the replayed ones after them
        present = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        present[batch.y[:n]] = True
        loss = F.cross_entropy(logits[:n].masked_fill(~present, float("-inf")), batch.y[:n])
        if n < len(batch.y):
            loss = loss + F.cross_entropy(logits[n:], batch.y[n:])
        return loss
