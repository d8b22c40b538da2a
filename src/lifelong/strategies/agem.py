"""Averaged gradient episodic memory (A-GEM).

Chaudhry, Ranzato, Rohrbach & Elhoseiny (2019), "Efficient Lifelong Learning with A-GEM"
(ICLR 2019).

Stored samples are never trained on. Before each optimizer step a reference gradient
``g_ref`` is computed on a random batch of ``agem_sample_size`` stored samples; if the
minibatch gradient ``g`` would increase that loss (``g . g_ref < 0``), it is projected to
``g - (g . g_ref / g_ref . g_ref) g_ref`` (all parameters flattened into one vector).

Defaults: ``agem_sample_size=256`` (the authors' code: ``EPS_MEM_BATCH_SIZE = 256`` for MNIST
and CIFAR). The memory is filled at the end of each task with a class-balanced random
selection, as in the paper (``mem_policy="class_balanced"``; the authors' MNIST setting keeps
25 per class, van de Ven et al. 2022 use 100 per class: ``mem_per_class=100``);
``mem_policy="reservoir"`` fills it online instead (Mammoth's A-GEM-R).
``mem_size=2000`` is the budget shared with ER and iCaRL (Rebuffi et al. 2017).
"""
from typing import Annotated, Literal, Optional

import torch
from pydantic import Field

from ._memory import MemoryStrategy
from .base import Batch

EPS = 1e-7  # keeps the projection finite when g_ref = 0 (van de Ven's eps_agem)


class AGEM(MemoryStrategy):
    name = "agem"
    paper = "Chaudhry et al. 2019, Efficient Lifelong Learning with A-GEM"

    def __init__(self, mem_size: Annotated[int, Field(ge=1)] = 2000,
                 mem_policy: Literal["reservoir", "class_balanced"] = "class_balanced",
                 mem_per_class: Optional[Annotated[int, Field(ge=1)]] = None,
                 agem_sample_size: Annotated[int, Field(ge=1)] = 256):
        super().__init__()
        self.mem_size = mem_size
        self.mem_policy = mem_policy
        self.mem_per_class = mem_per_class
        self.agem_sample_size = agem_sample_size

    def before_step(self, batch):
        if len(self.buffer_) == 0:
            return
        params = [p for p in self.model.parameters() if p.requires_grad]
        x, y, t = self.buffer_.sample(self.agem_sample_size)
        ref_loss = self.loss(self.model(x, t), Batch(x, y, t))
        g_ref = torch.autograd.grad(ref_loss, params, allow_unused=True)  # leaves p.grad alone
        pairs = [(p, r) for p, r in zip(params, g_ref) if r is not None or p.grad is not None]
        g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p, _ in pairs])
        r = torch.cat([(r if r is not None else torch.zeros_like(p)).flatten() for p, r in pairs])
        dot = g @ r
        if dot >= 0:  # the step does not increase the loss on the memory: keep g
            return
        g -= dot / (r @ r + EPS) * r
        offset = 0
        for p, _ in pairs:
            p.grad = g[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
