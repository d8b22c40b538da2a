"""SHARP: sparse dynamic connectivity and replay of hidden activations of recent classes.

Gurbuz, Moorman & Dovrolis (2023), "SHARP: Sparsity and Hidden Activation RePlay for
Neuro-Inspired Continual Learning" (arXiv:2305.18563). Official code:
github.com/BurakGurbuz97/SHARP-Continual-Learning (``launch_utils.py`` holds the defaults).

What we implement (for the MLP backbone, ``model.backbone.net``: Linear/ReLU blocks):

- Sparse connectivity: every Linear layer of the backbone gets a fixed-density binary mask
  (``sharp_density=0.4``: the paper's ``prune_perc=60``, random pruning at the start; the kept
  weights are scaled by ``1/sqrt(density)`` so the pre-activations keep the dense
  initialisation's variance). Masked weights are zero and stay zero.
- Dynamic rewiring: every ``sharp_rewire_every=30`` optimizer steps each layer drops the
  ``sharp_rewire_fraction=0.2`` of its active connections into plastic units with the smallest
  magnitude and grows as many at random into plastic units, with weight 0 (as the paper's
  growth, ``weight_init = zeros``). The number of connections per layer never changes.
- Stable units (from NISPA, which SHARP builds on): at the end of each experience the
  ``sharp_stable_fraction=0.5`` of each layer (of its width, at most the plastic units left)
  that are most active on the experience's data become stable: their connections from plastic
  units are cut (and regrown into plastic units). Frozen units (see the ages below) keep their
  incoming weights and bias (restored after every step, so momentum or weight decay cannot
  move them); a frozen unit's activation is then a fixed function of the input.
- Hidden-activation replay: at the end of each experience ``sharp_per_class=50`` random samples
  of each of its classes (paper ``stm_per_class=50``) are passed through the layers below the
  replay point (the first ``sharp_replay_layer=1`` Linear+ReLU blocks; the paper's MNIST model
  stores the first layer's output) and their activations are stored with their labels. Only
  the classes of the ``sharp_recent_experiences=1`` most recent experiences are kept (paper
  ``stm_num_tasks=1``: the previous episode). While training, a minibatch of stored
  activations (``sharp_replay_batch_size``, default the stream's batch size; the paper uses
  equal stream and memory batches) goes through the layers above the replay point and the
  head, and its cross-entropy is added to the loss (``penalty``). All layers keep learning:
  the plastic units below the replay point from the stream, everything above from both.
- Unit ages (``sharp_unit_ages=True``, the paper's ``unit_type_list``): every backbone layer,
  above the replay point too, promotes its most active plastic units at each boundary; a
  stable unit's age is the number of boundaries since it was promoted (1 at its promotion;
  the paper's type minus 1). Units below the replay point are frozen at once (the paper's
  early layers); units above it keep learning while the classes they were promoted for are
  still replayed and are frozen once their age exceeds ``sharp_recent_experiences`` (the
  paper's ``type > stm_num_tasks + 1``). A stable unit keeps only connections from stable
  units, so a frozen unit's activation is a fixed function of the input. With
  ``sharp_unit_ages=False`` only the layers below the replay point have stable units (our
  first version).
- k-NN prediction (``sharp_predict="knn"``, the paper's ``NeocortexKNN``): at each boundary
  the backbone's output (the penultimate layer) of ``sharp_knn_per_class=25`` samples of each
  new class is stored (paper ``ltm_per_class=25``), with the units of age >= 1 as the class's
  mask; the classes still in the replay memory are stored again from their replayed
  activations, with the units of age >= 2 + a (a = 0 for the previous experience: the units
  frozen from now on), as the paper's ``create_ltm_representations``. A sample is predicted by
  the majority vote of its ``sharp_knn_k=5`` nearest stored representations (Euclidean
  distance between L2-normalised vectors restricted to each class's mask). Scores are the
  vote counts minus 1e-3 times the distance to the class's nearest stored sample (ties go to
  the nearer class; the paper's ``torch.mode`` picks the smallest label); classes without
  stored representations (those of the experience being learned) score ``-inf``; before the
  first boundary the head predicts. ``sharp_predict="head"`` predicts with the model's head.

Where we differ from the paper (to keep one method in one file on the shared loop, online):
- The paper trains each episode in ``max_phases=10`` phases (3 epochs each) with a supervised
  contrastive loss, selects units per phase on a cosine schedule (``tau=30``), re-initialises
  the units left plastic at the end of an episode, and predicts with a k-nearest-neighbour
  "neocortex" (implemented, above). We train with the loop's optimizer and cross-entropy,
  promote a fixed fraction of units per experience, rewire by magnitude on a step schedule
  (as SET, Mocanu et al. 2018), and never re-initialise.
- Stored activations keep the values of units that were still plastic when they were stored
  (those go stale as the units learn); the k-NN masks use only units old enough to be frozen,
  as the paper's.
- In task-IL the k-NN votes over every stored class and the loop restricts the scores to the
  task's classes (the paper restricts the neighbours to the episode's classes). A task-IL
  stream whose tasks share classes (Permuted MNIST) is refused: the replay memory and the k-NN
  store keep one entry per class, so the later task's would replace the earlier one's.
- The stored activations are float32 (the paper quantises them to 8 bits).
- The head stays dense (its outputs are activated class by class); batch norm is refused.
- Hyper-parameters ``sharp_rewire_every=30`` (about once per experience of the online
  split-digits benchmark) and ``sharp_stable_fraction=0.5`` are ours, picked on that benchmark
  (seeds 0-1, before the k-NN and the ages; ``docs/methods-online.md``). With 0.5 every unit
  is stable after the second boundary, so later experiences train on frozen features: on
  Split MNIST the later classes are learned poorly (``docs/methods-online.md``).
"""
from __future__ import annotations

