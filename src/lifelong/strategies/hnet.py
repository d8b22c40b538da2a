"""HNET: task-conditioned hypernetworks.

von Oswald, Henning, Grewe & Sacramento (2020), "Continual learning with hypernetworks"
(ICLR); reference code github.com/chrhenning/hypercl (``mnist/``, HNET+TIR in CL scenario 1,
i.e. task-IL with the task id given).

A hypernetwork ``h`` maps a learned embedding ``e_t`` of each task to ALL weights of the target
network (here the model's backbone and a linear output layer over the label space, of which task
``t`` uses its classes' rows: the reference's multi-head output of 2 units per task). While task
``t`` trains, ``h``'s parameters and ``e_t`` are optimised on

    CE(f(x; h(e_t)), y) + beta / (t-1) * sum_{t' < t} || h(e_t') - h*(e_t') ||^2

where ``h*(e_t')`` are the outputs stored when the previous task ended (the hypernetwork before
task ``t``). Earlier embeddings stay fixed. At test time task ``t``'s network is ``h(e_t)``.

Chunking (the paper's Fig. 1b, ``ChunkedHyperNetworkHandler``): the target weights are split into
chunks of ``hnet_chunk_size``; one small MLP maps ``[e_t, c_i]`` (``c_i`` a learned embedding of
chunk ``i``) to chunk ``i``, so the hypernetwork can have fewer parameters than the target network.

Defaults (hypercl ``mnist/train_args_default.py``, split MNIST classifier hypernetwork):
``hnet_beta = 0.01``, task embedding size 96 (``class_temb_size``), chunk embedding size 96
(``class_emb_size``), hidden layers ``[10, 10]`` (``class_hnet_arch``) with ReLU, chunks of 42000
weights (``class_hyper_chunks``); embeddings initialised N(0, 1) (``std_normal_temb``,
``std_normal_emb``), every hypernetwork matrix Xavier-uniform and biases 0. The run's optimizer
trains them (the reference: Adam, lr 0.001, 2000 iterations of batch 128, target MLP 400-400).
For permuted MNIST the reference uses ``hnet_beta 0.1``, embeddings 24 and 8, ``[25, 25]`` ELU,
chunks of 78000, lr 1e-4, target MLP 1000-1000.

Where we differ:
- No look-ahead: the reference (by default) evaluates the regulariser at ``theta + dtheta``, the
  step the optimizer is about to take on the task loss; we regularise at ``theta`` (the paper's
  Eq. 2 without the look-ahead, which it reports as a small refinement).
- One optimizer (the run's) for the hypernetwork and the embedding; the reference has two Adams
  with the same settings.
- ``predict(x, None)`` (task-agnostic): every learned task's network answers, each label takes its
  highest logit (the reference infers the task instead, HNET+ENT/TIR: not implemented here).
- The trainable parameters (hypernetwork, chunk and task embeddings) are
  ``strategy.parameter_count()``; the run's ``parameters.total`` counts the target network,
  whose weights are generated (the model's own parameters are never trained).

Task-IL only (a multi-head model). It owns ``forward`` and ``predict``.
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional

import torch
from pydantic import Field
from torch import nn

from ._hypernet import HypernetStrategy, xavier_


class ChunkedMLP(nn.Module):
    """An MLP from ``[task embedding, chunk embedding]`` to one chunk of target weights, applied to
    every chunk (``chunk=None``: one chunk of all weights and no chunk embeddings)."""

    def __init__(self, n_out: int, emb_dim: int, hidden: list[int], chunk: int | None, chunk_emb_dim: int,
                 activation: str, generator: torch.Generator):
        super().__init__()
        self.n_out = n_out
        self.chunk = min(chunk or n_out, n_out)
        self.n_chunks = -(-n_out // self.chunk)
        self.act = {"relu": torch.relu, "elu": nn.functional.elu}[activation]
        ce = chunk_emb_dim if self.n_chunks > 1 else 0
        self.chunk_emb = nn.Parameter(torch.randn(self.n_chunks, ce, generator=generator))
        dims = [emb_dim + ce, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.out = nn.Linear(dims[-1], self.chunk)
        for m in [*self.layers, self.out]:
            xavier_(m.weight, generator)
            nn.init.zeros_(m.bias)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """(k, emb_dim) embeddings -> (k, n_out) target weights."""
        full, rest = self.parts(emb)
        return full if rest is None else torch.cat([full, rest], dim=1)

    def parts(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The target weights in two pieces: the full chunks (k, chunk * full chunks) and the last
        chunk's weights (k, n_out mod chunk), or None where the chunks divide n_out; the last chunk's
        output units past n_out are never computed."""
        k = len(emb)
        h = torch.cat([emb[:, None].expand(k, self.n_chunks, emb.shape[1]),
                       self.chunk_emb[None].expand(k, -1, -1)], dim=2)
        for layer in self.layers:
            h = self.act(layer(h))
        n_full, rem = divmod(self.n_out, self.chunk)
        full = self.out(h[:, :n_full]).reshape(k, -1)
        if not rem:
            return full, None
        return full, nn.functional.linear(h[:, n_full], self.out.weight[:rem], self.out.bias[:rem])


class HNET(HypernetStrategy):
    name = "hnet"
    paper = "von Oswald et al. 2020, Continual learning with hypernetworks (ICLR)"
    scenarios = ("task",)

    def __init__(self, hnet_beta: Annotated[float, Field(ge=0)] = 0.01,
                 hnet_emb_dim: Annotated[int, Field(ge=1)] = 96,
                 hnet_hidden: tuple[Annotated[int, Field(ge=1)], ...] = (10, 10),
                 hnet_chunk_size: Optional[Annotated[int, Field(ge=1)]] = 42000,
                 hnet_chunk_emb_dim: Annotated[int, Field(ge=1)] = 96,
                 hnet_activation: Literal["relu", "elu"] = "relu"):
        super().__init__()
        self.hnet_beta = hnet_beta
        self.hnet_emb_dim = hnet_emb_dim
        self.hnet_hidden = hnet_hidden
        self.hnet_chunk_size = hnet_chunk_size
        self.hnet_chunk_emb_dim = hnet_chunk_emb_dim
        self.hnet_activation = hnet_activation

    def _build(self, n_out):
        return ChunkedMLP(n_out, self.hnet_emb_dim, list(self.hnet_hidden), self.hnet_chunk_size,
                          self.hnet_chunk_emb_dim, self.hnet_activation, self.generator)

    def _beta(self):
        return self.hnet_beta

    def _emb_dim(self):
        return self.hnet_emb_dim
