"""OnPro: online prototype learning (online prototype equilibrium + adaptive prototypical feedback).

Wei, Ye, Mo, Chen, Yang & Huang (2023), "Online Prototype Learning for Online Continual
Learning" (ICCV 2023); the authors' code is ``train.py``, ``modules/OPE.py`` and
``modules/APF.py`` of weilllllls/OnPro.

- Online prototype equilibrium (OPE, :func:`ope_loss`): the prototypes of a minibatch are the
  per-class means of its L2-normalised projections, one set per augmented view; each prototype
  is contrasted with every other prototype of both views at ``onpro_proto_temperature``, its
  positive being the same class's prototype in the other view. It is applied to the stream
  batch (new classes) and to a memory batch (seen classes) and the two are added.
- Adaptive prototypical feedback (APF, :meth:`OnPro.feedback`): the memory batch that is
  trained with cross-entropy is built from ``replay_batch_size`` stored samples: a share
  ``onpro_mixup_base_rate`` of them is mixed up with a random partner of the batch (probability
  ``onpro_mixup_p``, weight ~ U(0, ``onpro_mixup_upper``)), the rest are mixups of two stored
  samples from a class pair drawn with probability ``softmax(1 / d)`` over the pairwise
  distances ``d`` of the last memory batch's class prototypes (:func:`pair_probabilities`):
  the classes closest together, the ones most easily confused, are replayed most (weight ~
  Beta(``onpro_mixup_alpha``, same), with probability ``onpro_mixup_p``).
- Instance-wise contrastive loss (the code's OCM part): supervised contrastive loss over the two
  views of the stream batch and, separately, of the memory batch, on a projection head
  (``proj_``: d -> d -> ``onpro_proj_dim``) at ``onpro_ins_temperature``.
- Loss = cross-entropy (mixup targets) + instance-wise contrastive + OPE(new) + OPE(seen).
  Prediction: the model's head (linear logits), as in the code.

Defaults from the code: proto temperature 0.5, instance temperature 0.07, memory batch 64
capped at 7 per seen class, mixup base rate 0.75, p 0.6, U(0, 0.6) for the base mixup,
Beta(0.4, 0.4) for the pair mixup, projection 128, augmentation flip + grayscale (p 0.25) +
``RandomResizedCrop(scale=(0.3, 1))``, memory 200 (the CIFAR-10 default).

Where we differ: no rotation-based labels (the code's OCM loss multiplies classes by image
rotations; ``lifelong.augment`` has no rotation and digits are not rotation-invariant
classes); the instance loss is plain SupCon on the projection (the code mixes the projection
with a random slice of the backbone feature); the code draws the pair counts by rounding
``p * n`` and we draw the ``n`` pairs from the distribution (``torch.multinomial``); the code
trains cross-entropy on the stream batch only in the first task and on the memory batch only
afterwards, we (task-free) always train it on the stream batch's view and the APF memory batch
joined; flips are off by default (digits); while the memory is empty we train the stream batch
alone. Classes whose prototype is known but that are no longer stored are left out of the pair
distribution (the code substitutes a random stored class).

How a step is computed (issue 14; the numbers of one call per view up to the matrix products'
summation order, tests/test_online_step_speed.py): the random numbers of the four augmented
views are drawn in the method's order and the views computed in one augmentation pass
(``Augment.draw`` / ``Augment.apply``); one backbone forward covers the stream batch's second
view, its classification view, the memory batch, its second view and APF's batch, one
projection all contrastive rows (one forward per view when the backbone has batch norm in
training mode: its statistics depend on the batch); APF looks its pair samples up at once.
"""
from typing import Annotated, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..augment import Augment
from ._contrastive import ContrastiveReplay, supcon_loss

_PER_CLASS = 7  # the code's cap on the memory batch: 7 samples per class seen


