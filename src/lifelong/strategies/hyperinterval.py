"""HyperInterval: a hypernetwork maps interval task embeddings to weight intervals.

Krukowski, Bielawska, Ksiazek, Wawrzynski, Batorski & Spurek (2024), "HyperInterval:
Hypernetwork approach to training weight interval regions in continual learning"
(arXiv:2405.15444; later versions titled HINT); reference code github.com/pkrukowski1/HyperInterval
(``IntervalNets/hmlp_ibp_*.py``, ``Training/train_*_classification_scenario.py``,
``Utils/hnet_*_regularizer.py``, ``LossFunctions/classification_loss_function.py``).

Each task ``t`` has an interval embedding ``[c_t - r_t, c_t + r_t]`` in R^M. A hypernetwork (an
MLP of point weights, ReLU) maps it by interval bound propagation in centre/radius form
(``c' = W c + b``, ``r' = |W| r``; a ReLU maps ``[l, u]`` to ``[relu(l), relu(u)]``) to an interval
of the target network's weights ``[theta_t^L, theta_t^U]``. The target network (the run's
backbone, a chain of Linear + ReLU, plus an output layer over the label space whose outputs
outside the task's classes are ``-inf``: task-IL, one head per task) takes its inputs as
points and its weights as intervals: the first layer's bounds are exact for a point input,
the later layers use the exact element-wise product of a non-negative activation interval with
a weight interval (InterContiNet's rule). Its centre weights give the "middle" logits.

Training of task ``t`` (one experience; ``it`` of ``N`` iterations)::

    eps(it)   = eps * it / (N/2 - 1)  for it < N/2, then eps        (interval warm-up)
    kappa(it) = max(1 - 5e-5 * it, kappa) for it < N/2, then kappa
    loss = kappa * CE(middle logits) + (1 - kappa) * CE(worst-case logits)
           + beta / (t-1) * sum_{j<t} || H(e_j) - H*(e_j) ||^2
           + lambda(it) * (L_tightness + L_relu)                      (Shi et al. 2021)

- worst-case logits: the lower bound for the true class, upper bounds for the others (IBP).
- the regulariser keeps every earlier task's generated weights where they were when this task
  started (``H*``: the hypernetwork before it): centre weights only without nesting, the lower,
  centre and upper weights with nesting (the reference's two regularisers).
- only the hypernetwork and the current task's embedding train; earlier embeddings are frozen.

Interval embeddings (``hyperinterval_nesting``):
- ``"cos"`` (default; the paper's universal-embedding setting, ``hmlp_ibp_with_nesting.py``):
  ``c_t = eps/(2M) * cos(e_t)``, ``r_t = eps/M`` per coordinate. Every centre lies within
  ``eps/(2M)`` of 0 and every radius is ``eps/M``, so the intersection of all tasks' intervals is
  never empty (it holds the box ``[-eps/(2M), eps/(2M)]^M``).
- ``"none"`` (``hmlp_ibp_wo_nesting.py``): ``c_t = e_t`` free, ``r_t = eps * softmax(rho_t)`` with a
  learned ``rho_t`` (radii summing to eps). Intersections are then usually empty.

The universal embedding is the centre of the intersection of the finished tasks' intervals:
``[max_t (c_t - r_t), min_t (c_t + r_t)]``. Since it lies inside every task's interval, the
weights it generates lie inside every task's current weight interval (IBP is sound), so its
accuracy on a task is at least that task's worst-case (certified) accuracy under the current
hypernetwork: the paper's guarantee, tested in ``tests/test_hyperinterval.py``. With
``hyperinterval_predict="universal"`` the accuracy matrix is that single network's; the default
``"task"`` answers with each task's embedding centre (the paper's per-task results).

IBP initialisation and warm-up regulariser (Shi, Wang, Zhang, Yi & Hsieh 2021, "Fast Certified
Robust Training with Short Warmup", NeurIPS; github.com/shizhouxing/Fast-Certified-Robust-Training,
``manual_init.py``, ``regularization.py``) where training goes through interval bounds from an
input box, i.e. the hypernetwork (its input is the embedding box; the target network's inputs
are points, so its input radius, the reference of the tightness ratio, is zero):
- ``hyperinterval_init="ibp"``: the hypernetwork's hidden layers (all but the output layer) drawn
  from ``N(0, 2 pi / fan_in^2)``, which keeps the expected interval radius constant through a
  Linear + ReLU; the output layer keeps ``nn.Linear``'s default.
- during the eps warm-up, ``lambda(it) = hyperinterval_warmup_weight * (1 - eps(it)/eps)`` times
  ``L_tightness = mean_l relu(tau - r_0 / mean(r_l)) / tau`` (``r_0``: the embedding's mean
  radius, ``r_l``: the radii of hidden pre-activation ``l``) plus ``L_relu`` (the balance of active
  and inactive units' means and variances), ``tau = 0.5``, weight 0.5: the reference's defaults.

Defaults: the reference's Split MNIST universal-embedding configuration (``prepare_nested_
scenario_params.py``, single run): embedding M = 24, hypernetwork hidden (100,), eps = 10,
beta = 0.001, kappa = 0.5; its target network (784-400-400) is the run's model. Its optimizer
(Adam, lr 1e-3, batch 64, 2000 iterations per task) is the run's to set. For the per-task
setting without nesting the reference uses M = 72, hidden (75, 75), eps = 1, beta = 0.01.

Where we differ:
- The regulariser is divided by the number of earlier tasks once, as the paper writes it; the
  reference code averages over earlier tasks and divides by their number again.
- The output layer spans the whole label space, masked to each task's classes (the reference
  generates one shared 2-unit head for Split MNIST): same predictions in task-IL, and the
  universal network still answers each task with that task's output units.
- No best-on-validation model selection (the reference keeps the best hypernetwork by
  validation accuracy during each task): the last one is used, like every method here.
- A task id that arrives a second time is refused (each task gets one embedding).

Measured (docs/hyperinterval.md): with nesting the trained hypernetwork maps every task's
interval to practically one network, so the universal and the per-task accuracies coincide.

Task-IL only. It owns ``forward``, ``loss`` and ``predict``. The model's own parameters are never
used or trained: its architecture only says what the hypernetwork generates.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import ConfigError
from .base import Strategy

KAPPA_DECAY = 5e-5  # the reference's per-iteration decay of kappa during the warm-up
CHAIN = (nn.Flatten, nn.Identity)


# ---------------------------------------------------------------------------------------------
# interval arithmetic
def hypernet_bounds(layers: nn.ModuleList, c: torch.Tensor, r: torch.Tensor):
    """IBP through Linear + ReLU in centre/radius form: ``(centre, radius, pre-ReLU bounds)``.
    ``c``, ``r``: (k, M) embedding centres and radii (r >= 0)."""
    pre = []
    for i, lin in enumerate(layers):
        c = F.linear(c, lin.weight, lin.bias)
        r = F.linear(r, lin.weight.abs())
        if i < len(layers) - 1:
            lo, hi = c - r, c + r
            pre.append((lo, hi))
            lo, hi = F.relu(lo), F.relu(hi)
            c, r = (hi + lo) / 2, (hi - lo) / 2
    return c, r, pre


def hypernet_point(layers: nn.ModuleList, e: torch.Tensor) -> torch.Tensor:
    """The hypernetwork on point embeddings (k, M) -> (k, P)."""
    for i, lin in enumerate(layers):
        e = lin(e)
        if i < len(layers) - 1:
            e = F.relu(e)
    return e


def split_weights(flat: torch.Tensor, shapes: list[tuple[int, int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A flat parameter vector (P,) -> [(weight (out, in), bias (out,))] per layer."""
    out, k = [], 0
    for o, i in shapes:
        w = flat[k:k + o * i].view(o, i)
        k += o * i
        out.append((w, flat[k:k + o]))
        k += o
    return out


