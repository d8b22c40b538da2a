"""Sparse training, shared by the sparse methods: masks over the weights of a model's
``nn.Linear`` / ``nn.Conv2d`` layers, their initial allocation, prune and grow steps, the
gradual schedules, and the parameter and FLOP counts every run reports.

Masks (:class:`SparseMasks`): one boolean tensor per weight (biases stay dense). The weights
themselves hold the zeros: :meth:`SparseMasks.apply` multiplies every masked weight by its mask
in place, and a user calls it after every optimizer step (a strategy in ``after_step``). That is
the cheapest correct option: one in-place multiply per masked layer per step, no extra work in
the forward pass, the backward pass unchanged. Gradients are *not* masked, so after a backward
the weights' ``.grad`` is the dense gradient RigL's and GraNet's growth criterion reads. An
optimizer step may move a pruned weight (momentum, Adam moments), but ``apply`` sets it back to
exactly 0 before anything reads it (every mask change starts with ``apply`` too). When a mask
changes, the optimizer's per-weight state (momentum, ``exp_avg``, ``exp_avg_sq``) is zeroed at
every position that was not active both before and after, so a regrown weight starts from 0
with no stale momentum (as ``Masking.apply_mask`` / ``reset_momentum`` in the GraNet code).

Initial allocation (Evci, Gale, Menick, Castro & Elsen 2020, "Rigging the Lottery: Making All
Tickets Winners", RigL): ``"erk"`` (Erdos-Renyi-Kernel) gives layer l a density proportional to
``sum(shape) / prod(shape)`` = (n_in + n_out + k_h + k_w) / (n_in n_out k_h k_w) (a linear layer:
(n_in + n_out) / (n_in n_out)), scaled so the overall density is 1 - sparsity; a layer whose
density would exceed 1 becomes dense and the others are scaled again (the loop of RigL's
``sparse_utils`` and GraNet's ``core.py``). ``"uniform"``: every layer at the same density.
``dense_first`` keeps the first masked layer dense, as both papers do for uniform: with
``"uniform"`` the other layers keep density 1 - sparsity (the overall sparsity is then a little
lower, as in RigL); with ``"erk"`` the first layer enters the dense set of the loop above and
the overall sparsity is kept. Each layer gets exactly ``round(density * numel)`` active weights,
drawn from the generator (the reference codes draw Bernoulli masks, so their counts vary).

Prune criteria: ``"magnitude"`` (smallest |w| among active weights), ``"random"``. Grow
criteria: ``"gradient"`` (largest |dL/dw| of the dense gradient among inactive positions: RigL,
GraNet), ``"random"`` (SET). Grown weights start at 0 (the function the network computes does
not change when they appear: GraNet's *zero-cost* neuroregeneration); a weight dropped and
regrown in the same :meth:`~SparseMasks.regenerate` keeps its value, as in RigL
(``reinit_when_same=False``) and GraNet. Schedules: :func:`cubic_sparsity` (Zhu & Gupta 2018,
"To prune, or not to prune") for gradual dense-to-sparse pruning, :func:`cosine_fraction` for
the annealed prune/regrow fraction of RigL (GraNet anneals it to a floor of 0.005).

Counts (:func:`count_parameters`, :func:`forward_flops`, :func:`run_costs`): every run's
``results.json`` gets ``parameters: {total, nonzero}`` and ``flops: {inference_per_sample,
training}``. A linear or convolutional layer costs ``2 * nonzero weights * output positions``
FLOPs per sample (a multiply and an add per use of a weight; Linear: 2 n_in n_out density;
Conv2d: 2 k_h k_w (c_in/groups) c_out H_out W_out density, output sizes from forward hooks on a
dummy batch); biases, norms and activations are not counted. Training FLOPs = 3 x the forward
FLOPs per sample (forward, and a backward of twice its cost) x the samples the loop trained on
(counted after ``augment``, so replayed samples count), plus the samples a strategy trains beside
the loop's batches and counts itself (``extra_trained_samples()``, :func:`strategy_samples`: DER's
replayed minibatches). Not counted: a method's extra passes (a teacher's or old model's
forward, a virtual step, a Fisher estimate, a closed-form fit), and for a method whose density
changes during training the count uses the final masks (for dense-to-sparse training this
undercounts the early, denser steps), unless the strategy counts its own training FLOPs step
by step (``training_flops()``, :func:`strategy_flops`: SparCL), which then replace the estimate.
"""
from __future__ import annotations

