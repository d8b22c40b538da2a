"""PackNet: iterative pruning packs several tasks into one network.

Mallya & Lazebnik (2018), "PackNet: Adding Multiple Tasks to a Single Network by Iterative
Pruning" (CVPR); reference code github.com/arunmallya/packnet (``prune.py``, ``main.py``,
``scripts/run_sequence.sh``).

Every weight of the backbone's ``nn.Linear`` / ``nn.Conv2d`` layers is owned by one task, or
free. Experience ``k`` (its k-th task):

1. trains on the free weights; the weights of tasks ``< k`` are used in the forward but frozen;
2. prunes, layer by layer, the fraction ``packnet_prune`` of the weights it trained with the
   smallest magnitude (reference: ``kthvalue`` cutoff, ``|w| <= cutoff`` removed); the pruned
   weights are set to zero and stay free for later tasks, the others become task ``k``'s;
3. retrains task ``k``'s weights alone (the pruned ones held at zero), then freezes them.

At test time task ``k`` uses only the weights of tasks ``<= k`` (later tasks' weights and free
ones masked to zero), so its network, and its accuracy, never change again: BWT is exactly
zero (tested). The task's own output head (one per task, ``MultiHead``) trains with it.

Defaults and where we differ:
- ``packnet_prune = 0.5``: the paper's and the code's default per-layer fraction (the code
  prunes ImageNet by 0.5 and the added tasks by 0.75).
- The last experience of the stream is not pruned (the reference's ``-1``: nothing comes after
  it to use the space) unless ``packnet_prune_last``; it trains on all its free weights for the
  whole budget.
- ``packnet_retrain = 0.33``: the share of each pruned experience's iteration budget spent
  retraining after the prune (about a third: the reference trains 20 epochs, then retrains 10).
  The reference retrains at lr/10; we keep the run's learning rate (and schedule) throughout.
- Biases (and any backbone parameter outside a Linear/Conv2d weight) are shared: trained with
  the first task, frozen afterwards -- the reference's default (``train_biases`` off, biases
  fixed after its first, ImageNet, task). Models with batch norm are refused (the reference
  freezes it after the first task; our loop trains its running statistics on every task).
- Frozen entries are also written back after every step (``_isolation.Frozen``), so the
  guarantee holds with momentum, weight decay or a composed method, not only with plain SGD.
- A task id that arrives a second time is refused (each task gets its weights once).
- ``predict(x, None)`` (task-agnostic) answers with the whole network and every head.

Task-IL only. It owns ``predict`` (a sub-network per task): it composes with methods that add
penalties or replay, and a second ``predict`` owner is refused by the composition contract.
"""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from ..errors import ConfigError
from ._isolation import Frozen, check_model, head_parameters, predict_with_task_weights, weight_layers, zero_grad_where
from .base import Strategy