def target_bounds(x: torch.Tensor, centre: list, radius: list):
    """Lower, middle and upper logits of the target network for point inputs ``x`` and weights in
    ``[centre - radius, centre + radius]`` (lists of (weight, bias) per layer). Sound: every network
    with weights in the interval has its outputs between lower and upper."""
    h = x.flatten(1)
    (wc, bc), (wr, br) = centre[0], radius[0]
    mid = F.linear(h, wc, bc)
    rad = F.linear(h.abs(), wr, br)  # exact for a point input
    lo, hi = mid - rad, mid + rad
    for (wc, bc), (wr, br) in zip(centre[1:], radius[1:]):
        lo, hi, mid = F.relu(lo), F.relu(hi), F.relu(mid)
        wl, wu = wc - wr, wc + wr
        # 0 <= lo <= hi: the exact element-wise bounds of a product with w in [wl, wu]
        lo, hi = (F.linear(lo, wl.clamp(min=0)) + F.linear(hi, wl.clamp(max=0)) + (bc - br),
                  F.linear(hi, wu.clamp(min=0)) + F.linear(lo, wu.clamp(max=0)) + (bc + br))
        mid = F.linear(mid, wc, bc)
    return lo, mid, hi


def target_point(x: torch.Tensor, weights: list) -> torch.Tensor:
    h = x.flatten(1)
    for k, (w, b) in enumerate(weights):
        h = F.linear(h, w, b)
        if k < len(weights) - 1:
            h = F.relu(h)
    return h


