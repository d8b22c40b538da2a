"""The strategy interface: the few named places where a method changes training.

The training loop (``lifelong.training``) calls, in this order::

    strategy.before_experience(exp)            # once, before training on exp
    data = strategy.train_data(exp)            # what to iterate (joint training widens it)
    for each minibatch:
        batch  = strategy.augment(batch)       # replay adds stored samples
        logits = strategy.forward(batch)       # default model(batch.x, batch.t)
        loss   = strategy.loss(logits, batch) + strategy.penalty(logits, batch)
        loss.backward()
        strategy.before_step(batch)            # gradient surgery (A-GEM)
        optimizer.step()
        strategy.after_step(batch, logits)     # online statistics (SI), reservoir insertion
    strategy.after_experience(exp)             # importance (EWC), buffer update, old-model copy (LwF)

``strategy.predict(x, task)`` for evaluation (``task``: per-sample task ids in task-IL, None
otherwise), and ``strategy.adapt(x)`` in a test-time-adaptation phase (``lifelong.tta``). A
method overrides only what it needs; state it learns is stored in attributes ending in ``_``
and saved by ``extra_state``.

Every hook can read ``self.context`` (a :class:`StepContext`, kept current by the loop): the
optimizer, the current learning rate, the global step, the experience and the position in it.
A batch carries its samples' indices in the experience's training split (``batch.index``).

Composition (``Compose``, or ``"er+ewc"`` in a config) is a contract: hooks that combine do
(``augment`` in order, ``penalty`` summed, ``param_groups`` merged, the event hooks called in
order); a hook with a single owner (``loss``, ``forward``, ``predict``, ``train_data``,
``adapt``) may be overridden by one member only, and two claimants are refused when the
composition is built, before any data loads.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..streams import Experience, Split


@dataclass
class Batch:
    """A training minibatch. ``n_new`` counts the leading samples that come from the stream
    (samples after them were added by ``augment``). ``index``: each sample's position in the
    experience's training split (as ``strategy.train_data`` returned it), -1 for added samples;
    None when the batch was made by hand without indices."""

    x: torch.Tensor
    y: torch.Tensor
    t: torch.Tensor
    n_new: int = -1
    index: torch.Tensor | None = None

    def __post_init__(self):
        if self.n_new < 0:
            self.n_new = len(self.y)

    def cat(self, x, y, t) -> "Batch":
        index = None if self.index is None else torch.cat(
            [self.index, torch.full((len(y),), -1, dtype=self.index.dtype, device=self.index.device)])
        return Batch(torch.cat([self.x, x]), torch.cat([self.y, y]), torch.cat([self.t, t]), self.n_new, index)


@dataclass
class StepContext:
    """Where training stands, for any hook to read (``strategy.context``); the loop keeps it
    current. ``step`` counts the updates done so far over the whole stream (a closed-form fit
    counts as one); ``iteration`` is the 0-based position within the current experience, whose
    budget is ``n_iterations``. ``lr`` is the learning rate the next ``optimizer.step()`` uses
    (the first parameter group's, after the schedule); ``lrs`` has one per group."""

    optimizer: torch.optim.Optimizer | None = None
    step: int = 0
    experience: Experience | None = None
    iteration: int = 0
    n_iterations: int = 0
    grad_scaler: Any = None  # fp16: the GradScaler (gradients are unscaled before before_step)
    stream: Any = None  # the stream being trained (a resumed method may take past experiences from it)

    @property
    def lr(self) -> float | None:
        return None if self.optimizer is None else float(self.optimizer.param_groups[0]["lr"])

    @property
    def lrs(self) -> list[float]:
        return [] if self.optimizer is None else [float(g["lr"]) for g in self.optimizer.param_groups]


SINGLE_OWNER_HOOKS = ("loss", "forward", "predict", "train_data", "adapt")


class Strategy:
    """Base class: plain fine-tuning. Subclasses set ``name``, ``paper`` and ``scenarios``."""

    name: ClassVar[str] = "finetune"
    paper: ClassVar[str] = ""
    scenarios: ClassVar[tuple[str, ...]] = ("class", "task", "domain")

    def __init__(self):
        self.model = None
        self.device = torch.device("cpu")
        self.experience_ = None
        self.context = StepContext()

    # ``context`` is set by the loop (``train``); a strategy used outside it gets an empty one.
    def set_context(self, context: StepContext) -> None:
        self.context = context

    #: False for a method whose training batches are not the stream's inputs (FeTrIL trains its
    #: head on stored features): no other member of a composition can share its batches.
    feeds_inputs: ClassVar[bool] = True
    #: True for a method that trains and predicts with parameters of its own in place of the
    #: model's (a posterior over the weights, a hypernetwork that generates them): a member whose
    #: penalty or gradient edit acts on the model's parameters would change nothing it uses.
    own_parameters: ClassVar[bool] = False
    #: Why ``train.compile`` cannot serve this method (None: it can). binary_field swaps its
    #: layers' ``forward`` every step, which a compiled backbone would follow only by recompiling.
    compile_refusal: ClassVar[str | None] = None
    #: True for a method that, in task-IL, needs each class in one task only (FeTrIL labels a
    #: class's pseudo-features with that class's task): a stream whose tasks share classes
    #: (Permuted MNIST) is refused before training.
    task_disjoint_classes: ClassVar[bool] = False
    #: False for a method whose training data (``train_data``) is not the experience's training
    #: set as it is (GDumb's memory, iCaRL's exemplars added, Joint's earlier experiences, VCL's
    #: coreset held out, FeTrIL's stored features): a learning-rate schedule planned before the
    #: run from ``train.epochs`` and the experiences' sizes would not match its steps, so that
    #: combination is refused (``runner.check_schedule_budgets``).
    epochs_from_stream: ClassVar[bool] = True

    @property
    def gradient_free(self) -> bool:
        """True when this strategy learns without gradient steps (a closed-form fit on frozen
        features): then no training hook of a composed member would run."""
        return False

    @property
    def supports_task_free(self) -> bool:
        """True when the method works with no experience boundaries (task-free training): by
        default, when it defines none of the boundary hooks. A method whose boundary hooks are
        no-ops in some settings (reservoir replay) says so by overriding this."""
        return not any(_overrides(self, h) for h in ("before_experience", "train_data", "after_experience"))

    # -- set-up -------------------------------------------------------------------------
    def setup(self, model: torch.nn.Module, device: torch.device | str = "cpu", seed: int = 0) -> "Strategy":
        """Attach the model; called once by the loop before the first experience."""
        self.model, self.device = model, torch.device(device)
        self.generator = torch.Generator(device="cpu").manual_seed(seed + 1)
        return self

    @classmethod
    def get_param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        return [p for p in sig.parameters if p != "self" and sig.parameters[p].kind == kind]

    def get_params(self) -> dict[str, Any]:
        return {p: getattr(self, p) for p in self.get_param_names()}

    def param_groups(self) -> list[dict]:
        """The optimizer's parameter groups: ``{"params": [...]}`` dicts, optionally with an
        ``lr_scale`` that multiplies the configured learning rate (SLCA's slow backbone).
        Default: every parameter of the model at the configured rate."""
        return [{"params": list(self.model.parameters())}]

    # -- hooks (see module docstring for the order) -------------------------------------
    def before_experience(self, exp: Experience) -> None:
        self.experience_ = exp

    def train_data(self, exp: Experience) -> Split | None:
        """What the loop iterates over; ``None`` skips gradient training for this experience
        (a method that fits in closed form does so in ``after_experience``)."""
        return exp.train

    def stream_rows(self, exp: Experience, data: Split) -> torch.Tensor | None:
        """Which rows of ``data`` (what ``train_data`` returned) are the experience's incoming
        samples, as a bool mask; None when it trains on none of them (a memory, stored
        features). The online accuracy predicts only these rows, each before the model trains on
        it; with None it is undefined for the experience. Default: every row when ``data`` is
        ``exp.train``, else None. A method that adds stored samples to the incoming ones
        (iCaRL's exemplars) or holds some out (VCL's coreset) says which rows are the stream's."""
        return torch.ones(len(data), dtype=torch.bool, device=data.y.device) if data is exp.train else None

    def train_passes(self) -> int | None:
        """How many passes the loop makes over ``train_data`` at each experience. None (default):
        the run's budget decides (``train.iterations`` or ``train.epochs``; one pass online). A
        method that trains on data of its own rather than the stream may fix it (GDumb's passes
        over its memory); the run's budget keys are then refused (:func:`config.check_passes`)."""
        return None

    def augment(self, batch: Batch) -> Batch:
        return batch

    def forward(self, batch: Batch) -> torch.Tensor:
        """The training logits of a minibatch: the model on its inputs. A method whose training
        data are stored features rather than inputs (FeTrIL) feeds them to the head only."""
        return self.model(batch.x, batch.t)

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(logits, batch.y)

    def penalty(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor | float:
        return 0.0

    def before_step(self, batch: Batch) -> None:
        pass

    def after_step(self, batch: Batch, logits: torch.Tensor) -> None:
        pass

    def after_experience(self, exp: Experience) -> None:
        pass

    @torch.no_grad()
    def predict(self, x: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        """Scores over the label space (argmax = prediction). ``task``: the samples' task ids
        (task-IL evaluation: a method may pick a mask, a sub-network or weights per task);
        None = task-agnostic."""
        return self.model(x, task)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Test-time adaptation on an unlabelled batch: return the scores predicted for ``x``
        BEFORE adapting on it (those are what the protocol scores), then adapt. Default: no
        adaptation (the source model)."""
        return self.predict(x, None)

    # -- state ----------------------------------------------------------------------------
    def extra_state(self) -> dict:
        """Learned state beyond the model's parameters (buffers, importances, old models)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class Compose(Strategy):
    """Run several strategies together (``"er+ewc"``), with no silent winner:

    - ``augment`` runs in order; ``penalty`` is summed; ``before_experience``, ``before_step``,
      ``after_step`` and ``after_experience`` run in order; ``param_groups`` are merged;
    - ``loss``, ``forward``, ``predict``, ``train_data`` and ``adapt`` have one owner: the member
      that overrides it (else the base behaviour); two members overriding the same one are
      refused with a :class:`ConfigError`, as is composing a gradient-free (closed-form) member
      with members that act during gradient training.
    """

    def __init__(self, *members: Strategy):
        super().__init__()
        from ..errors import ConfigError

        self.members = list(members)
        self.name = "+".join(m.name for m in members)
        sets = [set(m.scenarios) for m in members]
        self.scenarios = tuple(sorted(set.intersection(*sets)))
        self._owner = {}
        for hook in SINGLE_OWNER_HOOKS:
            claim = [m for m in self.members if _overrides(m, hook)]
            if len(claim) > 1:
                raise ConfigError(
                    f"strategy '{self.name}': both '{claim[0].name}' and '{claim[1].name}' define {hook}(), "
                    f"which one strategy only may own in a composition; run them separately")
            self._owner[hook] = claim[0] if claim else None
        if not self.scenarios:
            raise ConfigError(f"strategy '{self.name}': its members support no scenario in common "
                              f"({'; '.join(f'{m.name}: {list(m.scenarios)}' for m in self.members)})")
        self.check_composable()

    def check_composable(self) -> None:
        """A member that takes no gradient steps, or trains on something other than the stream's
        inputs (stored features), leaves the other members' training hooks unused or fed the
        wrong data: refused."""
        from ..errors import ConfigError

        odd = [m for m in self.members if m.gradient_free or not m.feeds_inputs]
        for m in odd:
            active = [o for o in self.members if o is not m and any(
                _overrides(o, h) for h in ("loss", "penalty", "augment", "before_step", "after_step", "forward"))]
            if active:
                a = active[0].name
                why = (f"fits in closed form without gradient steps, so the training hooks of '{a}' would never run"
                       if m.gradient_free else f"trains on stored features, not on the stream's inputs, so it cannot "
                       f"share its training batches with '{a}'")
                raise ConfigError(f"strategy '{self.name}': '{m.name}' {why}; run them separately")
        for m in (m for m in self.members if m.own_parameters):
            acting = [o for o in self.members if o is not m and any(_overrides(o, h) for h in ("penalty", "before_step"))]
            if acting:
                raise ConfigError(f"strategy '{self.name}': '{m.name}' trains and predicts with parameters of its own "
                                  f"(not the model's), so the penalty or gradient edit of '{acting[0].name}' would act "
                                  f"on weights it never uses; run them separately")

    def get_params(self):
        out = {}
        for m in self.members:
            out.update(m.get_params())
        return out

    @property
    def gradient_free(self) -> bool:
        return all(m.gradient_free for m in self.members)

    @property
    def supports_task_free(self) -> bool:
        return all(m.supports_task_free for m in self.members)

    @property
    def task_disjoint_classes(self) -> bool:
        return any(m.task_disjoint_classes for m in self.members)

    @property
    def epochs_from_stream(self) -> bool:
        return all(m.epochs_from_stream for m in self.members)

    @property
    def compile_refusal(self) -> str | None:
        return next((m.compile_refusal for m in self.members if m.compile_refusal), None)

    def _one(self, hook: str) -> Strategy:
        return self._owner[hook] or self.members[0]

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        for m in self.members:
            m.setup(model, device, seed)
        return self

    def set_context(self, context):
        super().set_context(context)
        for m in self.members:
            m.set_context(context)

    def before_experience(self, exp):
        super().before_experience(exp)
        for m in self.members:
            m.before_experience(exp)

    def train_data(self, exp):
        return self._one("train_data").train_data(exp)

    def train_passes(self):  # the passes of the member whose data the loop trains on
        return self._one("train_data").train_passes()

    def stream_rows(self, exp, data):
        return self._one("train_data").stream_rows(exp, data)

    def param_groups(self):
        """The groups of every member that overrides ``param_groups`` (a parameter claimed with
        different settings by two members is refused), then the model's remaining parameters
        at the configured rate."""
        from ..errors import ConfigError

        groups, seen = [], {}
        for m in self.members:
            if not _overrides(m, "param_groups"):
                continue
            for g in m.param_groups():
                settings = {k: v for k, v in g.items() if k != "params"}
                params = []
                for p in g["params"]:
                    if id(p) in seen:
                        if seen[id(p)] != settings:
                            raise ConfigError(f"strategy '{self.name}': a parameter is given different optimizer "
                                              f"settings by two members ({seen[id(p)]} and {settings})")
                        continue
                    seen[id(p)] = settings
                    params.append(p)
                if params:
                    groups.append(dict(g, params=params))
        rest = [p for p in self.model.parameters() if id(p) not in seen]
        if rest or not groups:
            groups.insert(0, {"params": rest})
        return groups

    def augment(self, batch):
        for m in self.members:
            batch = m.augment(batch)
        return batch

    def forward(self, batch):
        return self._one("forward").forward(batch)

    def loss(self, logits, batch):
        return self._one("loss").loss(logits, batch)

    def penalty(self, logits, batch):
        return sum((m.penalty(logits, batch) for m in self.members), 0.0)

    def before_step(self, batch):
        for m in self.members:
            m.before_step(batch)

    def after_step(self, batch, logits):
        for m in self.members:
            m.after_step(batch, logits)

    def after_experience(self, exp):
        for m in self.members:
            m.after_experience(exp)

    def predict(self, x, task=None):
        return self._one("predict").predict(x, task)

    def adapt(self, x):
        return self._one("adapt").adapt(x)

    def extra_state(self):
        return {str(i): m.extra_state() for i, m in enumerate(self.members)}

    def load_extra_state(self, state):
        for i, m in enumerate(self.members):
            m.load_extra_state(state[str(i)])

    def __repr__(self):
        return " + ".join(repr(m) for m in self.members)


def _overrides(strategy: Strategy, hook: str) -> bool:
    return getattr(type(strategy), hook) is not getattr(Strategy, hook)


def frozen_copy(model: torch.nn.Module, state: dict | None = None) -> torch.nn.Module:
    """An eval-mode copy of ``model`` with gradients off (the "old model" of distillation
    methods); with ``state``, load that saved copy into it. The current model may have heads
    the saved one lacked (never queried); a saved key the model lacks is an error."""
    old = copy.deepcopy(model).eval()
    for p in old.parameters():
        p.requires_grad_(False)
    if state is not None:
        unexpected = old.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"saved old model does not fit the current model: {unexpected}")
    return old
