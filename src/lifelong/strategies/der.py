"""DER and DER++: dark experience replay (replay of stored logits).

Buzzega, Boschini, Porrello, Abati & Calderara (2020), "Dark Experience for General Continual
Learning: a Strong, Simple Baseline" (NeurIPS), github.com/aimagelab/mammoth (``der.py``,
``derpp.py``).

A reservoir memory stores every stream sample it keeps together with the logits the network
gave it when it was seen (computed in the training forward pass, before that step's update).
On each step a replayed minibatch is drawn and the network's current logits on it are pulled
toward the stored ones::

    DER:    loss = CE(incoming) + der_alpha * MSE(f(x'), z')                (x', z') ~ memory
    DER++:  loss = CE(incoming) + der_alpha * MSE(f(x'), z') + derpp_beta * CE(f(x''), y'')

with ``(x'', y'')`` a second, independent replayed minibatch. Replayed minibatches have the
stream's minibatch size unless ``replay_batch_size`` is set.

Defaults: the paper's (its appendix, Mammoth's ``best_args``) for Seq-MNIST with a 500-sample
buffer: ``mem_size=500``, ``der_alpha=1.0``, ``derpp_beta=0.5`` (lr 0.03 SGD, batch 10, one
epoch); with 200 samples it uses alpha 0.2 (DER) and alpha 0.2, beta 1.0 (DER++).

Where we differ: our heads return ``-inf`` for outputs that were not active when a sample was
stored (classes not seen yet, other tasks' heads). The MSE is taken over the entries that are
finite both in the stored and in the current logits (the classes the stored logits know),
averaged over those entries; Mammoth's single head has every output active from the start
and averages over all of them. The logits are stored in the buffer's ``logits`` extra.
"""
from typing import Annotated, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from ..buffers import ReservoirBuffer
from .base import Strategy


def masked_mse(current: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over the entries finite in both (0 when there are none)."""
    ok = torch.isfinite(stored) & torch.isfinite(current)
    if not ok.any():
        return current.new_zeros(())
    return F.mse_loss(current[ok], stored[ok].to(current.dtype))


class DER(Strategy):
    name = "der"
    paper = "Buzzega et al. 2020, Dark Experience for General Continual Learning (NeurIPS)"

    def __init__(self, mem_size: Annotated[int, Field(ge=1)] = 500,
                 der_alpha: Annotated[float, Field(ge=0)] = 1.0,
                 replay_batch_size: Optional[Annotated[int, Field(ge=1)]] = None):
        super().__init__()
        self.mem_size = mem_size
        self.der_alpha = der_alpha
        self.replay_batch_size = replay_batch_size

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        self.buffer_ = ReservoirBuffer(self.mem_size, seed=seed + 2)
        return self

    def _replay(self, n: int) -> dict:
        return self.buffer_.get(self.buffer_.sample_indices(self.replay_batch_size or n))

    def penalty(self, logits, batch):
        if len(self.buffer_) == 0:
            return 0.0
        m = self._replay(batch.n_new)
        return self.der_alpha * masked_mse(self.model(m["x"], m["t"]), m["logits"])

    def after_step(self, batch, logits):
        n = batch.n_new  # the stream's samples only, with the logits of the forward before the step
        self.buffer_.add(batch.x[:n], batch.y[:n], batch.t[:n], logits=logits[:n].float())

    def extra_state(self):
        return {"buffer": self.buffer_.state_dict()}

    def load_extra_state(self, state):
        self.buffer_ = ReservoirBuffer(self.mem_size)
        self.buffer_.load_state_dict(state["buffer"])
        self.buffer_.to(self.device)


class DERPP(DER):
    name = "derpp"
    paper = "Buzzega et al. 2020, Dark Experience for General Continual Learning (NeurIPS), DER++"

    def __init__(self, mem_size: Annotated[int, Field(ge=1)] = 500,
                 der_alpha: Annotated[float, Field(ge=0)] = 1.0,
                 derpp_beta: Annotated[float, Field(ge=0)] = 0.5,
                 replay_batch_size: Optional[Annotated[int, Field(ge=1)]] = None):
        super().__init__(mem_size=mem_size, der_alpha=der_alpha, replay_batch_size=replay_batch_size)
        self.derpp_beta = derpp_beta

    def penalty(self, logits, batch):
        if len(self.buffer_) == 0:
            return 0.0
        out = super().penalty(logits, batch)
        m = self._replay(batch.n_new)  # a second, independent draw
        return out + self.derpp_beta * F.cross_entropy(self.model(m["x"], m["t"]), m["y"])