def warmup_regulariser(pre: list, r0: torch.Tensor, tol: float) -> torch.Tensor:
    """Shi et al. (2021): ``L_tightness + L_relu`` over the pre-ReLU bounds ``pre``; ``r0``: the
    mean input radius."""
    total = r0.new_zeros(())
    if not pre:
        return total
    for lo, hi in pre:
        centre, diff = (hi + lo) / 2, (hi - lo) / 2
        total = total + F.relu(tol - r0 / diff.mean().clamp(min=1e-12)) / tol
        act, inact = lo > 0, hi < 0
        mean_act, mean_inact = (centre * act).mean(), (centre * inact).mean()
        delta = (centre - centre.mean()) ** 2
        mean_ratio = mean_act / -mean_inact
        var_ratio = (delta * act).sum() / (delta * inact).sum()
        mean_ratio = torch.min(mean_ratio, 1 / mean_ratio.clamp(min=1e-12))
        var_ratio = torch.min(var_ratio, 1 / var_ratio.clamp(min=1e-12))
        relu_term = (F.relu(tol - mean_ratio) + F.relu(tol - var_ratio)) / tol
        if torch.isfinite(relu_term):
            total = total + relu_term
    return total / len(pre)


def _target_shapes(model, method: str) -> list[tuple[int, int]]:
    """(out, in) of every layer the hypernetwork generates: the backbone's Linear layers (each
    followed by a ReLU) and an output layer over the label space."""
    leaves = [m for m in model.backbone.modules() if not list(m.children())]
    shapes, pending = [], None
    for m in leaves:
        if isinstance(m, nn.Linear):
            if pending is not None:
                break
            pending = m
        elif isinstance(m, nn.ReLU) and pending is not None:
            shapes.append((pending.out_features, pending.in_features))
            pending = None
        elif not isinstance(m, CHAIN + (nn.ReLU,)):
            raise ConfigError(f"strategy '{method}' generates the weights of a chain of Linear layers each followed "
                              f"by a ReLU (model 'mlp'); the backbone {type(model.backbone).__name__} has a "
                              f"{type(m).__name__}")
    if pending is not None:
        raise ConfigError(f"strategy '{method}': in the backbone a Linear layer is not followed by a ReLU")
    n_classes = getattr(model.head, "n_classes", None)
    d = getattr(model.backbone, "out_features", None)
    if n_classes is None or d is None:
        raise ConfigError(f"strategy '{method}' needs a backbone with 'out_features' and a head over the label space")
    return shapes + [(int(n_classes), int(d))]