import math
from typing import Annotated, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import ConfigError
from .base import Strategy


class SHARP(Strategy):
    name = "sharp"
    paper = "Gurbuz, Moorman & Dovrolis 2023, SHARP: Sparsity and Hidden Activation RePlay for Neuro-Inspired Continual Learning"
    scenarios = ("class", "task", "domain")
    # its replay memory and its k-NN store are keyed by class (a class that comes back replaces
    # its stored activations): in task-IL a class shared by two tasks would keep the later one only
    task_disjoint_classes = True

    def __init__(self, sharp_density: Annotated[float, Field(gt=0, le=1)] = 0.4,
                 sharp_rewire_every: Annotated[int, Field(ge=1)] = 30,
                 sharp_rewire_fraction: Annotated[float, Field(ge=0, le=1)] = 0.2,
                 sharp_stable_fraction: Annotated[float, Field(gt=0, le=1)] = 0.5,
                 sharp_replay_layer: Annotated[int, Field(ge=1)] = 1,
                 sharp_per_class: Annotated[int, Field(ge=1)] = 50,
                 sharp_recent_experiences: Annotated[int, Field(ge=1)] = 1,
                 sharp_replay_batch_size: Optional[Annotated[int, Field(ge=1)]] = None,
                 sharp_unit_ages: bool = True,
                 sharp_predict: Literal["knn", "head"] = "knn",
                 sharp_knn_k: Annotated[int, Field(ge=1)] = 5,
                 sharp_knn_per_class: Annotated[int, Field(ge=1)] = 25):
        super().__init__()
        self.sharp_density = sharp_density
        self.sharp_rewire_every = sharp_rewire_every
        self.sharp_rewire_fraction = sharp_rewire_fraction
        self.sharp_stable_fraction = sharp_stable_fraction
        self.sharp_replay_layer = sharp_replay_layer
        self.sharp_per_class = sharp_per_class
        self.sharp_recent_experiences = sharp_recent_experiences
        self.sharp_replay_batch_size = sharp_replay_batch_size
        self.sharp_unit_ages = sharp_unit_ages
        self.sharp_predict = sharp_predict
        self.sharp_knn_k = sharp_knn_k
        self.sharp_knn_per_class = sharp_knn_per_class

    # -- set-up: the masked layers and the replay point ------------------------------------
    def _layers(self):
        from ..models import MLP

        backbone = getattr(self.model, "backbone", None)
        net = getattr(backbone, "net", ())
        if not isinstance(backbone, MLP) or any(isinstance(m, nn.BatchNorm1d) for m in net):
            raise ConfigError(f"strategy 'sharp' needs the 'mlp' backbone without batch norm (it masks its "
                              f"Linear layers and replays activations between them), got {type(backbone).__name__}")
        relus = [i for i, m in enumerate(net) if isinstance(m, nn.ReLU)]
        if self.sharp_replay_layer > len(relus):
            raise ConfigError(f"'sharp_replay_layer' must be at most the number of hidden layers "
                              f"({len(relus)}), got {self.sharp_replay_layer}")
        cut = relus[self.sharp_replay_layer - 1] + 1
        linears = [m for m in net if isinstance(m, nn.Linear)]
        return cut, linears, self.sharp_replay_layer

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        self._cut, self._linears, self._n_lower = self._layers()
        self.masks_ = []
        for lin in self._linears:
            n = lin.weight.numel()
            keep = max(1, round(self.sharp_density * n))
            mask = torch.zeros(n, dtype=torch.bool)
            mask[torch.randperm(n, generator=self.generator)[:keep]] = True
            self.masks_.append(mask.view_as(lin.weight).to(lin.weight.device))
        # each unit's age (0: plastic; boundaries since its promotion), and the incoming weights
        # the frozen units are held at
        self.ages_ = [torch.zeros(lin.out_features, dtype=torch.long, device=lin.weight.device)
                      for lin in self._linears]
        self.frozen_w_ = [lin.weight.detach().clone() for lin in self._linears]
        self.frozen_b_ = [lin.bias.detach().clone() for lin in self._linears]
        self.knn_h_ = None     # (N, d) stored penultimate representations (k-NN prediction)
        self.knn_y_ = None     # (N,) their labels
        self.knn_mask_ = None  # (N, d) the units each is compared on
        self.pruned_ = False  # the masks are applied to the weights at the first training batch
        self.mem_h_ = None   # (N, d) stored activations at the replay point
        self.mem_y_ = None   # (N,) labels
        self.mem_t_ = None   # (N,) task ids
        self.mem_age_ = None  # (N,) index of the experience that stored them
        self.n_experiences_ = 0
        return self

    def sparsity_masks(self) -> dict:
        """The sparse connectivity, by parameter name, for the run's parameter and FLOP counts."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        return {names[id(lin.weight)]: mask for lin, mask in zip(self._linears, self.masks_)}

    @torch.no_grad()
    def _prune(self):
        """Apply the initial masks, scaling the kept weights by 1/sqrt(density) so the
        pre-activations keep the variance of the dense initialisation."""
        for lin, mask in zip(self._linears, self.masks_):
            lin.weight.mul_(mask / math.sqrt(mask.float().mean()))
        self.pruned_ = True

    def frozen(self, i):
        """The frozen units of backbone layer ``i``: below the replay point every stable unit,
        above it the stable units older than ``sharp_recent_experiences``."""
        return self.ages_[i] > (0 if i < self._n_lower else self.sharp_recent_experiences)

    @torch.no_grad()
    def _apply_masks(self):
        for i, (lin, mask) in enumerate(zip(self._linears, self.masks_)):
            s = self.frozen(i)  # frozen units keep their incoming weights
            lin.weight[s] = self.frozen_w_[i][s]
            lin.bias[s] = self.frozen_b_[i][s]
            lin.weight.mul_(mask)

    def _plastic_rows(self, i):
        return self.ages_[i] == 0

    # -- the two halves of the network ------------------------------------------------------
    def lower(self, x):
        """Activations at the replay point."""
        return self.model.backbone.net[:self._cut](x)

    def upper(self, h, t=None):
        """Logits from activations at the replay point (the layers above it and the head)."""
        return self.model.head(self.model.backbone.net[self._cut:](h), t)

    # -- hooks -------------------------------------------------------------------------------
    def augment(self, batch):
        if not self.pruned_:  # here, not in setup: a model restored from a checkpoint stays as loaded
            self._prune()
        return batch

    def penalty(self, logits, batch):
        if self.mem_h_ is None or len(self.mem_y_) == 0:
            return 0.0
        n = self.sharp_replay_batch_size or batch.n_new
        idx = torch.randint(len(self.mem_y_), (n,), generator=self.generator).to(self.mem_y_.device)
        return F.cross_entropy(self.upper(self.mem_h_[idx], self.mem_t_[idx]), self.mem_y_[idx])

    def after_step(self, batch, logits):
        self._apply_masks()
        if self.sharp_rewire_fraction > 0 and (self.context.step + 1) % self.sharp_rewire_every == 0:
            self.rewire()

    @torch.no_grad()
    def _grow(self, i, k):
        """Grow ``k`` random connections (weight 0) into plastic units of layer ``i``."""
        lin, mask = self._linears[i], self.masks_[i]
        free = (~mask & self._plastic_rows(i).unsqueeze(1)).view(-1).nonzero().flatten()
        k = min(k, len(free))
        grow = free[torch.randperm(len(free), generator=self.generator)[:k].to(free.device)]
        mask.view(-1)[grow] = True
        lin.weight.view(-1)[grow] = 0.0

    @torch.no_grad()
    def rewire(self):
        """In each layer drop the weakest active connections into plastic units and grow as many
        at random (weight 0), into plastic units."""
        for i, (lin, mask) in enumerate(zip(self._linears, self.masks_)):
            active = (mask & self._plastic_rows(i).unsqueeze(1)).view(-1).nonzero().flatten()
            k = int(self.sharp_rewire_fraction * len(active))
            if k == 0:
                continue
            drop = active[lin.weight.view(-1)[active].abs().argsort(stable=True)[:k]]
            mask.view(-1)[drop] = False
            lin.weight.view(-1)[drop] = 0.0
            self._grow(i, k)

    @torch.no_grad()
    def _promote(self, x):
        """Age the stable units and make the most active plastic units of each layer (below the
        replay point only, without unit ages) stable: cut their connections from plastic units
        (regrown elsewhere); the frozen ones (``frozen``) keep their incoming weights from now on."""
        h = x.flatten(1)
        n_layers = len(self._linears) if self.sharp_unit_ages else self._n_lower
        for i, lin in enumerate(self._linears[:n_layers]):
            src_stable = None if i == 0 else self.ages_[i - 1] > 0
            out = F.relu(F.linear(h, lin.weight, lin.bias))
            plastic = self.ages_[i] == 0
            self.ages_[i][~plastic] += 1
            k = min(round(self.sharp_stable_fraction * lin.out_features), int(plastic.sum()))
            if k > 0:
                score = out.mean(0).masked_fill(~plastic, float("-inf"))
                new = score.argsort(descending=True, stable=True)[:k]
                if src_stable is not None:
                    cut = self.masks_[i][new] & ~src_stable.unsqueeze(0)
                    n_cut = int(cut.sum())
                    self.masks_[i][new] &= src_stable.unsqueeze(0)
                    lin.weight[new] *= self.masks_[i][new]
                    self.ages_[i][new] = 1
                    self._grow(i, n_cut)
                else:
                    self.ages_[i][new] = 1
            # frozen rows already hold their frozen weights: a full copy changes none of them
            self.frozen_w_[i] = lin.weight.detach().clone()
            self.frozen_b_[i] = lin.bias.detach().clone()
            h = F.relu(F.linear(h, lin.weight, lin.bias))

    @torch.no_grad()
    def after_experience(self, exp):
        if not self.pruned_:
            self._prune()
        self.n_experiences_ += 1
        d = exp.train
        t = d.t if d.t is not None else torch.full_like(d.y, exp.task_id)
        self._promote(d.x.to(self.device))
        if self.sharp_predict == "knn":
            self._store_representations(d)
        picked = self._per_class(d.y, self.sharp_per_class)
        h = self.lower(d.x[picked].to(self.device))
        y, tt = d.y[picked].to(self.device), t[picked].to(self.device)
        age = torch.full_like(y, self.n_experiences_)
        if self.mem_h_ is not None:
            keep = self.mem_age_ > self.n_experiences_ - self.sharp_recent_experiences
            keep &= ~torch.isin(self.mem_y_, y)  # a class that comes back is stored afresh
            h, y = torch.cat([self.mem_h_[keep], h]), torch.cat([self.mem_y_[keep], y])
            tt, age = torch.cat([self.mem_t_[keep], tt]), torch.cat([self.mem_age_[keep], age])
        self.mem_h_, self.mem_y_, self.mem_t_, self.mem_age_ = h, y, tt, age

    def _per_class(self, y, n):
        """Indices of ``n`` random samples (at most) of each class in ``y``."""
        picked = []
        for c in torch.unique(y).tolist():
            idx = (y == c).nonzero().flatten()
            picked.append(idx[torch.randperm(len(idx), generator=self.generator)[:n].to(idx.device)])
        return torch.cat(picked)

    # -- k-NN prediction (the paper's neocortex) ---------------------------------------------
    def _units(self, min_age):
        """The penultimate units of age >= ``min_age`` (every unit if there is none, as the paper)."""
        valid = self.ages_[-1] >= min_age
        return valid if valid.any() else torch.ones_like(valid)

    @torch.no_grad()
    def _store_representations(self, d):
        """Store the penultimate representations of the new classes (units of age >= 1) and,
        from their replayed activations, of the classes still in the replay memory (units of
        age >= 2 + a, a = 0 for the previous experience), replacing those of the same classes."""
        idx = self._per_class(d.y, self.sharp_knn_per_class)
        hs, ys = [self.model.features(d.x[idx].to(self.device))], [d.y[idx].to(self.device)]
        masks = [self._units(1).expand(len(idx), -1)]
        if self.mem_h_ is not None:
            old = ~torch.isin(self.mem_y_, ys[0])
            for age in torch.unique(self.mem_age_[old]).tolist():
                rows = old & (self.mem_age_ == age)
                sel = rows.nonzero().flatten()[self._per_class(self.mem_y_[rows], self.sharp_knn_per_class)]
                a = self.n_experiences_ - 1 - age  # 0: stored at the previous boundary
                hs.append(self.model.backbone.net[self._cut:](self.mem_h_[sel]))
                ys.append(self.mem_y_[sel])
                masks.append(self._units(2 + a).expand(len(sel), -1))
        h, y, m = torch.cat(hs), torch.cat(ys), torch.cat(masks)
        if self.knn_y_ is not None:
            keep = ~torch.isin(self.knn_y_, y)
            h, y = torch.cat([self.knn_h_[keep], h]), torch.cat([self.knn_y_[keep], y])
            m = torch.cat([self.knn_mask_[keep], m])
        self.knn_h_, self.knn_y_, self.knn_mask_ = h, y, m

    def knn_scores(self, feats: torch.Tensor, n_classes: int) -> torch.Tensor:
        """(B, n_classes) scores: votes among the ``sharp_knn_k`` nearest stored representations
        (Euclidean distance of L2-normalised vectors, each restricted to its class's units) minus
        1e-3 times the distance to the class's nearest one; ``-inf`` for classes not stored."""
        f = feats.float()
        m = self.knn_mask_.float()
        b = self.knn_h_.float() * m
        bhat = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)  # F.normalize
        fnorm = ((f * f) @ m.T).sqrt()                              # (B, N) |f restricted to row j's units|
        a2 = (fnorm > 1e-12).float()                                # |normalised f|^2: 1, or 0 for a zero vector
        d2 = a2 + (bhat * bhat).sum(1) - 2 * (f @ bhat.T) / fnorm.clamp_min(1e-12)
        dist = d2.clamp_min(0).sqrt()
        k = min(self.sharp_knn_k, dist.shape[1])
        near = dist.topk(k, dim=1, largest=False).indices
        votes = torch.zeros(len(f), n_classes, device=f.device).scatter_add_(
            1, self.knn_y_[near], torch.ones(near.shape, device=f.device))
        nearest = torch.full((len(f), n_classes), float("inf"), device=f.device).scatter_reduce_(
            1, self.knn_y_.expand(len(f), -1), dist, "amin")
        scores = votes - 1e-3 * nearest
        return scores.masked_fill(torch.isinf(nearest), float("-inf"))

    def predict(self, x, task=None):
        logits = self.model(x, task)
        if self.sharp_predict == "head" or self.knn_y_ is None:
            return logits
        return self.knn_scores(self.model.features(x), logits.shape[1])

    # -- state -------------------------------------------------------------------------------
    def extra_state(self):
        c = lambda xs: [v.clone() for v in xs]  # noqa: E731
        return {"masks": c(self.masks_), "ages": c(self.ages_), "frozen_w": c(self.frozen_w_),
                "knn_h": self.knn_h_, "knn_y": self.knn_y_, "knn_mask": self.knn_mask_,
                "frozen_b": c(self.frozen_b_), "mem_h": self.mem_h_, "mem_y": self.mem_y_,
                "mem_t": self.mem_t_, "mem_age": self.mem_age_, "n_experiences": self.n_experiences_,
                "pruned": self.pruned_}

    def load_extra_state(self, state):
        dev = lambda v: None if v is None else v.to(self.device)  # noqa: E731
        self.masks_ = [dev(m) for m in state["masks"]]
        self.ages_ = [dev(m) for m in state["ages"]]
        self.knn_h_, self.knn_y_, self.knn_mask_ = dev(state["knn_h"]), dev(state["knn_y"]), dev(state["knn_mask"])
        self.frozen_w_ = [dev(m) for m in state["frozen_w"]]
        self.frozen_b_ = [dev(m) for m in state["frozen_b"]]
        self.mem_h_, self.mem_y_ = dev(state["mem_h"]), dev(state["mem_y"])
        self.mem_t_, self.mem_age_ = dev(state["mem_t"]), dev(state["mem_age"])
        self.n_experiences_ = int(state["n_experiences"])
        self.pruned_ = bool(state["pruned"])