import math
from typing import Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from .errors import ConfigError

LAYER_TYPES = (nn.Linear, nn.Conv2d)
DISTRIBUTIONS = ("erk", "uniform")
PRUNE_CRITERIA = ("magnitude", "random")
GROW_CRITERIA = ("gradient", "random")
SCOPES = ("global", "layer")


def _check_fraction(value, what: str, upper_open: bool = True) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and (0 <= value < 1 if upper_open else 0 <= value <= 1)):  # NaN fails both
        raise ConfigError(f"{what} must be a number in [0, {'1)' if upper_open else '1]'}, got {value!r}")


def _check_choice(value, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")


# --------------------------------------------------------------------------- allocation
def erk_densities(shapes: Mapping[str, Sequence[int]], density: float, dense: Iterable[str] = ()) -> dict[str, float]:
    """Erdos-Renyi-Kernel densities per layer for an overall ``density``: layer l gets
    ``eps * sum(shape_l) / prod(shape_l)``, ``eps`` chosen so the active weights add up to
    ``density * total``; a layer that would exceed 1 (and every layer in ``dense``) is dense."""
    _check_fraction(density, "density", upper_open=False)
    n = {k: math.prod(s) for k, s in shapes.items()}
    raw = {k: sum(s) / math.prod(s) for k, s in shapes.items()}
    dense = set(dense)
    eps = 0.0
    while True:
        sparse = [k for k in shapes if k not in dense]
        if not sparse:
            break
        budget = sum(density * n[k] for k in sparse) - sum((1 - density) * n[k] for k in dense)
        if budget < 0:
            raise ConfigError(f"density {density:g} cannot be reached with layers {sorted(dense)} dense: they alone "
                              "hold more weights than the budget (lower the sparsity or leave them sparse)")
        eps = budget / sum(raw[k] * n[k] for k in sparse)
        top = max(raw[k] for k in sparse)
        if eps * top <= 1:
            break
        dense |= {k for k in sparse if raw[k] == top}  # the reference loop: the densest layers first
    return {k: 1.0 if k in dense else eps * raw[k] for k in shapes}


def uniform_densities(shapes: Mapping[str, Sequence[int]], density: float,
                      dense: Iterable[str] = ()) -> dict[str, float]:
    """The same ``density`` in every layer; layers in ``dense`` stay dense."""
    _check_fraction(density, "density", upper_open=False)
    dense = set(dense)
    return {k: 1.0 if k in dense else float(density) for k in shapes}


def prunable_layers(model: nn.Module, include=None) -> dict[str, nn.Module]:
    """The ``nn.Linear`` / ``nn.Conv2d`` modules of ``model`` by qualified name, in module order.
    ``include``: None (all of them), a list of qualified names, or ``callable(name, module) -> bool``."""
    found = {n: m for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)}
    if include is None:
        return found
    if callable(include):
        return {n: m for n, m in found.items() if include(n, m)}
    names = list(include)
    missing = [n for n in names if n not in found]
    if missing:
        raise ConfigError(f"sparse masks: no Linear/Conv2d layer named {missing[0]!r}; the model has: "
                          f"{', '.join(found) or '(none)'}")
    return {n: found[n] for n in names}


# --------------------------------------------------------------------------- schedules
def cubic_sparsity(t: float, initial: float, final: float, start: float, end: float) -> float:
    """Zhu & Gupta (2018): ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (end - t0))^3`` for
    ``t0 <= t <= end`` (``end = t0 + n dt``); ``s_i`` before ``t0``, ``s_f`` after ``end``."""
    if t <= start:
        return float(initial)
    if t >= end:
        return float(final)
    return float(final + (initial - final) * (1 - (t - start) / (end - start)) ** 3)


