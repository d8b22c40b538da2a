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

Logits, masked or not. Our heads return ``-inf`` for outputs that are not active (classes not
seen yet, other tasks' heads), where Mammoth's single head has every output active from the
start, so its stored logits also pin the outputs of classes that had not arrived yet (low),
and the MSE keeps them low on old samples when those classes come. With a head that is one
linear layer over the label space (class- and domain-IL), DER stores and compares the
*unmasked* outputs of that layer, over every entry, as Mammoth does (the cross-entropy still
sees only active outputs). With per-task heads (task-IL) the MSE is taken over the entries
finite in both the stored and the current logits. The logits are in the buffer's ``logits``
extra.
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

    @property
    def _linear_head(self):
        """The head's single linear layer over the label space, or None (per-task heads)."""
        head = getattr(self.model, "head", None)
        layer = getattr(head, "linear", None)
        return layer if isinstance(layer, torch.nn.Linear) and hasattr(head, "active") else None

    def _raw(self, x):
        return self._linear_head(self.model.features(x))

    def forward(self, batch):
        if self._linear_head is None:
            self.raw_ = None
            return self.model(batch.x, batch.t)
        raw = self._raw(batch.x)
        self.raw_ = raw.detach()  # what after_step stores: this forward's unmasked outputs
        return raw.masked_fill(~self.model.head.active, float("-inf"))

    def penalty(self, logits, batch):
        if len(self.buffer_) == 0:
            return 0.0
        m = self._replay(batch.n_new)
        if self._linear_head is not None:
            return self.der_alpha * F.mse_loss(self._raw(m["x"]), m["logits"].to(logits.dtype))
        return self.der_alpha * masked_mse(self.model(m["x"], m["t"]), m["logits"])

    def after_step(self, batch, logits):
        n = batch.n_new  # the stream's samples only, with the logits of the forward before the step
        stored = logits if getattr(self, "raw_", None) is None else self.raw_
        self.buffer_.add(batch.x[:n], batch.y[:n], batch.t[:n], logits=stored[:n].float())

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
