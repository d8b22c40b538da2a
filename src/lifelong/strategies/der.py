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

One forward per step. Mammoth runs the network three times per DER++ step (the incoming
minibatch, then each replayed one); at batch 10 the per-call cost dominates, so ``forward``
draws the replayed minibatches first (the same draws, in the same order) and runs the network
once on the three joined; ``penalty`` takes its rows from that output. The losses are the same
sums over the same rows (only the float order of a matrix product can differ). A model with a
batch-norm layer in training mode is run once per minibatch as in Mammoth, since joining would
change the statistics each minibatch is normalised with. ``penalty`` called without that
forward (by hand, or with another member owning the forward) draws and runs the network itself.
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
        self._joined = None  # (batch, stored rows, outputs per draw) of the step in progress
        self.replayed_rows_ = 0  # replayed samples trained (results.json's training FLOPs count them)
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

    n_draws = 1  # replayed minibatches per step (DER++: 2)

    def _mergeable(self) -> bool:
        return not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training
                       for m in self.model.modules())

    def _outputs(self, x, t):
        """The network on ``x``: the head's unmasked outputs when it is one linear layer, else the logits."""
        return self._raw(x) if self._linear_head is not None else self.model(x, t)

    def _draw(self, batch) -> tuple[dict, list[int]]:
        """This step's replayed minibatches (``n_draws`` independent draws, in order), gathered
        in one indexing per stored tensor: the stored rows and each draw's size."""
        idx = [self.buffer_.sample_indices(self.replay_batch_size or batch.n_new) for _ in range(self.n_draws)]
        return self.buffer_.get(torch.cat(idx) if len(idx) > 1 else idx[0]), [len(i) for i in idx]

    def forward(self, batch):
        self._joined = None
        x, t, n = batch.x, batch.t, len(batch.x)
        if len(self.buffer_) and batch.n_new and self._mergeable():
            m, sizes = self._draw(batch)
            out, *rows = self._outputs(torch.cat([x, m["x"]]), torch.cat([t, m["t"]])).split([n] + sizes)
            self._joined = (batch, m, rows)
        else:
            out = self._outputs(x, t)
        if self._linear_head is None:
            self.raw_ = None
            return out
        self.raw_ = out.detach()  # what after_step stores: this forward's unmasked outputs
        return out.masked_fill(~self.model.head.active, float("-inf"))

    def _replayed(self, batch) -> tuple[dict, list]:
        """This step's replayed rows (all draws) and the network's outputs on each draw: from the
        joined forward when it ran for this batch, else drawn and run here (one forward a draw)."""
        if self._joined is not None and self._joined[0] is batch:
            m, outs = self._joined[1], self._joined[2]
        else:
            m, sizes = self._draw(batch)
            outs = [self._outputs(x, t) for x, t in zip(m["x"].split(sizes), m["t"].split(sizes))]
        self.replayed_rows_ += len(m["y"])
        return m, outs

    def extra_trained_samples(self) -> int:
        """The replayed samples trained beside the loop's batches (``lifelong.sparse.strategy_samples``)."""
        return self.replayed_rows_

    def _logits(self, out):
        """Outputs of ``_outputs`` as logits (inactive outputs of a linear head at -inf)."""
        return out if self._linear_head is None else out.masked_fill(~self.model.head.active, float("-inf"))

    def _mse(self, out, stored):
        if self._linear_head is not None:
            return F.mse_loss(out, stored.to(out.dtype))
        return masked_mse(out, stored)

    def penalty(self, logits, batch):
        if len(self.buffer_) == 0:
            return 0.0
        m, (out,) = self._replayed(batch)
        return self.der_alpha * self._mse(out, m["logits"])

    def after_step(self, batch, logits):
        self._joined = None  # the step is over: let its graph go
        n = batch.n_new  # the stream's samples only, with the logits of the forward before the step
        stored = logits if getattr(self, "raw_", None) is None else self.raw_
        self.buffer_.add(batch.x[:n], batch.y[:n], batch.t[:n], logits=stored[:n].float())

    def extra_state(self):
        return {"buffer": self.buffer_.state_dict(), "replayed_rows": self.replayed_rows_}

    def load_extra_state(self, state):
        self.replayed_rows_ = int(state.get("replayed_rows", 0))
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

    n_draws = 2  # the MSE's minibatch, then the cross-entropy's: two independent draws

    def penalty(self, logits, batch):
        if len(self.buffer_) == 0:
            return 0.0
        m, (o1, o2) = self._replayed(batch)
        k = len(o1)  # the MSE's rows come first, then the cross-entropy's
        return self.der_alpha * self._mse(o1, m["logits"][:k]) + self.derpp_beta * F.cross_entropy(
            self._logits(o2), m["y"][k:])