def cosine_fraction(t: float, total: float, initial: float, minimum: float = 0.0) -> float:
    """RigL's annealed update fraction ``minimum + (initial - minimum) (1 + cos(pi t / total)) / 2``
    (RigL: ``minimum`` 0; GraNet's ``CosineDecay``: 0.005); ``minimum`` after ``total``."""
    if total <= 0 or t >= total:
        return float(minimum)
    return float(minimum + (initial - minimum) * (1 + math.cos(math.pi * t / total)) / 2)


def largest(scores: torch.Tensor, n: int) -> torch.Tensor:
    """A bool mask of exactly the ``n`` largest entries of ``scores`` (ties at the threshold: the
    first in memory order). A selection (``kthvalue``), cheaper than ``topk`` when ``n`` is large."""
    flat = scores.flatten()
    n = max(0, min(int(n), flat.numel()))
    if n == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(flat, flat.numel() - n + 1).values
    out = flat > threshold
    ties = torch.nonzero(flat == threshold).flatten()[: n - int(out.sum())]
    out[ties] = True
    return out.view(scores.shape)


# --------------------------------------------------------------------------- masks
class SparseMasks:
    """Boolean masks over the weights of ``model``'s Linear/Conv2d layers (see the module
    docstring). ``sparsity`` in [0, 1): the fraction of masked weights that start inactive,
    allocated by ``distribution`` (``"erk"`` or ``"uniform"``), each layer's active positions
    drawn from ``generator``. Call :meth:`apply` after every optimizer step.

    ``masks``: name -> bool tensor (on the weight's device); ``layers``: name -> module; names
    are qualified in the ``model`` given (e.g. the backbone)."""

    def __init__(self, model: nn.Module, sparsity: float, distribution: str = "erk", include=None,
                 dense_first: bool = False, generator: torch.Generator | None = None):
        _check_fraction(sparsity, "sparsity")
        _check_choice(distribution, DISTRIBUTIONS, "sparsity distribution")
        self.layers = prunable_layers(model, include)
        if not self.layers:
            raise ConfigError(f"sparse masks: {type(model).__name__} has no Linear or Conv2d layer to mask")
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        shapes = {k: tuple(m.weight.shape) for k, m in self.layers.items()}
        dense = {next(iter(shapes))} if dense_first else set()
        allocate = erk_densities if distribution == "erk" else uniform_densities
        self.initial_densities = allocate(shapes, 1.0 - sparsity, dense)
        self.masks: dict[str, torch.Tensor] = {}
        for k, m in self.layers.items():
            w = m.weight
            keep = round(self.initial_densities[k] * w.numel())
            flat = torch.zeros(w.numel(), dtype=torch.bool)
            flat[torch.randperm(w.numel(), generator=self.generator)[:keep]] = True
            self.masks[k] = flat.view(w.shape).to(w.device)

    # -- reading ----------------------------------------------------------------------
    def weights(self) -> Iterator[tuple[str, nn.Parameter, torch.Tensor]]:
        for k, m in self.layers.items():
            yield k, m.weight, self.masks[k]

    def numel(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    def nonzero(self) -> int:
        """Active weights over every mask (one host sync)."""
        return int(sum(m.sum() for m in self.masks.values()))

    def density(self) -> float:
        return self.nonzero() / self.numel()

    def sparsity(self) -> float:
        return 1.0 - self.density()

    def layer_densities(self) -> dict[str, float]:
        return {k: float(m.float().mean()) for k, m in self.masks.items()}

    # -- keeping the weights sparse -----------------------------------------------------
    @torch.no_grad()
    def apply(self) -> None:
        """Zero every inactive weight in place (after every optimizer step)."""
        for _, w, mask in self.weights():
            w.mul_(mask)

    @torch.no_grad()
    def _set(self, name: str, new: torch.Tensor, optimizer=None) -> None:
        """Replace a layer's mask: inactive weights zeroed; the optimizer's per-weight state zeroed
        wherever the position was not active both before and after (grown weights start clean)."""
        old, w = self.masks[name], self.layers[name].weight
        self.masks[name] = new
        w.mul_(new)
        if optimizer is not None and w in optimizer.state:
            keep = old & new
            for v in optimizer.state[w].values():
                if torch.is_tensor(v) and v.shape == w.shape:
                    v.mul_(keep)

    def _scores(self, name: str, criterion: str) -> torch.Tensor:
        w = self.layers[name].weight
        if criterion == "magnitude":
            return w.detach().abs()
        if criterion == "gradient":
            if w.grad is None:
                raise RuntimeError(f"grow criterion 'gradient' needs the gradient of layer {name!r} (call it after "
                                   "backward, before the gradients are cleared)")
            return w.grad.detach().abs()
        return torch.rand(w.shape, generator=self.generator).to(w.device)  # random

    @staticmethod
    def _top(scores: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
        """A mask of the ``k`` candidates with the highest scores."""
        out = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
        k = min(k, int(candidates.sum()))
        if k > 0:
            s = scores.flatten().float().masked_fill(~candidates.flatten(), float("-inf"))
            out[torch.topk(s, k).indices] = True
        return out.view(scores.shape)

    def _drop(self, fraction: float, criterion: str) -> dict[str, torch.Tensor]:
        """Per layer, ``ceil(fraction * active)`` active weights to remove (GraNet's
        ``magnitude_death``): the lowest |w| (magnitude) or random ones."""
        _check_fraction(fraction, "prune fraction", upper_open=False)
        _check_choice(criterion, PRUNE_CRITERIA, "prune criterion")
        out = {}
        for k, mask in self.masks.items():
            n = math.ceil(fraction * int(mask.sum()))
            s = self._scores(k, criterion)
            out[k] = self._top(-s if criterion == "magnitude" else s, mask, n)
        return out

    # -- changing the masks ---------------------------------------------------------------
    def prune(self, fraction: float, criterion: str = "magnitude", optimizer=None) -> dict[str, int]:
        """Remove ``ceil(fraction * active)`` weights of every layer; returns the counts removed."""
        self.apply()  # the invariant every change starts from: inactive weights are 0
        drops = self._drop(fraction, criterion)
        for k, d in drops.items():
            self._set(k, self.masks[k] & ~d, optimizer)
        return {k: int(d.sum()) for k, d in drops.items()}

    def grow(self, counts: Mapping[str, int], criterion: str = "gradient", optimizer=None) -> None:
        """Activate ``counts[name]`` inactive positions of each layer (highest |gradient|, or
        random); the new weights are 0 (zero-cost: the network's function does not change)."""
        _check_choice(criterion, GROW_CRITERIA, "grow criterion")
        self.apply()
        for k, n in counts.items():
            mask = self.masks[k]
            self._set(k, mask | self._top(self._scores(k, criterion), ~mask, int(n)), optimizer)

    def regenerate(self, fraction: float, prune: str = "magnitude", grow: str = "gradient", optimizer=None,
                   allowed: Mapping[str, torch.Tensor] | None = None) -> int:
        """Prune ``ceil(fraction * active)`` weights of every layer and regrow as many (GraNet's
        zero-cost neuroregeneration, RigL's drop/grow): every layer's count, so the sparsity, is
        unchanged. A weight dropped and regrown keeps its value; the other regrown ones are 0.
        ``allowed``: {layer name: bool tensor} of the positions that may grow there (a layer not
        named: every position); a layer with fewer allowed positions than it dropped regrows only
        those (DST-CL: growth only where no earlier task owns the weight).
        Returns the number of weights that moved."""
        _check_choice(grow, GROW_CRITERIA, "grow criterion")
        self.apply()
        drops = self._drop(fraction, prune)
        moved = 0
        for k, d in drops.items():
            kept = self.masks[k] & ~d
            n = int(d.sum())
            candidates = ~kept if allowed is None or k not in allowed else ~kept & allowed[k]
            grown = self._top(self._scores(k, grow), candidates, n)
            moved += int((grown & ~self.masks[k]).sum())
            self._set(k, kept | grown, optimizer)
        return moved

    def keep_top(self, scores: Mapping[str, torch.Tensor], counts: Mapping[str, int], optimizer=None) -> dict[str, int]:
        """Per layer named in ``counts``, keep the ``counts[name]`` active weights with the highest
        ``scores[name]`` (a method's own importance, e.g. SparCL's ``|w| + lambda |grad|``) and
        prune the rest. Never grows: a count at or above the layer's active number changes
        nothing. Returns the number removed per layer."""
        self.apply()
        removed = {}
        for k, n in counts.items():
            mask, n = self.masks[k], max(int(n), 0)
            active = int(mask.sum())
            removed[k] = max(active - n, 0)
            if removed[k]:
                self._set(k, largest(scores[k].detach().float().masked_fill(~mask, float("-inf")), n), optimizer)
        return removed

    def prune_to(self, density: float, criterion: str = "magnitude", scope: str = "global", optimizer=None) -> None:
        """Gradual pruning's step: keep the ``round(density * numel)`` active weights with the
        largest |w| over all masked layers (``"global"``, as GraNet's ``pruning``) or per layer
        (``"layer"``). Never grows: a density above the current one changes nothing."""
        _check_fraction(density, "density", upper_open=False)
        _check_choice(criterion, PRUNE_CRITERIA, "prune criterion")
        _check_choice(scope, SCOPES, "pruning scope")
        self.apply()
        names = list(self.masks)
        scores = {k: self._scores(k, criterion) for k in names}
        if scope == "layer":
            for k in names:
                keep = min(round(density * self.masks[k].numel()), int(self.masks[k].sum()))
                self._set(k, self._top(scores[k], self.masks[k], keep), optimizer)
            return
        active = torch.cat([self.masks[k].flatten() for k in names])
        keep = min(round(density * active.numel()), int(active.sum()))
        if keep == int(active.sum()):
            return
        flat = self._top(torch.cat([scores[k].flatten().float() for k in names]), active, keep)
        for k, part in zip(names, torch.split(flat, [self.masks[k].numel() for k in names])):
            self._set(k, part.view(self.masks[k].shape), optimizer)

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"masks": {k: m.clone() for k, m in self.masks.items()}}

    def load_state_dict(self, state: dict) -> None:
        masks = state["masks"]
        if set(masks) != set(self.masks):
            raise ValueError(f"saved masks are for layers {sorted(masks)}, these masks cover {sorted(self.masks)}")
        for k, m in masks.items():
            if tuple(m.shape) != tuple(self.masks[k].shape):
                raise ValueError(f"saved mask of layer {k!r} has shape {tuple(m.shape)}, "
                                 f"the weight {tuple(self.masks[k].shape)}")
            self.masks[k] = m.to(device=self.masks[k].device, dtype=torch.bool, copy=True)


# --------------------------------------------------------------------------- counts
def _by_parameter(model: nn.Module, masks) -> dict[int, torch.Tensor]:
    """``masks`` (None, a SparseMasks, a mapping of parameter names qualified in ``model`` to
    masks, or a list of those) -> {id(parameter): mask}; two masks of one weight are combined (and)."""
    out: dict[int, torch.Tensor] = {}
    if masks is None:
        return out
    items = masks if isinstance(masks, (list, tuple)) else [masks]
    params = dict(model.named_parameters())
    for item in items:
        if isinstance(item, SparseMasks):
            pairs = [(w, m) for _, w, m in item.weights()]
        else:
            unknown = [k for k in item if k not in params]
            if unknown:
                raise ValueError(f"mask for {unknown[0]!r}, which is no parameter of the model")
            pairs = [(params[k], m) for k, m in item.items()]
        for w, m in pairs:
            m = m.bool()
            out[id(w)] = out[id(w)] & m if id(w) in out else m
    return out


def count_parameters(model: nn.Module, masks=None) -> tuple[int, int]:
    """(total, nonzero): every parameter of ``model``; nonzero counts a masked weight's active
    positions and every other parameter whole (the parameters a sparse model stores)."""
    lookup = _by_parameter(model, masks)
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(lookup[id(p)].sum()) if id(p) in lookup else p.numel()
    return total, nonzero


@torch.no_grad()
def forward_flops(model: nn.Module, input_shape: Sequence[int], masks=None, task: int | None = None) -> int:
    """Floating-point operations of one forward pass per sample, counting the Linear and
    Conv2d layers it calls: 2 x active weights x output positions each (the output sizes from
    forward hooks on dummy samples, in eval mode). ``task``: passed as every sample's task
    id (task-IL: one head answers)."""
    lookup = _by_parameter(model, masks)
    total = [0]

    def hook(module, inputs, output):
        w = module.weight
        active = int(lookup[id(w)].sum()) if id(w) in lookup else w.numel()
        total[0] += 2 * active * (output.numel() // (w.shape[0] * len(x)))

    layers = [m for m in model.modules() if isinstance(m, LAYER_TYPES)]
    handles = [m.register_forward_hook(hook) for m in layers]
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    x = torch.zeros((2, *input_shape), device=device)  # two samples, as build_model checks a backbone with
    was_training = model.training
    model.eval()
    try:
        with torch.compiler.set_stance("force_eager"):  # a compiled backbone: the hooks must run
            if task is None:
                model(x)
            else:
                model(x, torch.full((len(x),), int(task), device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total[0]


def strategy_masks(strategy) -> list:
    """The masks a sparse strategy exposes (its ``masks_`` attribute, or ``sparsity_masks()``:
    a SparseMasks or {parameter name in ``strategy.model``: mask}), over every member of a
    composition; empty for a dense method."""
    found = []
    for m in getattr(strategy, "members", None) or [strategy]:
        masks = m.sparsity_masks() if callable(getattr(m, "sparsity_masks", None)) else getattr(m, "masks_", None)
        if isinstance(masks, (SparseMasks, dict)):  # another kind of ``masks_`` (a method's own) is not ours to read
            found.append(masks)
    return found


def strategy_samples(strategy) -> int:
    """Samples a strategy trained (forward and backward through the model) beside the loop's
    batches, over every member of a composition: each one's ``extra_trained_samples()`` (DER's
    replayed minibatches, which its forward joins to the batch); 0 when none counts."""
    return sum(int(m.extra_trained_samples()) for m in getattr(strategy, "members", None) or [strategy]
               if callable(getattr(m, "extra_trained_samples", None)))


def strategy_flops(strategy) -> dict:
    """Training FLOPs a strategy counted itself, step by step (its ``training_flops()``: a dict
    with ``training`` and any further counts), from the first member of a composition that
    counts; empty when none does (then the runner's estimate stands). For a method whose
    density or trained samples change during training (SparCL)."""
    for m in getattr(strategy, "members", None) or [strategy]:
        counted = getattr(m, "training_flops", None)
        if callable(counted):
            return dict(counted())
    return {}


def run_costs(model: nn.Module, input_shape: Sequence[int], samples_trained: int, masks=None,
              task: int | None = None, counted: Mapping[str, int] | None = None) -> dict:
    """What ``results.json`` reports: ``parameters: {total, nonzero}`` and ``flops:
    {inference_per_sample, training}`` (training = 3 x inference per sample x samples trained).
    ``counted`` (:func:`strategy_flops`): a strategy's own counts, which replace ``training``
    and add their other keys."""
    total, nonzero = count_parameters(model, masks)
    flops = forward_flops(model, input_shape, masks, task)
    out = {"inference_per_sample": flops, "training": 3 * flops * int(samples_trained)}
    out.update({k: int(v) for k, v in (counted or {}).items()})
    return {"parameters": {"total": total, "nonzero": nonzero}, "flops": out}


__all__ = ["SparseMasks", "count_parameters", "cosine_fraction", "cubic_sparsity", "erk_densities",
           "forward_flops", "largest", "prunable_layers", "run_costs", "strategy_flops", "strategy_masks", "strategy_samples",
           "uniform_densities"]