class PackNet(Strategy):
    name = "packnet"
    paper = "Mallya & Lazebnik 2018, PackNet: Adding Multiple Tasks to a Single Network by Iterative Pruning (CVPR)"
    scenarios = ("task",)

    def __init__(self, packnet_prune: Annotated[float, Field(gt=0, lt=1)] = 0.5,
                 packnet_retrain: Annotated[float, Field(ge=0, lt=1)] = 0.33,
                 packnet_prune_last: bool = False):
        super().__init__()
        self.packnet_prune = packnet_prune
        self.packnet_retrain = packnet_retrain
        self.packnet_prune_last = packnet_prune_last

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        check_model(model, self.name)
        self.layers = weight_layers(model.backbone)
        weights = {id(m.weight) for _, m in self.layers}
        self.shared = [p for p in model.backbone.parameters() if id(p) not in weights]  # biases
        # owner_[i]: per weight of layer i, the 1-based position of the task that owns it; 0 = free
        self.owner_ = [torch.zeros(m.weight.shape, dtype=torch.int16, device=self.device) for _, m in self.layers]
        self.tasks_: list[int] = []  # task ids in the order they arrived
        self.finished_ = 0  # how many of them are done (their weights frozen)
        self.pruned_ = False  # the current task has been pruned (it is retraining)
        self._frozen = None
        return self

    # -- which entries train now ------------------------------------------------------------
    @property
    def _k(self) -> int:
        return len(self.tasks_)

    def _trainable(self, i: int) -> torch.Tensor:
        return self.owner_[i] == (self._k if self.pruned_ else 0)

    def _freeze(self) -> None:
        """What must not move while the current task trains: the other weights, the shared
        parameters after the first task, and the old tasks' heads."""
        items = [(m.weight, ~self._trainable(i)) for i, (_, m) in enumerate(self.layers)]
        if self._k > 1:
            items += [(p, None) for p in self.shared]
        items += [(p, None) for p in head_parameters(self.model, self.tasks_[:-1])]
        self._frozen = Frozen(items)

    def _prunes_now(self) -> bool:
        stream, exp = self.context.stream, self.context.experience
        last = stream is not None and exp is not None and exp.index == len(stream) - 1
        return self.packnet_prune_last or not last

    def before_experience(self, exp):
        super().before_experience(exp)
        if exp.task_id in self.tasks_:
            raise ConfigError(f"strategy 'packnet': task {exp.task_id} arrives a second time; PackNet learns each "
                              "task once (its weights are frozen when it ends)")
        self.tasks_.append(exp.task_id)
        self.pruned_ = False
        self._freeze()

    def before_step(self, batch):
        if self._frozen is None:  # no task in training (used outside an experience)
            return
        for i, (_, m) in enumerate(self.layers):
            zero_grad_where(m.weight, ~self._trainable(i))
        if self._k > 1:
            for p in self.shared:
                zero_grad_where(p, None)
        for p in head_parameters(self.model, self.tasks_[:-1]):
            zero_grad_where(p, None)

    def after_step(self, batch, logits):
        if self._frozen is None:
            return
        self._frozen.restore()
        n = self.context.n_iterations
        n_train = max(1, n - round(self.packnet_retrain * n))
        if not self.pruned_ and self._prunes_now() and self.context.iteration + 1 == n_train:
            self._prune()

    def after_experience(self, exp):
        if not self.pruned_ and self._prunes_now():
            self._prune()  # a budget too short to reach the prune (or no retraining)
        if not self.pruned_:  # the unpruned last task keeps every weight it trained
            for own in self.owner_:
                own[own == 0] = self._k
        self.finished_ = self._k
        self._frozen = None

    @torch.no_grad()
    def _prune(self) -> None:
        """Per layer, remove the fraction ``packnet_prune`` of this task's weights with the
        smallest magnitude (the reference's ``kthvalue`` cutoff); the rest become the task's."""
        for own, (_, m) in zip(self.owner_, self.layers):
            mine = own == 0
            w = m.weight
            n = int(mine.sum())
            cut = round(self.packnet_prune * n)
            remove = torch.zeros_like(mine)
            if cut > 0:
                cutoff = w[mine].abs().kthvalue(cut).values
                remove = mine & (w.abs() <= cutoff)
            w.masked_fill_(remove, 0.0)
            own[mine & ~remove] = self._k
        self.pruned_ = True
        self._freeze()

    # -- evaluation ----------------------------------------------------------------------------
    def _task_weights(self, position: int) -> dict[str, torch.Tensor]:
        """The backbone's weights as task ``position`` (1-based) sees them: its own and its predecessors'."""
        out = {}
        for own, (name, m) in zip(self.owner_, self.layers):
            keep = (own > 0) & (own <= position)
            out[f"{name}.weight"] = torch.where(keep, m.weight, torch.zeros((), dtype=m.weight.dtype,
                                                                            device=m.weight.device))
        return out

    def predict(self, x, task=None):
        return predict_with_task_weights(self.model, x, task, self.tasks_[:self.finished_], lambda pos: self._task_weights(pos + 1))

    def sparsity_masks(self) -> dict[str, torch.Tensor]:
        """The weights in use (owned by a task), by parameter name in the model: what a run's
        parameter and FLOP counts take as the network's non-zero weights."""
        return {f"backbone.{name}.weight": own > 0 for own, (name, _) in zip(self.owner_, self.layers)}

    # -- state --------------------------------------------------------------------------------
    def extra_state(self):
        return {"owner": [o.clone() for o in self.owner_], "tasks": list(self.tasks_), "finished": self.finished_,
                "pruned": self.pruned_}

    def load_extra_state(self, state):
        self.owner_ = [o.to(self.device).clone() for o in state["owner"]]
        self.tasks_ = [int(t) for t in state["tasks"]]
        self.finished_ = int(state["finished"])
        self.pruned_ = bool(state["pruned"])
        self._frozen = None
        if self.finished_ < self._k:  # inside an experience: frozen entries hold their values in the
            self._freeze()            # loaded model, so the reference is rebuilt from it
