"""DST-CL: one sparse sub-network per task, found by dynamic sparse training.

Yildirim, Gok Yildirim, Sokar, Mocanu & Vanschoren, "Continual Learning with Dynamic Sparse
Training: Exploring Algorithms for Effective Model Updates" (arXiv:2308.14831; CPAL 2024,
PMLR 234:94-107); reference code github.com/muratonuryildirim/CL-with-DST (``core.py``
``Masking``, ``cifar100.py``, ``utils.py`` ``freeze_used_params`` / ``set_mask``).

Task-IL parameter isolation. Each task ``t`` gets its own mask ``M_t`` over the weights of the
backbone's ``nn.Linear`` / ``nn.Conv2d`` layers, at sparsity ``dstcl_sparsity``:

1. when the task starts, ``M_t`` is drawn over the whole layer (``lifelong.sparse.SparseMasks``:
   ERK or uniform allocation, ``dstcl_distribution``), so it may include connections earlier
   tasks own: those are reused with their values and frozen (their gradients zeroed, their
   values written back after every step); the free ones it holds are trained;
2. during training the network computes with ``M_t`` only (every weight outside it is 0; the
   earlier tasks' values are kept aside), and every ``dstcl_update_every`` optimizer steps
   the topology changes: each layer drops a fraction ``r`` of its active weights
   (``dstcl_prune``: smallest |w| or random; frozen reused weights may be dropped too) and
   regrows as many among the *free* positions (``dstcl_grow``: largest |dense gradient| or
   random), the new weights 0; ``r`` is cosine-annealed over the task's iterations from
   ``dstcl_prune_fraction`` to 0.005 (the code's ``DeathCosineDecay``);
3. when the task ends, the free weights of ``M_t`` become the task's: frozen from then on.

Test time, as the paper: task ``t`` answers with its own connections ``M_t`` (earlier tasks'
weights it reused included, the rest of the network masked to 0) and its own head. Nothing it
uses ever moves again, so BWT is exactly 0 (tested).

Defaults: the reference code's argparse defaults: ``dstcl_sparsity=0.8`` (``--density 0.2``),
``dstcl_distribution="uniform"`` (``--init uniform``; its README's examples use ERK),
``dstcl_prune="magnitude"`` (``--death magnitude``), ``dstcl_grow="random"`` (``--growth
random``), ``dstcl_update_every=400`` (``--update_frequency 400``), ``dstcl_prune_fraction=0.5``
(``--death_rate 0.5``). The paper's other growth criteria (``random_unfired``, ``momentum``)
are not implemented.

Where we differ from the reference code:
- Only the backbone is masked; each task's head (``MultiHead``) is dense and its own (the code
  masks a shared classifier too, with the same per-task mask).
- Biases are shared: trained with the first task and frozen afterwards (as PackNet). The code
  never freezes biases (nor batch norm), so its old tasks drift; ours cannot. Models with batch
  norm are refused.
- A growth never activates a weight an earlier task owns (the code may grow there: it trains
  with the weight at 0 but tests with the old value). Free weights entering a new task's
  initial mask start from the model's initial random values (the code: from 0, since the first
  task's masking zeroed them); weights regrown during training start at 0, as in the code.
- Exact counts per layer (the code draws Bernoulli masks); the prune fraction anneals over the
  experience's iteration budget (the code: over the task's epochs x batches, the same thing);
  no topology change on a task's last step (its regrown weights could never train).
- No "best epoch" checkpoint selection by training accuracy (the code keeps the epoch with the
  best training accuracy and its mask).
- A task id that arrives a second time is refused. ``predict(x, None)`` (task-agnostic) answers
  with the network as it stands (the last task's connections) and every head.

Accuracy against sparsity with ERK and uniform initialisation (the paper's question):
``benchmarks/dstcl_sparsity.py``, numbers in docs/sparse.md.

Costs (``sparsity_masks``): the non-zero parameters a run reports are the union of every
task's connections (what must be stored); its FLOP counts use the same union, an upper bound
for one task's forward (which uses ``1 - dstcl_sparsity`` of the weights).
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

from ..errors import ConfigError
from ..sparse import SparseMasks, cosine_fraction
from ._isolation import Frozen, check_model, head_parameters, predict_with_task_weights, zero_grad_where
from .base import Strategy

PRUNE_MIN = 0.005  # the floor of the reference code's DeathCosineDecay (eta_min)


class DSTCL(Strategy):
    name = "dstcl"
    paper = ("Yildirim et al. 2024, Continual Learning with Dynamic Sparse Training: Exploring Algorithms for "
             "Effective Model Updates (CPAL)")
    scenarios = ("task",)

    def __init__(self, dstcl_sparsity: Annotated[float, Field(ge=0, lt=1)] = 0.8,
                 dstcl_distribution: Literal["erk", "uniform"] = "uniform",
                 dstcl_prune: Literal["magnitude", "random"] = "magnitude",
                 dstcl_grow: Literal["gradient", "random"] = "random",
                 dstcl_update_every: Annotated[int, Field(ge=1)] = 400,
                 dstcl_prune_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.5):
        super().__init__()
        self.dstcl_sparsity = dstcl_sparsity
        self.dstcl_distribution = dstcl_distribution
        self.dstcl_prune = dstcl_prune
        self.dstcl_grow = dstcl_grow
        self.dstcl_update_every = dstcl_update_every
        self.dstcl_prune_fraction = dstcl_prune_fraction

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        check_model(model, self.name)
        names = [n for n, m in model.backbone.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        if not names:
            raise ConfigError(f"strategy '{self.name}': the backbone has no Linear or Conv2d layer to mask")
        self.layers = {n: model.backbone.get_submodule(n) for n in names}
        weights = {id(m.weight) for m in self.layers.values()}
        self.shared = [p for p in model.backbone.parameters() if id(p) not in weights]  # biases
        # values_: every masked weight's stored value (earlier tasks' where they own it, the
        # initial value where it is free); used_: owned by an earlier task; task_masks_: M_s per task
        self.values_ = {n: m.weight.detach().clone() for n, m in self.layers.items()}
        self.used_ = {n: torch.zeros_like(v, dtype=torch.bool) for n, v in self.values_.items()}
        self.task_masks_: list[dict[str, torch.Tensor]] = []
        self.tasks_: list[int] = []  # task ids in the order they arrived
        self.finished_ = 0           # how many of them are done
        self.current_: SparseMasks | None = None  # the task in training's M_t
        self._frozen = None
        return self

    # -- a task starts ----------------------------------------------------------------------
    def _in_training(self) -> bool:
        return self.current_ is not None and self.finished_ < len(self.tasks_)

    def before_experience(self, exp):
        super().before_experience(exp)
        if exp.task_id in self.tasks_:
            raise ConfigError(f"strategy 'dstcl': task {exp.task_id} arrives a second time; DST-CL learns each task "
                              "once (its connections are frozen when it ends)")
        self.tasks_.append(exp.task_id)
        self.current_ = SparseMasks(self.model.backbone, self.dstcl_sparsity, self.dstcl_distribution,
                                  include=list(self.layers), generator=self.generator)
        with torch.no_grad():  # the task's network: stored values inside M_t, 0 elsewhere
            for n, m in self.layers.items():
                m.weight.copy_(self.values_[n] * self.current_.masks[n])
        self._freeze()

    def _freeze(self) -> None:
        """Biases after the first task and the earlier tasks' heads (the reused weights are
        written back from ``values_``)."""
        items = [(p, None) for p in self.shared] if len(self.tasks_) > 1 else []
        items += [(p, None) for p in head_parameters(self.model, self.tasks_[:-1])]
        self._frozen = Frozen(items)

    # -- training --------------------------------------------------------------------------------
    def before_step(self, batch):
        if not self._in_training():
            return
        for n, m in self.layers.items():
            zero_grad_where(m.weight, self.used_[n])
        if len(self.tasks_) > 1:
            for p in self.shared:
                zero_grad_where(p, None)
        for p in head_parameters(self.model, self.tasks_[:-1]):
            zero_grad_where(p, None)

    @torch.no_grad()
    def _restore(self) -> None:
        """Reused weights back to their stored values, everything outside M_t back to 0."""
        for n, m in self.layers.items():
            w = m.weight
            w.copy_(torch.where(self.used_[n], self.values_[n], w))
        self.current_.apply()
        self._frozen.restore()

    def after_step(self, batch, logits):
        if not self._in_training():
            return
        self._restore()
        ctx = self.context
        t, n = ctx.iteration + 1, ctx.n_iterations
        if t % self.dstcl_update_every or t >= n:  # no topology change on the task's last step
            return
        r = cosine_fraction(t, n, self.dstcl_prune_fraction, PRUNE_MIN)
        free = {k: ~u for k, u in self.used_.items()}
        self.current_.regenerate(r, self.dstcl_prune, self.dstcl_grow, optimizer=ctx.optimizer, allowed=free)
        self._restore()

    @torch.no_grad()
    def after_experience(self, exp):
        if not self._in_training():
            return
        self._restore()
        mask = {k: m.clone() for k, m in self.current_.masks.items()}
        for n, m in self.layers.items():
            new = mask[n] & ~self.used_[n]
            self.values_[n] = torch.where(new, m.weight.detach(), self.values_[n])
            self.used_[n] |= mask[n]
        self.task_masks_.append(mask)
        self.finished_ = len(self.tasks_)
        self._frozen = None

    # -- evaluation ------------------------------------------------------------------------------
    def task_weights(self, position: int) -> dict[str, torch.Tensor]:
        """The backbone's weights as task ``position`` (0-based, arrival order) uses them: its mask
        over the stored values."""
        return {f"{n}.weight": self.values_[n] * self.task_masks_[position][n] for n in self.layers}

    def predict(self, x, task=None):
        return predict_with_task_weights(self.model, x, task, self.tasks_[:self.finished_], self.task_weights)

    def sparsity_masks(self) -> dict[str, torch.Tensor]:
        """Every task's connections (and the task in training's): the weights a run stores."""
        current = self.current_.masks if self._in_training() else {}
        return {f"backbone.{n}.weight": self.used_[n] | current[n] if n in current else self.used_[n].clone()
                for n in self.layers}

    # -- state -----------------------------------------------------------------------------------
    def extra_state(self):
        return {"values": {k: v.clone() for k, v in self.values_.items()},
                "used": {k: v.clone() for k, v in self.used_.items()},
                "task_masks": [{k: v.clone() for k, v in m.items()} for m in self.task_masks_],
                "tasks": list(self.tasks_), "finished": self.finished_,
                "current": None if self.current_ is None else self.current_.state_dict()}

    def load_extra_state(self, state):
        dev = self.device
        self.values_ = {k: v.to(dev).clone() for k, v in state["values"].items()}
        self.used_ = {k: v.to(dev).clone() for k, v in state["used"].items()}
        self.task_masks_ = [{k: v.to(dev).clone() for k, v in m.items()} for m in state["task_masks"]]
        self.tasks_ = [int(t) for t in state["tasks"]]
        self.finished_ = int(state["finished"])
        self.current_, self._frozen = None, None
        if state["current"] is not None:  # the masks object, without drawing from self.generator
            self.current_ = SparseMasks(self.model.backbone, 0.0, "uniform", include=list(self.layers),
                                      generator=torch.Generator().manual_seed(0))
            self.current_.load_state_dict(state["current"])
            self.current_.generator = self.generator
            if self._in_training():  # frozen entries hold their values in the loaded model
                self._freeze()