def class_prototypes(z: torch.Tensor, y: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-class means of the rows of ``z`` (n_classes, d), zeros for absent classes; mask of present classes)."""
    sums = z.new_zeros(n_classes, z.shape[1]).index_add(0, y, z)
    counts = torch.bincount(y, minlength=n_classes)
    present = counts > 0
    return sums / counts.clamp_min(1)[:, None].to(z.dtype), present


def ope_loss(z1: torch.Tensor, z2: torch.Tensor, y: torch.Tensor,
             temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Online prototype equilibrium over two views' normalised projections ``z1``, ``z2`` (N, d)
    with labels ``y``. Prototypes ``p_k``, ``q_k``: L2-normalised class means of each view for
    the K classes present; over the 2K prototypes ``u`` (``p`` then ``q``), the loss is
    ``-mean_i [u_i.u_i+ / T - log sum_{j != i} exp(u_i.u_j / T)]`` where ``u_i+`` is the same
    class in the other view. Returns (loss, the un-normalised class means of both views averaged,
    (max label + 1, d), zero rows for absent classes)."""
    n = int(y.max()) + 1
    m1, present = class_prototypes(z1, y, n)
    m2, _ = class_prototypes(z2, y, n)
    u = F.normalize(torch.cat([m1[present], m2[present]]), dim=1)
    k = int(present.sum())
    eye = torch.eye(2 * k, dtype=torch.bool, device=u.device)
    logits = (u @ u.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = torch.cat([torch.arange(k, 2 * k), torch.arange(k)]).to(u.device)
    loss = -log_prob[torch.arange(2 * k, device=u.device), pos].mean()
    return loss, ((m1 + m2) / 2).detach()


def _mix(a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Per-sample mixup ``(1 - lam) a + lam b``."""
    w = lam.view(-1, *[1] * (a.ndim - 1)).to(a.dtype)
    return (1 - w) * a + w * b


def pair_probabilities(means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """APF's class-pair distribution: for class prototypes ``means`` (K, d), the K(K-1)/2 pairs
    (i < j, in ``torch.combinations`` order) and their probabilities ``softmax(1 / ||m_i - m_j||)``."""
    pairs = torch.combinations(torch.arange(len(means), device=means.device), 2)
    dist = torch.pdist(means)
    return pairs, F.softmax(1.0 / dist.clamp_min(1e-12), dim=0)


class OnPro(ContrastiveReplay):
    name = "onpro"
    paper = "Wei et al. 2023, Online Prototype Learning for Online Continual Learning (ICCV)"
    _aug_prefix = "onpro"

    def __init__(self, mem_size: Annotated[int, Field(ge=1)] = 200,
                 replay_batch_size: Optional[Annotated[int, Field(ge=1)]] = 64,
                 onpro_proto_temperature: Annotated[float, Field(gt=0)] = 0.5,
                 onpro_ins_temperature: Annotated[float, Field(gt=0)] = 0.07,
                 onpro_proj_dim: Annotated[int, Field(ge=1)] = 128,
                 onpro_mixup_base_rate: Annotated[float, Field(ge=0, le=1)] = 0.75,
                 onpro_mixup_p: Annotated[float, Field(ge=0, le=1)] = 0.6,
                 onpro_mixup_upper: Annotated[float, Field(ge=0, le=1)] = 0.6,
                 onpro_mixup_alpha: Annotated[float, Field(gt=0)] = 0.4,
                 onpro_aug_crop: Literal["resized", "pad", "none"] = "resized",
                 onpro_aug_flip: bool = False):
        super().__init__()
        self.mem_size = mem_size
        self.replay_batch_size = replay_batch_size
        self.onpro_proto_temperature = onpro_proto_temperature
        self.onpro_ins_temperature = onpro_ins_temperature
        self.onpro_proj_dim = onpro_proj_dim
        self.onpro_mixup_base_rate = onpro_mixup_base_rate
        self.onpro_mixup_p = onpro_mixup_p
        self.onpro_mixup_upper = onpro_mixup_upper
        self.onpro_mixup_alpha = onpro_mixup_alpha
        self.onpro_aug_crop = onpro_aug_crop
        self.onpro_aug_flip = onpro_aug_flip

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        d, n = self.model.head.linear.in_features, self.model.head.linear.out_features
        with torch.random.fork_rng(devices=[]):  # own initialisation, independent of the global RNG
            torch.manual_seed(seed + 3)
            self.proj_ = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, self.onpro_proj_dim)).to(self.device)
        self.classes_mean_ = torch.zeros(n, self.onpro_proj_dim, device=self.device)  # last memory batch's prototypes
        return self

    def param_groups(self):
        return [{"params": list(self.model.parameters()) + list(self.proj_.parameters())}]

    def _augmenter(self, x) -> Optional[Augment]:
        """The view's augmentation for images ``x``; ``None`` (views are the inputs) otherwise."""
        if x.ndim != 4:
            return None
        return Augment(crop=self.onpro_aug_crop, crop_scale=(0.3, 1.0), crop_padding=max(1, x.shape[-1] // 8),
                       flip_p=0.5 if self.onpro_aug_flip else 0.0, jitter_p=0.0, grayscale_p=0.25)

    def view(self, x):
        aug = self._augmenter(x)
        return x if aug is None else aug(x, self.generator)

    def augment(self, batch):
        return batch  # the memory batch is drawn in ``loss`` (APF needs its own draw)

    # -- adaptive prototypical feedback -------------------------------------------------------
    def _lam(self, n: int, beta: bool) -> torch.Tensor:
        """Mixup weights: with probability ``onpro_mixup_p`` per sample, Beta(alpha, alpha) or
        U(0, upper); 0 otherwise. Every draw comes from ``self.generator``."""
        on = torch.rand(n, generator=self.generator) < self.onpro_mixup_p
        if beta:
            rng = np.random.default_rng(int(torch.randint(2 ** 62, (1,), generator=self.generator)))
            lam = torch.from_numpy(rng.beta(self.onpro_mixup_alpha, self.onpro_mixup_alpha, n)).float()
        else:
            lam = torch.rand(n, generator=self.generator) * self.onpro_mixup_upper
        return (lam * on).to(self.device)

    def feedback(self, x: torch.Tensor, y: torch.Tensor):
        """APF on a uniform memory draw ``(x, y)``: (mixed inputs, first labels, second labels,
        weights of the second labels), as many as ``x``."""
        n_base = int(len(y) * self.onpro_mixup_base_rate)
        partner = torch.randperm(n_base, generator=self.generator).to(self.device)
        lam = self._lam(n_base, beta=False)
        xs = [_mix(x[:n_base], x[:n_base][partner], lam)]
        ya, yb, lams = [y[:n_base]], [y[:n_base][partner]], [lam]
        n_pair = len(y) - n_base
        mem = self.buffer_.get()
        counts = torch.bincount(mem["y"], minlength=len(self.classes_mean_))
        known = (self.classes_mean_.abs().sum(1) > 0) & (counts > 0).to(self.classes_mean_.device)
        classes = known.nonzero().flatten()
        if n_pair > 0 and len(classes) >= 2:
            pairs, p = pair_probabilities(self.classes_mean_[classes])
            drawn = classes[pairs[torch.multinomial(p.cpu(), n_pair, replacement=True, generator=self.generator)]]
            # one random stored sample of each drawn class c: the r-th of its n_c slots (in slot order),
            # r ~ U{0..n_c - 1} drawn one class at a time; the slots are then looked up all at once
            n_of = counts.tolist()
            r = [int(torch.randint(n_of[c], (1,), generator=self.generator)) for c in drawn.flatten().tolist()]
            by_class = torch.argsort(mem["y"], stable=True)   # slots grouped by class, each group in slot order
            first = counts.cumsum(0) - counts
            picks = by_class[first[drawn.flatten().to(first.device)] + torch.tensor(r, device=first.device)]
            picks = picks.view(n_pair, 2)
            lam = self._lam(n_pair, beta=True)
            xs.append(_mix(mem["x"][picks[:, 0]], mem["x"][picks[:, 1]], lam))
            ya.append(mem["y"][picks[:, 0]]), yb.append(mem["y"][picks[:, 1]]), lams.append(lam)
        elif n_pair > 0:  # fewer than two classes with a prototype: the rest stays as drawn
            xs.append(x[n_base:]), ya.append(y[n_base:]), yb.append(y[n_base:]), lams.append(x.new_zeros(n_pair))
        return torch.cat(xs), torch.cat(ya), torch.cat(yb), torch.cat(lams)

    # -- loss ---------------------------------------------------------------------------------
    def _features(self, groups: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        """Backbone features of every tensor in ``groups``: one forward over all of them, or, when
        the backbone has a batch-norm layer in training mode (its statistics are those of the
        batch it sees), one forward per group, the batches the method is defined on."""
        flat = [t for g in groups for t in g]
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
                   for m in self.model.backbone.modules()):
            return list(self.model.features(torch.cat(flat)).split([len(t) for t in flat]))
        return [h for g in groups for h in self.model.features(torch.cat(g)).split([len(t) for t in g])]

    def loss(self, logits, batch):
        # Every input is prepared first, its random numbers drawn in the order of the method (the
        # stream's second view, its classification view, the memory draw, the memory's second view,
        # APF, the view of APF's batch); then all views are computed at once, one backbone forward
        # and one projection go over all rows (the numbers of one forward per view up to the matrix
        # products' summation order; per view when the backbone has batch norm in training mode).
        x, y = batch.x, batch.y
        n = len(y)
        aug = self._augmenter(x)
        views = []  # (input, its augmentation draws): drawn in order, computed in one pass below

        def draw(v):
            views.append((v, aug.draw(v, self.generator) if aug is not None else None))

        draw(x)   # the stream batch's second view
        draw(x)   # its classification view
        ce_a, ce_b, ce_lam = y, y, y.new_zeros(n, dtype=torch.float)
        memory = len(self.buffer_) > 0
        if memory:
            n_seen = int((torch.bincount(self.buffer_.y[:len(self.buffer_)]) > 0).sum())
            mx, my, _ = self.buffer_.sample(min(self.replay_batch_size or n, _PER_CLASS * n_seen), self.generator)
            draw(mx)
            fx, fa, fb, flam = self.feedback(mx, my)   # uses the prototypes of the previous step
            draw(fx)
            ce_a, ce_b, ce_lam = torch.cat([ce_a, fa]), torch.cat([ce_b, fb]), torch.cat([ce_lam, flam])
        inputs = [v for v, _ in views]
        if aug is not None:
            inputs = aug.apply(inputs, [d for _, d in views])
        if memory:
            x2, ce_x, mx2, fx2 = inputs
            h2, hm1, hm2, h_ce, h_f = self._features([[x2], [mx], [mx2], [ce_x, fx2]])
            h2, h_ce = torch.cat([h2, hm1, hm2]), torch.cat([h_ce, h_f])
        else:
            h2, h_ce = self._features([[inputs[0]], [inputs[1]]])
        z = F.normalize(self.proj_(torch.cat([self.features_of(batch), h2])), dim=1)
        z1, z2 = z[:n], z[n:2 * n]
        loss = supcon_loss(torch.cat([z1, z2]), torch.cat([y, y]), self.onpro_ins_temperature)
        loss = loss + ope_loss(z1, z2, y, self.onpro_proto_temperature)[0]
        if memory:
            m1, m2 = z[2 * n:].chunk(2)
            loss = loss + supcon_loss(torch.cat([m1, m2]), torch.cat([my, my]), self.onpro_ins_temperature)
            seen, means = ope_loss(m1, m2, my, self.onpro_proto_temperature)
            self.classes_mean_.zero_()[:len(means)] = means
            loss = loss + seen
        out = self.masked(self.model.head(h_ce))
        ce_a, ce_b = F.cross_entropy(out, ce_a, reduction="none"), F.cross_entropy(out, ce_b, reduction="none")
        return loss + ((1 - ce_lam) * ce_a + ce_lam * ce_b).mean()

    def extra_state(self):
        return super().extra_state() | {"proj": self.proj_.state_dict(), "classes_mean": self.classes_mean_.clone()}

    def load_extra_state(self, state):
        super().load_extra_state(state)
        self.proj_.load_state_dict(state["proj"])
        self.classes_mean_ = state["classes_mean"].to(self.device).clone()