class HyperInterval(Strategy):
    own_parameters = True  # trains/predicts with its own parameters (base.Compose.check_composable)
    name = "hyperinterval"
    paper = ("Krukowski et al. 2024, HyperInterval: Hypernetwork approach to training weight interval regions in "
             "continual learning (arXiv:2405.15444)")
    scenarios = ("task",)

    def __init__(self, hyperinterval_emb_dim: Annotated[int, Field(ge=1)] = 24,
                 hyperinterval_hidden: tuple[Annotated[int, Field(ge=1)], ...] = (100,),
                 hyperinterval_eps: Annotated[float, Field(ge=0)] = 10.0,
                 hyperinterval_beta: Annotated[float, Field(ge=0)] = 0.001,
                 hyperinterval_kappa: Annotated[float, Field(ge=0, le=1)] = 0.5,
                 hyperinterval_nesting: Literal["cos", "none"] = "cos",
                 hyperinterval_predict: Literal["task", "universal"] = "task",
                 hyperinterval_init: Literal["ibp", "default"] = "ibp",
                 hyperinterval_warmup_weight: Annotated[float, Field(ge=0)] = 0.5,
                 hyperinterval_warmup_tol: Annotated[float, Field(gt=0)] = 0.5):
        super().__init__()
        self.hyperinterval_emb_dim = hyperinterval_emb_dim
        self.hyperinterval_hidden = hyperinterval_hidden
        self.hyperinterval_eps = hyperinterval_eps
        self.hyperinterval_beta = hyperinterval_beta
        self.hyperinterval_kappa = hyperinterval_kappa
        self.hyperinterval_nesting = hyperinterval_nesting
        self.hyperinterval_predict = hyperinterval_predict
        self.hyperinterval_init = hyperinterval_init
        self.hyperinterval_warmup_weight = hyperinterval_warmup_weight
        self.hyperinterval_warmup_tol = hyperinterval_warmup_tol

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        if self.hyperinterval_predict == "universal" and self.hyperinterval_nesting != "cos":
            raise ConfigError("strategy 'hyperinterval': hyperinterval_predict='universal' needs "
                              "hyperinterval_nesting='cos' (without nesting the tasks' intervals need not intersect)")
        self.shapes = _target_shapes(model, self.name)
        self.n_target = sum(o * i + o for o, i in self.shapes)
        m = self.hyperinterval_emb_dim
        widths = [m, *[int(h) for h in self.hyperinterval_hidden], self.n_target]
        with torch.random.fork_rng(devices=[]):  # own initialisation: independent of the global RNG
            torch.manual_seed(seed + 5)
            layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
            if self.hyperinterval_init == "ibp":
                with torch.no_grad():
                    for lin in layers[:-1]:
                        lin.weight.normal_(0.0, math.sqrt(2 * math.pi) / lin.in_features)
        self.hnet_ = layers.to(self.device)
        self.emb_ = nn.Parameter(torch.zeros(m, device=self.device))  # the current task's (raw) embedding
        self.rho_ = nn.Parameter(torch.zeros(m, device=self.device))  # its radius logits (nesting 'none')
        self.tasks_: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # finished task -> frozen (emb, rho)
        self.classes_: dict[int, list[int]] = {}
        self.current_: int | None = None
        self.targets_: torch.Tensor | None = None  # (earlier tasks, 3 or 1, P): H*(e_j)
        self.target_tasks_: list[int] = []
        return self

    def param_groups(self):
        return [{"params": list(self.hnet_.parameters()) + [self.emb_, self.rho_]}]

    # -- embeddings ---------------------------------------------------------------------------
    def interval(self, emb: torch.Tensor, rho: torch.Tensor, eps: float | None = None):
        """Centre and radius (k, M) of interval embeddings from raw parameters (k, M)."""
        eps = self.hyperinterval_eps if eps is None else eps
        m = emb.shape[-1]
        if self.hyperinterval_nesting == "cos":
            return eps / (2 * m) * torch.cos(emb), torch.full_like(emb, eps / m)
        return emb, eps * torch.softmax(rho, dim=-1)

    def _raw(self, task: int):
        if task in self.tasks_:
            return self.tasks_[task]
        if task == self.current_:
            return self.emb_, self.rho_
        return torch.zeros_like(self.emb_), torch.zeros_like(self.rho_)  # a task not seen yet

    def universal(self):
        """Centre and radius (M,) of the intersection of the finished tasks' interval embeddings,
        or None when there is no finished task or the intersection is empty."""
        if not self.tasks_:
            return None
        emb = torch.stack([e for e, _ in self.tasks_.values()])
        rho = torch.stack([r for _, r in self.tasks_.values()])
        c, r = self.interval(emb, rho)
        lo, hi = (c - r).max(0).values, (c + r).min(0).values
        if bool((lo > hi).any()):
            return None
        return (lo + hi) / 2, (hi - lo) / 2

    def weight_bounds(self, task: int | None = None, eps: float | None = None, embedding=None):
        """Flat centre and radius (P,) of the weights generated for ``task``'s interval embedding
        (``embedding=(centre, radius)`` instead: that interval), and the hypernetwork's pre-ReLU bounds."""
        if embedding is None:
            c, r = self.interval(*[v[None] for v in self._raw(task)], eps)
        else:
            c, r = embedding[0][None], embedding[1][None]
        wc, wr, pre = hypernet_bounds(self.hnet_, c, r)
        return wc[0], wr[0], pre, r

    def generate(self, embedding_centre: torch.Tensor) -> list:
        """The target network's weights for a point embedding (M,)."""
        return split_weights(hypernet_point(self.hnet_, embedding_centre[None])[0], self.shapes)

    # -- the target network -------------------------------------------------------------------
    def _mask(self, out: torch.Tensor, task: int) -> torch.Tensor:
        keep = torch.zeros(out.shape[1], dtype=torch.bool, device=out.device)
        keep[torch.as_tensor(self.classes_.get(task, []), dtype=torch.long, device=out.device)] = True
        return out.masked_fill(~keep, float("-inf"))

    def _bounds(self, x: torch.Tensor, task: torch.Tensor, eps: float | None = None):
        """(lower, middle, upper) logits over the label space, each sample with its task's weights."""
        n = self.model.head.n_classes if hasattr(self.model.head, "n_classes") else self.shapes[-1][0]
        outs = [x.new_full((len(x), n), float("-inf")) for _ in range(3)]
        self._pre = []
        for t in torch.unique(task).tolist():
            rows = torch.nonzero(task == t).flatten()
            wc, wr, pre, rad = self.weight_bounds(t, eps)
            self._pre.append((pre, rad.mean()))
            res = target_bounds(x[rows], split_weights(wc, self.shapes), split_weights(wr, self.shapes))
            for o, v in zip(outs, res):
                o[rows] = self._mask(v, t)
        return outs

    def _eps_kappa(self) -> tuple[float, float]:
        ctx = self.context
        half = ctx.n_iterations // 2
        if ctx.iteration < half:
            eps = self.hyperinterval_eps * (ctx.iteration / (half - 1) if half > 1 else 1.0)
            return min(eps, self.hyperinterval_eps), max(1 - KAPPA_DECAY * ctx.iteration, self.hyperinterval_kappa)
        return self.hyperinterval_eps, self.hyperinterval_kappa

    # -- training -----------------------------------------------------------------------------
    def before_experience(self, exp):
        super().before_experience(exp)
        if exp.task_id in self.tasks_:
            raise ConfigError(f"strategy 'hyperinterval': task {exp.task_id} arrives a second time; each task "
                              "gets one interval embedding")
        self.current_ = exp.task_id
        self.classes_[exp.task_id] = sorted(set(self.classes_.get(exp.task_id, [])) | set(exp.classes))
        with torch.no_grad():  # hypnettorch's N(0, 1) task embeddings; uniform radii
            self.emb_.copy_(torch.randn(self.emb_.shape, generator=self.generator).to(self.device))
            self.rho_.zero_()
        opt = self.context.optimizer  # a kept optimizer: no moments from the previous task's embedding
        if opt is not None:
            for p in (self.emb_, self.rho_):
                opt.state.pop(p, None)
        self.target_tasks_ = list(self.tasks_)
        self.targets_ = None
        if self.target_tasks_:  # H*(e_j): the hypernetwork's outputs before this task
            with torch.no_grad():
                self.targets_ = self._reg_outputs(self.target_tasks_).detach().clone()

    def _reg_outputs(self, tasks: list[int]) -> torch.Tensor:
        emb = torch.stack([self.tasks_[t][0] for t in tasks])
        rho = torch.stack([self.tasks_[t][1] for t in tasks])
        c, r = self.interval(emb, rho)
        wc, wr, _ = hypernet_bounds(self.hnet_, c, r)
        if self.hyperinterval_nesting == "cos":
            return torch.stack([wc - wr, wc, wc + wr], dim=1)
        return wc[:, None]

    def forward(self, batch):
        eps, self._kappa = self._eps_kappa()
        lo, mid, hi = self._bounds(batch.x, batch.t, eps)
        self._lohi = (lo, hi)
        self._eps_now = eps
        return mid

    def loss(self, logits, batch):
        lo, hi = self._lohi
        onehot = F.one_hot(batch.y, logits.shape[1]).bool()
        worst = torch.where(onehot, lo, hi)
        k = self._kappa
        return k * F.cross_entropy(logits, batch.y) + (1 - k) * F.cross_entropy(worst, batch.y)

    def penalty(self, logits, batch):
        total = logits.new_zeros(())
        if self.targets_ is not None and self.hyperinterval_beta > 0:
            diff = self._reg_outputs(self.target_tasks_) - self.targets_
            per_task = diff.pow(2).flatten(1).sum(1) / diff.shape[1]
            total = total + self.hyperinterval_beta * per_task.sum() / len(self.target_tasks_)
        w = self.hyperinterval_warmup_weight
        eps = self._eps_now
        if w > 0 and self.hyperinterval_eps > 0 and eps < self.hyperinterval_eps:
            lam = w * (1 - eps / self.hyperinterval_eps)
            reg = sum(warmup_regulariser(pre, r0, self.hyperinterval_warmup_tol) for pre, r0 in self._pre)
            total = total + lam * reg / max(len(self._pre), 1)
        return total

    def after_experience(self, exp):
        self.tasks_[exp.task_id] = (self.emb_.detach().clone(), self.rho_.detach().clone())
        self.current_ = None
        self.targets_, self.target_tasks_ = None, []

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, x, task=None):
        n = self.shapes[-1][0]
        out = x.new_full((len(x), n), float("-inf"))
        uni = self.universal() if self.hyperinterval_predict == "universal" else None
        if task is None:
            ids = list(self.classes_)
            rows_of = {t: torch.arange(len(x), device=x.device) for t in ids}
        else:
            task = torch.as_tensor(task, device=x.device)
            if task.ndim == 0:
                task = task.expand(len(x))
            ids = torch.unique(task).tolist()
            rows_of = {t: torch.nonzero(task == t).flatten() for t in ids}
        for t in ids:
            rows = rows_of[t]
            if uni is not None:
                centre = uni[0]
            else:
                centre = self.interval(*[v[None] for v in self._raw(t)])[0][0]
            logits = self._mask(target_point(x[rows], self.generate(centre)), t)
            out[rows] = logits if task is not None else torch.maximum(out[rows], logits)
        return out

    # -- state --------------------------------------------------------------------------------
    def extra_state(self):
        return {"hnet": {k: v.clone() for k, v in self.hnet_.state_dict().items()},
                "emb": self.emb_.detach().clone(), "rho": self.rho_.detach().clone(),
                "tasks": {int(t): (e.clone(), r.clone()) for t, (e, r) in self.tasks_.items()},
                "classes": {int(t): list(c) for t, c in self.classes_.items()}, "current": self.current_,
                "targets": None if self.targets_ is None else self.targets_.clone(),
                "target_tasks": list(self.target_tasks_)}

    def load_extra_state(self, state):
        dev = self.device
        self.hnet_.load_state_dict(state["hnet"])
        with torch.no_grad():
            self.emb_.copy_(state["emb"].to(dev))
            self.rho_.copy_(state["rho"].to(dev))
        self.tasks_ = {int(t): (e.to(dev).clone(), r.to(dev).clone()) for t, (e, r) in state["tasks"].items()}
        self.classes_ = {int(t): list(c) for t, c in state["classes"].items()}
        self.current_ = None if state["current"] is None else int(state["current"])
        self.targets_ = None if state["targets"] is None else state["targets"].to(dev).clone()
        self.target_tasks_ = [int(t) for t in state["target_tasks"]]
