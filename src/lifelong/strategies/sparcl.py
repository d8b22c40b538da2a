"""SparCL: sparse continual learning on the edge, on top of DER++.

Wang, Zhan, Gong, Yuan, Niu, Jian, Ren, Ioannidis, Wang & Dy (NeurIPS 2022), "SparCL: Sparse
Continual Learning on the Edge" (arXiv:2209.09476); reference code github.com/neu-spiral/SparCL
(``main_sparse_train_w_data_gradient_efficient.py``, ``prune_utils/retrain.py``,
``prune_utils/utils_pr.py`` and the script ``run_mag_prune_irr_sp_EM_0.75_gradient0.80.sh``).

Three parts, each switchable, make a replay method cheaper to train. The paper's main base
method is DER++, and so is ours: ``SparCL`` subclasses :class:`~lifelong.strategies.der.DERPP`
(a composition ``sparcl_parts+derpp`` could not count DER++'s replay passes, which happen
inside its ``penalty``, nor own the loss next to it). With every part off
(``sparcl_sparsity=0``, ``sparcl_ddr=False``, ``sparcl_dgm=False``,
``sparcl_current_task_ce=False``) it is DER++ bit for bit (tested).

- **TDM**, task-aware dynamic masking (``sparcl_tdm``). The backbone's Linear/Conv2d weights
  are kept at sparsity ``sparcl_sparsity`` over the whole stream, one mask
  (:class:`lifelong.sparse.SparseMasks`, ``sparcl_distribution``). The mask changes
  ``sparcl_mask_updates - 1`` times per experience, at iterations ``k n / K``: when an
  experience starts (k = 0) every layer grows ``sparcl_update_fraction`` of its weights at
  random positions, at 0 (room for the new task); at every later update it keeps the weights of
  highest *current weight importance* ``CWI = |w| + sparcl_grad_weight |dL/dw|`` down to its
  target count minus that fraction and regrows random ones back to the target. ``L`` is the
  step's whole training loss, stream data and replayed data: the paper's two gradient terms
  with alpha = beta, merged as the reference code does. With ``sparcl_tdm=False`` the initial
  random mask never changes (static sparse training at the same sparsity).
- **DDR**, dynamic data removal (``sparcl_ddr``). In ``sparcl_ddr_stages`` stages, evenly over
  the first ``sparcl_ddr_end`` of each experience, ``sparcl_ddr_ratio`` of the experience's
  training samples are removed, the least informative first: fewest forgetting events since
  the previous stage (Toneva et al. 2019: a presentation classified right, the next one wrong;
  counted on the training forward), never-learned samples last. Removed samples are dropped
  from every later minibatch (``augment``): never trained on again, never inserted in the
  buffer, not counted in the loop's ``samples_trained`` (so the training FLOPs fall).
- **DGM**, dynamic gradient masking (``sparcl_dgm``). Only the largest gradients of the active
  weights are applied. Every ``sparcl_dgm_every`` iterations, at every experience start and
  after every mask update, each layer keeps the ``(1 - g) / (1 - s)`` of its active weights
  with the largest |gradient| (g = ``sparcl_gradient_sparsity``, s = ``sparcl_sparsity``: the
  overall gradient sparsity is g); in between, that gradient mask is applied as it stands.

``sparcl_current_task_ce``: the stream samples' cross-entropy over the current experience's
classes only (the reference script's ``--use_cl_mask``; replayed samples keep every seen
class). It changes class-IL accuracy by itself, so it is a switch of its own, and the
benchmark separates its effect from the three parts' (``docs/sparse.md``).

Defaults: the reference script (Split CIFAR-10, ResNet-18, 50 epochs per task) and argparse
defaults. ``sparcl_sparsity=0.75`` (the script's profile ``resnet18_0.75.yaml``; the paper also
reports 0.90 and 0.95), ``sparcl_distribution="uniform"`` (the profile gives every masked layer
0.75), ``sparcl_mask_updates=10`` (``--sp-mask-update-freq 5`` epochs of 50),
``sparcl_update_fraction=0.01`` (``--lower-bound 0.75-0.76-0.75 --upper-bound 0.74-0.75-0.75``:
1 % of a layer's weights), ``sparcl_grad_weight=0.5`` (``--sp-lmd``), ``sparcl_ddr_ratio=0.3``
(``--remove-n 3000`` of the 10,000 samples of a task), ``sparcl_ddr_stages=4`` and
``sparcl_ddr_end=0.4`` (removals at epochs 5, 10, 15 and 20 of 50: ``--remove-data-epoch 20``),
``sparcl_gradient_sparsity=0.8`` (``--gradient_sparse 0.80``), ``sparcl_dgm_every=30``
(``--sample_frequency 30``), ``sparcl_current_task_ce=True`` (``--use_cl_mask``). DER++'s own
parameters keep our ``derpp`` defaults (its paper's Seq-MNIST values: ``mem_size=500``,
``der_alpha=1.0``, ``derpp_beta=0.5``); the SparCL script uses ``--buffer-size 500``,
``--buffer_weight 0.1`` (alpha), ``--buffer_weight_beta 0.5`` on CIFAR-10.

Where we differ from the reference code:
- Schedules run over each experience's iteration budget, not over epochs: our loop's budget
  is fixed when the experience starts, so a removed sample leaves its minibatches smaller
  rather than the epoch shorter (the same samples are trained on, and DER++'s replay draws,
  sized by the stream minibatch, shrink with them, as the reference's fewer iterations do).
  A minibatch left empty makes no update at all (its gradients are cleared).
- Forgetting-count ties (in a short experience most samples have none) are broken by the mean
  misclassification margin since the previous stage, the most confident removed first (the
  reference: arbitrarily); samples not presented since the previous stage are not removed.
- The reference's last mask update of a task (epoch 45: prune to the target, no growth)
  changes nothing and is not done. The CWI reads the gradient of the step in which the update
  falls (the reference: the previous epoch's last minibatch, kept by skipping its zero_grad).
- Only the backbone is masked; heads stay dense (the reference masks the 3x3 convolutions of
  ResNet-18 and keeps the first convolution, the shortcuts and the classifier dense). Exact
  counts per layer (the reference: percentile thresholds).

Training FLOPs (``training_flops``, reported in ``results.json`` through
``lifelong.sparse.strategy_flops``) are counted step by step, at the masks in force at each
step, per sample: forward ``F_w`` (at the weight mask), input gradients ``F_w``, weight
gradients ``F_g`` (at the gradient mask; ``F_w`` on steps that sample a new gradient mask, or
without DGM). ``training`` = 3 x the forward FLOPs summed over the samples of each training
batch (the loop's convention for every method: comparable with any run's ``flops.training``);
``training_gradient_masked`` = forward + input gradients + weight gradients at the gradient
mask (DGM's saving, which sparse hardware could realise; dense hardware computes the full
weight gradient and then masks it); the ``..._with_replay`` variants also count DER++'s two
replayed minibatches per step, a forward and backward each (the loop's count omits them for
DER/DER++ too).
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from ..errors import ConfigError
from ..sparse import SparseMasks, forward_flops, largest
from .der import DERPP

LEDGER = ("batch_forward", "batch_weight_grad", "replay_forward", "replay_weight_grad")


class SparCL(DERPP):
    name = "sparcl"
    paper = "Wang et al. 2022, SparCL: Sparse Continual Learning on the Edge (NeurIPS)"
    scenarios = ("class", "task", "domain")

    def __init__(self, mem_size: Annotated[int, Field(ge=1)] = 500,
                 der_alpha: Annotated[float, Field(ge=0)] = 1.0,
                 derpp_beta: Annotated[float, Field(ge=0)] = 0.5,
                 replay_batch_size: Optional[Annotated[int, Field(ge=1)]] = None,
                 sparcl_sparsity: Annotated[float, Field(ge=0, lt=1)] = 0.75,
                 sparcl_distribution: Literal["uniform", "erk"] = "uniform",
                 sparcl_tdm: bool = True,
                 sparcl_mask_updates: Annotated[int, Field(ge=2)] = 10,
                 sparcl_update_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.01,
                 sparcl_grad_weight: Annotated[float, Field(ge=0)] = 0.5,
                 sparcl_ddr: bool = True,
                 sparcl_ddr_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.3,
                 sparcl_ddr_stages: Annotated[int, Field(ge=1)] = 4,
                 sparcl_ddr_end: Annotated[float, Field(gt=0, le=1)] = 0.4,
                 sparcl_dgm: bool = True,
                 sparcl_gradient_sparsity: Annotated[float, Field(ge=0, lt=1)] = 0.8,
                 sparcl_dgm_every: Annotated[int, Field(ge=1)] = 30,
                 sparcl_current_task_ce: bool = True):
        super().__init__(mem_size=mem_size, der_alpha=der_alpha, derpp_beta=derpp_beta,
                         replay_batch_size=replay_batch_size)
        self.sparcl_sparsity = sparcl_sparsity
        self.sparcl_distribution = sparcl_distribution
        self.sparcl_tdm = sparcl_tdm
        self.sparcl_mask_updates = sparcl_mask_updates
        self.sparcl_update_fraction = sparcl_update_fraction
        self.sparcl_grad_weight = sparcl_grad_weight
        self.sparcl_ddr = sparcl_ddr
        self.sparcl_ddr_ratio = sparcl_ddr_ratio
        self.sparcl_ddr_stages = sparcl_ddr_stages
        self.sparcl_ddr_end = sparcl_ddr_end
        self.sparcl_dgm = sparcl_dgm
        self.sparcl_gradient_sparsity = sparcl_gradient_sparsity
        self.sparcl_dgm_every = sparcl_dgm_every
        self.sparcl_current_task_ce = sparcl_current_task_ce

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        if self.sparcl_dgm and self.sparcl_gradient_sparsity < self.sparcl_sparsity:
            raise ConfigError(f"strategy.sparcl_gradient_sparsity ({self.sparcl_gradient_sparsity}) must not be below "
                              f"strategy.sparcl_sparsity ({self.sparcl_sparsity}): gradient masking keeps a part of "
                              "the active weights' gradients")
        # drawn now, applied when training starts (loading a saved state never zeroes its weights)
        self.masks_ = SparseMasks(model.backbone, self.sparcl_sparsity, self.sparcl_distribution,
                                  generator=self.generator)
        self._targets = {k: int(m.sum()) for k, m in self.masks_.masks.items()}  # each layer's active count
        self._names = {id(p): n for n, p in model.named_parameters()}
        self.masked_ = False
        self.tdm_next_ = None     # index of the next mask update in this experience (None: none)
        self.grad_masks_ = None   # {layer: bool} the gradient mask in force
        self.dgm_last_ = None     # iteration at which it was sampled
        self.ddr_ = None          # per-sample statistics of the current experience's training data
        self.ddr_removed_ = []    # samples removed, per experience
        self.flops_ = dict.fromkeys(LEDGER, 0)
        self._fw = self._fg = None  # forward FLOPs per sample at the weight / gradient masks (caches)
        self._keep = None  # {layer: bool} the gradient entries kept (cache)
        self._n_replay = 0
        return self

    # -- experience boundaries ---------------------------------------------------------
    def before_experience(self, exp):
        super().before_experience(exp)
        if not self.masked_:
            self.masks_.apply()
            self.masked_ = True
        self.tdm_next_ = 0 if self.sparcl_tdm and self.sparcl_sparsity > 0 else None
        self.grad_masks_ = self.dgm_last_ = None
        self._fw = self._fg = self._keep = None  # a new task's head may answer
        self.ddr_removed_.append(0)
        if self.sparcl_ddr and self.sparcl_ddr_ratio > 0:
            n, dev = len(exp.train), exp.train.y.device
            self.ddr_ = {"removed": torch.zeros(n, dtype=torch.bool, device=dev)}
            self._reset_ddr_stats()
        else:
            self.ddr_ = None

    def after_experience(self, exp):
        super().after_experience(exp)
        self.ddr_ = None  # statistics belong to one experience's training data

    # -- DDR: dropping removed samples ---------------------------------------------------
    def augment(self, batch):
        batch = super().augment(batch)
        d = self.ddr_
        if d is None or batch.index is None:
            return batch
        due = self._ddr_due(self.context.iteration)
        if due:
            self._remove(due)
        n = batch.n_new
        drop = d["removed"][batch.index[:n]]
        if not bool(drop.any()):
            return batch
        keep = torch.ones(len(batch.y), dtype=torch.bool, device=drop.device)
        keep[:n] = ~drop
        return type(batch)(batch.x[keep], batch.y[keep], batch.t[keep], int(keep[:n].sum()), batch.index[keep])

    def _ddr_due(self, it: int) -> int:
        """How many samples to remove before iteration ``it``: stage j (1-based) falls at
        ``floor(j * end * n_iterations / stages)`` and takes its share of ``ratio * n``."""
        stages, n = self.sparcl_ddr_stages, len(self.ddr_["removed"])
        total = self.sparcl_ddr_ratio * n
        due = 0
        for j in range(1, stages + 1):
            if int(j * self.sparcl_ddr_end * self.context.n_iterations / stages) == it:
                due += round(total * j / stages) - round(total * (j - 1) / stages)
        return due

    def _remove(self, k: int) -> None:
        d = self.ddr_
        idx = torch.nonzero((d["seen"] > 0) & ~d["removed"]).flatten()
        if len(idx):
            forgets = d["forgets"][idx].float().masked_fill(~d["learned"][idx], float("inf"))
            margin = d["margin"][idx] / d["seen"][idx]
            order = torch.sort(-margin, stable=True).indices  # most confident first among equal counts
            order = order[torch.sort(forgets[order], stable=True).indices]
            gone = idx[order[:k]]
            d["removed"][gone] = True
            self.ddr_removed_[-1] += len(gone)
        self._reset_ddr_stats()  # statistics restart after each stage, as the reference's

    def _reset_ddr_stats(self) -> None:
        d = self.ddr_
        n, dev = len(d["removed"]), d["removed"].device
        flags, counts = dict(dtype=torch.bool, device=dev), dict(dtype=torch.int32, device=dev)
        d.update(seen=torch.zeros(n, **counts), correct=torch.zeros(n, **flags), learned=torch.zeros(n, **flags),
                 forgets=torch.zeros(n, **counts), margin=torch.zeros(n, dtype=torch.float32, device=dev))

    @torch.no_grad()
    def _record(self, batch, logits) -> None:
        """Each stream sample's presentation: right or wrong, a forgetting event, its margin."""
        d, n = self.ddr_, batch.n_new
        idx, y, z = batch.index[:n], batch.y[:n], logits[:n].float()
        correct = z.argmax(1) == y
        true = z.gather(1, y[:, None]).squeeze(1)
        other = z.scatter(1, y[:, None], float("-inf")).max(1).values
        margin = torch.nan_to_num(true - other, nan=0.0, posinf=1e6, neginf=-1e6)
        d["forgets"][idx] += ((d["seen"][idx] > 0) & d["correct"][idx] & ~correct).int()
        d["correct"][idx] = correct
        d["learned"][idx] |= correct
        d["seen"][idx] += 1
        d["margin"][idx] += margin

    # -- the loss ------------------------------------------------------------------------
    def loss(self, logits, batch):
        if len(batch.y) == 0:  # every sample of this minibatch was removed
            return logits.sum() * 0.0
        exp = self.experience_
        if self.sparcl_current_task_ce and exp is not None:
            current = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
            current[torch.as_tensor(exp.classes, device=logits.device)] = True
            stream = torch.arange(len(logits), device=logits.device) < batch.n_new
            logits = logits.masked_fill(stream[:, None] & ~current[None, :], float("-inf"))
        return F.cross_entropy(logits, batch.y)

    def penalty(self, logits, batch):
        if batch.n_new == 0:
            self._n_replay = 0
            return 0.0
        size = len(self.buffer_)
        self._n_replay = 2 * min(self.replay_batch_size or batch.n_new, size) if size else 0  # DER++'s two draws
        return super().penalty(logits, batch)

    # -- TDM and DGM: after the backward, before the optimizer step -------------------------
    def before_step(self, batch):
        super().before_step(batch)
        if len(batch.y) == 0:  # nothing to learn from: no update at all
            for p in self.model.parameters():
                p.grad = None
            return
        it = self.context.iteration
        updates = self._tdm_due(it)
        sample = self.sparcl_dgm and (bool(updates) or self.grad_masks_ is None
                                      or it - self.dgm_last_ >= self.sparcl_dgm_every)
        self._count(batch, full_gradient=not self.sparcl_dgm or sample)
        for k in updates:
            self._tdm_update(k)
        if sample:
            self._sample_gradient_mask()
            self.dgm_last_ = it
        if self._keep is None:  # what may learn: the active weights (with DGM: those of the gradient mask)
            masks = self.masks_.masks
            self._keep = {k: m & self.grad_masks_[k] if self.sparcl_dgm else m for k, m in masks.items()}
        for k, w, _ in self.masks_.weights():
            if w.grad is not None:
                w.grad.mul_(self._keep[k])  # one multiply per layer

    def _tdm_due(self, it: int) -> list[int]:
        if self.tdm_next_ is None:
            return []
        n, K = self.context.n_iterations, self.sparcl_mask_updates
        due = []
        while self.tdm_next_ <= K - 2 and it >= (self.tdm_next_ * n) // K:
            due.append(self.tdm_next_)
            self.tdm_next_ += 1
        return due

    @torch.no_grad()
    def _tdm_update(self, k: int) -> None:
        """k = 0 (the experience starts): grow; later: shrink by CWI below the target, regrow to it."""
        opt = self.context.optimizer
        step = {name: round(self.sparcl_update_fraction * m.numel()) for name, m in self.masks_.masks.items()}
        if k > 0:
            scores = {}
            for name, w, _ in self.masks_.weights():
                g = w.grad
                scores[name] = w.abs() + (self.sparcl_grad_weight * g.abs() if g is not None else 0.0)
            self.masks_.keep_top(scores, {name: self._targets[name] - step[name] for name in step}, opt)
            step = {name: self._targets[name] - int(m.sum()) for name, m in self.masks_.masks.items()}
        self.masks_.grow(step, "random", opt)
        self._fw = self._fg = self._keep = None

    @torch.no_grad()
    def _sample_gradient_mask(self) -> None:
        keep = min(1.0, (1 - self.sparcl_gradient_sparsity) / (1 - self.sparcl_sparsity))
        out = {}
        for name, w, mask in self.masks_.weights():
            n = round(int(mask.sum()) * keep)
            if w.grad is None:
                out[name] = mask.clone()
                continue
            out[name] = largest(w.grad.abs().float().masked_fill(~mask, -1.0), n)
        self.grad_masks_ = out
        self._fg = self._keep = None

    # -- after the step ------------------------------------------------------------------
    def after_step(self, batch, logits):
        if len(batch.y) == 0:
            return
        super().after_step(batch, logits)  # DER++: the stream samples enter the buffer with their logits
        self.masks_.apply()  # pruned weights back to exactly 0
        if self.ddr_ is not None and batch.index is not None:
            self._record(batch, logits)

    # -- costs ---------------------------------------------------------------------------
    def _flops(self, batch, gradient: bool) -> int:
        task = None if self._linear_head is not None or self.experience_ is None else self.experience_.task_id
        masks = [self.masks_]
        if gradient:
            masks.append({self._names[id(w)]: self.grad_masks_[k] for k, w, _ in self.masks_.weights()})
        return forward_flops(self.model, tuple(batch.x.shape[1:]), masks, task)

    def _count(self, batch, full_gradient: bool) -> None:
        if self._fw is None:
            self._fw = self._flops(batch, gradient=False)
        if full_gradient:
            fg = self._fw
        else:
            if self._fg is None:
                self._fg = self._flops(batch, gradient=True)
            fg = self._fg
        n, r = len(batch.y), self._n_replay
        f = self.flops_
        f["batch_forward"] += n * self._fw
        f["batch_weight_grad"] += n * fg
        f["replay_forward"] += r * self._fw
        f["replay_weight_grad"] += r * fg

    def training_flops(self) -> dict:
        """The FLOPs counted step by step (see the module docstring); ``results.json``'s ``flops``."""
        f = self.flops_
        fw, rw = f["batch_forward"], f["replay_forward"]
        return {"training": 3 * fw,
                "training_gradient_masked": 2 * fw + f["batch_weight_grad"],
                "training_with_replay": 3 * (fw + rw),
                "training_gradient_masked_with_replay": 2 * (fw + rw) + f["batch_weight_grad"]
                + f["replay_weight_grad"]}

    # -- state ---------------------------------------------------------------------------
    def extra_state(self):
        state = super().extra_state()
        state.update(masks=self.masks_.state_dict(), masked=self.masked_, tdm_next=self.tdm_next_,
                     grad_masks=None if self.grad_masks_ is None else {k: m.clone()
                                                                        for k, m in self.grad_masks_.items()},
                     dgm_last=self.dgm_last_,
                     ddr=None if self.ddr_ is None else {k: v.clone() for k, v in self.ddr_.items()},
                     ddr_removed=list(self.ddr_removed_), flops=dict(self.flops_))
        return state

    def load_extra_state(self, state):
        super().load_extra_state(state)
        self.masks_.load_state_dict(state["masks"])
        self.masked_ = bool(state["masked"])
        self.tdm_next_ = state["tdm_next"]
        gm = state["grad_masks"]
        self.grad_masks_ = None if gm is None else {
            k: m.to(device=self.masks_.masks[k].device, dtype=torch.bool, copy=True) for k, m in gm.items()}
        self.dgm_last_ = state["dgm_last"]
        ddr = state["ddr"]
        self.ddr_ = None if ddr is None else {k: v.to(self.device, copy=True) for k, v in ddr.items()}
        self.ddr_removed_ = [int(v) for v in state["ddr_removed"]]
        self.flops_ = {k: int(state["flops"][k]) for k in LEDGER}
        self._fw = self._fg = self._keep = None
