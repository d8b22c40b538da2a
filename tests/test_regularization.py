"""Regularisation strategies (L2, EWC, SI, LwF, feature distillation): behaviour, not just "runs".

Hand-checked quantities (EWC's Fisher, SI's path integral, online EWC's running Fisher), a
save/restore round trip, and on real Split MNIST: penalties switch on after the first
experience, and EWC / SI / LwF forget less than fine-tuning in task-IL.
"""
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lifelong.data import mnist
from lifelong.errors import DivergenceError
from lifelong.models import ContinualModel, Head, IncrementalHead, MultiHead, build_model
from lifelong.strategies import Compose, Strategy
from lifelong.strategies.base import Batch
from lifelong.strategies.ewc import EWC
from lifelong.strategies.feature_distillation import FeatureDistillation
from lifelong.strategies.l2 import L2
from lifelong.strategies.lwf import LwF
from lifelong.strategies.si import SI
from lifelong.streams import Experience, Split, split_stream
from lifelong.training import train

torch.set_num_threads(1)  # also for the module-scoped fixtures, which run before conftest's

ALL = {"l2": L2, "ewc": EWC, "si": SI, "lwf": LwF, "feature_distillation": FeatureDistillation}
SMALL = {"ewc": {"ewc_fisher_samples": 200}}


def adam(params):
    return torch.optim.Adam(params, lr=1e-3)


def make(name, **kw):
    return ALL[name](**{**SMALL.get(name, {}), **kw})


@pytest.fixture(scope="module")
def streams():
    d = mnist()
    return {sc: split_stream(d, sc, n_experiences=5) for sc in ("class", "task", "domain")}


def _run(stream, strategy, seed=0, hidden=(100, 100), iterations=250, n_exp=None):
    if n_exp is not None:
        stream = type(stream)(stream.name, stream.scenario, stream.experiences[:n_exp], stream.n_classes,
                              stream.input_shape)
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.n_classes, stream.scenario, hidden=list(hidden))
    strategy.setup(model, "cpu", seed)
    return train(stream, strategy, adam, iterations=iterations, seed=seed)


def _record_penalties(strategy):
    """Wrap ``strategy.penalty`` to log (experience index, value) at every step."""
    log, inner = [], strategy.penalty

    def penalty(logits, batch):
        p = inner(logits, batch)
        log.append((strategy.experience_.index, float(p.detach()) if torch.is_tensor(p) else p))
        return p

    strategy.penalty = penalty
    return log


# -- (a) every strategy, every scenario: penalty off in experience 0, on afterwards ----------
@pytest.mark.parametrize("scenario", ["class", "task", "domain"])
@pytest.mark.parametrize("name", sorted(ALL))
def test_penalty_is_zero_first_and_positive_after(streams, name, scenario):
    strategy = make(name)
    log = _record_penalties(strategy)
    res = _run(streams[scenario], strategy, hidden=(50,), iterations=30, n_exp=2)
    first = [p for e, p in log if e == 0]
    later = [p for e, p in log if e == 1]
    assert len(first) == len(later) == 30
    assert all(p == 0 for p in first)
    # at the first step of experience 1 the parameters still equal the anchor (0 is right)
    assert all(p > 0 for p in later[1:]), later[:5]
    assert all(l == l for l in res.losses)  # noqa: E741  (no NaN)
    assert res.accuracy_matrix[0][0] > 0.9


# -- (b, c) forgetting on task-IL Split MNIST ------------------------------------------------
# 5 experiences x 250 Adam steps (lr 1e-3, batch 128), MLP 784-100-100. Average final accuracy,
# seeds 0 / 1: fine-tuning .947 / .816, EWC .980 / .980, SI .988 / .961, LwF .991 / .991.
@pytest.fixture(scope="module")
def finetune_acc(streams):
    return {seed: _avg(_run(streams["task"], Strategy(), seed)) for seed in (0, 1)}


def _avg(res):
    row = res.accuracy_matrix[-1]
    return sum(row) / len(row)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ewc", "si", "lwf"])
@pytest.mark.parametrize("seed", [0, 1])
def test_beats_finetuning_in_task_il(streams, finetune_acc, name, seed):
    acc = _avg(_run(streams["task"], make(name), seed))
    assert acc > finetune_acc[seed] + 0.025, (acc, finetune_acc[seed])


# -- (d) EWC's Fisher against per-sample gradients computed one at a time --------------------
def _loop_fisher(model, x, y, t, labels):
    named = [(n, p) for n, p in model.named_parameters()]
    out = {n: torch.zeros_like(p) for n, p in named}
    for i in range(len(x)):
        logp = F.log_softmax(model(x[i:i + 1], t[i:i + 1]), dim=1)[0]
        p = logp.exp().detach()
        active = torch.nonzero(torch.isfinite(logp)).flatten().tolist()
        pairs = {"all": [(c, p[c]) for c in active], "true": [(int(y[i]), 1.0)],
                 "predicted": [(int(p.argmax()), 1.0)]}[labels]
        for c, w in pairs:
            grads = torch.autograd.grad(logp[c], [q for _, q in named], retain_graph=True, allow_unused=True)
            for (n, _), g in zip(named, grads):
                if g is not None:
                    out[n] += w * g ** 2
    return {n: f / len(x) for n, f in out.items()}


def _tiny(head):
    torch.manual_seed(0)
    return ContinualModel(nn.Linear(4, 3), head)


@pytest.mark.parametrize("labels", ["all", "true", "predicted"])
@pytest.mark.parametrize("kind", ["single", "incremental", "multi"])
def test_ewc_fisher_equals_hand_computed(labels, kind):
    head = {"single": Head(3, 5), "incremental": IncrementalHead(3, 5), "multi": MultiHead(3, 5)}[kind]
    model = _tiny(head)
    if kind != "incremental":  # incremental: classes 0, 1 stay inactive (-inf logits)
        model.observe([0, 1], 0)
    model.observe([2, 3, 4], 1)  # the experience below is task 1 (classes 2-4)
    x, y = torch.randn(3, 4), torch.tensor([2, 4, 3])
    exp = Experience(0, 1, [2, 3, 4], Split(x, y), Split(x[:0], y[:0]), Split(x, y))
    ewc = EWC(ewc_fisher_labels=labels).setup(model)
    got = ewc.estimate_fisher(exp)
    want = _loop_fisher(model, x, y, torch.ones(3, dtype=torch.long), labels)
    assert set(got) == set(want)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-7)
    if kind == "multi":  # task 0's head is not used by task 1's samples
        assert got["head.heads.0.weight"].abs().sum() == 0
        assert got["head.heads.1.weight"].abs().sum() > 0


def test_ewc_penalty_formula_and_new_parameters_unpenalised():
    model = _tiny(MultiHead(3, 4))
    model.observe([0, 1], 0)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 1, 0])
    exp = Experience(0, 0, [0, 1], Split(x, y), Split(x[:0], y[:0]), Split(x, y))
    ewc = EWC(ewc_lambda=3.0).setup(model)
    ewc.after_experience(exp)
    fisher, anchor = ewc.terms_[0]["fisher"], ewc.terms_[0]["anchor"]
    model.observe([2, 3], 1)  # a new head appears: not in the stored Fisher
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    want = 1.5 * sum((fisher[n] * (p - anchor[n]) ** 2).sum() for n, p in model.named_parameters() if n in fisher)
    assert "head.heads.1.weight" not in fisher
    torch.testing.assert_close(ewc.penalty(None, None), want)


def test_ewc_on_a_diverged_model_raises_a_clear_error():
    model = _tiny(Head(3, 2))
    with torch.no_grad():
        model.backbone.weight.fill_(float("nan"))
    x, y = torch.randn(4, 4), torch.tensor([0, 1, 0, 1])
    exp = Experience(0, 0, [0, 1], Split(x, y), Split(x[:0], y[:0]), Split(x, y))
    ewc = EWC(ewc_lambda=1e9).setup(model)
    with pytest.raises(DivergenceError, match="lower strategy.ewc_lambda"):
        ewc.after_experience(exp)


# -- (g) online EWC: one running Fisher, gamma * F1 + F2 --------------------------------------
def test_online_ewc_keeps_one_decayed_fisher():
    model = _tiny(Head(3, 3))
    x1, y1 = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    x2, y2 = torch.randn(5, 4) + 1, torch.tensor([2, 2, 1, 0, 0])
    e1 = Experience(0, 0, [0, 1, 2], Split(x1, y1), Split(x1[:0], y1[:0]), Split(x1, y1))
    e2 = Experience(1, 1, [0, 1, 2], Split(x2, y2), Split(x2[:0], y2[:0]), Split(x2, y2))
    ewc = EWC(ewc_online=True, ewc_gamma=0.7).setup(model)
    ewc.after_experience(e1)
    f1 = {n: f.clone() for n, f in ewc.terms_[0]["fisher"].items()}
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    f2 = ewc.estimate_fisher(e2)
    ewc.after_experience(e2)
    assert len(ewc.terms_) == 1
    for n in f1:
        torch.testing.assert_close(ewc.terms_[0]["fisher"][n], 0.7 * f1[n] + f2[n])
        torch.testing.assert_close(ewc.terms_[0]["anchor"][n], dict(model.named_parameters())[n].detach())
    offline = EWC().setup(model)
    offline.after_experience(e1)
    offline.after_experience(e2)
    assert len(offline.terms_) == 2


# -- (e) SI's path integral on a quadratic ----------------------------------------------------
class Quadratic(nn.Module):
    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))


def _si_experience(si, model, target, a, steps, lr):
    """Plain SGD on 1/2 sum a (theta - target)^2 through SI's hooks; returns the hand-computed w."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    si.before_experience(None)
    w = torch.zeros(3)
    for _ in range(steps):
        task = 0.5 * (a * (model.theta - target) ** 2).sum()
        g = (a * (model.theta - target)).detach()  # the task loss's gradient only
        opt.zero_grad()
        (task + si.penalty(None, None)).backward()
        si.before_step(None)
        before = model.theta.detach().clone()
        opt.step()
        si.after_step(None, None)
        w -= g * (model.theta.detach() - before)
    return w


def test_si_path_integral_and_omega():
    model = Quadratic()
    si = SI(si_c=0.5, si_epsilon=0.1).setup(model)
    a, target, start = torch.tensor([1.0, 4.0, 0.0]), torch.tensor([0.0, 1.0, 3.0]), model.theta.detach().clone()
    w = _si_experience(si, model, target, a, steps=400, lr=0.005)
    torch.testing.assert_close(si.w_["theta"], w)
    # gradient flow: the path integral of -g dtheta is the drop of each parameter's loss term
    end = model.theta.detach()
    drop = 0.5 * a * ((start - target) ** 2 - (end - target) ** 2)
    torch.testing.assert_close(w, drop, rtol=0.02, atol=1e-6)
    si.after_experience(None)
    omega = w / ((end - start) ** 2 + 0.1)
    torch.testing.assert_close(si.omega_["theta"], omega)
    assert si.w_["theta"].abs().sum() == 0 and torch.equal(si.prev_["theta"], end)
    # second experience: the SI penalty is on, but w only integrates the task loss's gradient
    anchor = end.clone()
    w2 = _si_experience(si, model, torch.tensor([2.0, 2.0, 2.0]), torch.ones(3), steps=50, lr=0.01)
    torch.testing.assert_close(si.w_["theta"], w2)
    torch.testing.assert_close(si.penalty(None, None), 0.5 * (omega * (model.theta - anchor) ** 2).sum())


# -- (f) learned state survives torch.save / torch.load -----------------------------------------
@pytest.mark.parametrize("scenario", ["task", "class"])
@pytest.mark.parametrize("name", sorted(ALL))
def test_extra_state_round_trip(streams, name, scenario):
    strategy = make(name)
    _run(streams[scenario], strategy, hidden=(50,), iterations=20, n_exp=2)
    buf = io.BytesIO()
    torch.save({"model": strategy.model.state_dict(), "extra": strategy.extra_state()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    stream = streams[scenario]
    model = build_model("mlp", stream.input_shape, stream.n_classes, scenario, hidden=[50])
    for e in stream.experiences[:2]:
        model.observe(e.classes, e.task_id)
    model.load_state_dict(state["model"])
    fresh = make(name).setup(model)
    fresh.load_extra_state(state["extra"])
    for m in (strategy.model, model):  # a third experience arrives: new head / classes
        m.observe(stream[2].classes, stream[2].task_id)
    x = stream[2].train.x[:64]
    batch = Batch(x, stream[2].train.y[:64], torch.full((64,), stream[2].task_id))
    with torch.no_grad():
        for p, q in zip(strategy.model.parameters(), model.parameters()):
            p.add_(0.01)
            q.add_(0.01)  # move away from the anchor so the penalty is not 0
    with torch.no_grad():
        want = strategy.penalty(strategy.model(batch.x, batch.t), batch)
        got = fresh.penalty(fresh.model(batch.x, batch.t), batch)
    assert want > 0
    torch.testing.assert_close(got, want)


# -- parameters, validation, composition --------------------------------------------------------
def test_invalid_choices_raise_clear_errors():
    model = _tiny(Head(3, 3))
    with pytest.raises(ValueError, match="l2_anchor"):
        L2(l2_anchor="start").setup(model)
    with pytest.raises(ValueError, match="ewc_fisher_labels"):
        EWC(ewc_fisher_labels="empirical").setup(model)


def test_l2_initial_anchor_pulls_toward_setup_weights():
    model = _tiny(Head(3, 3))
    l2 = L2(l2_lambda=2.0, l2_anchor="initial").setup(model)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    n_params = sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(l2.penalty(None, None), torch.tensor(n_params * 0.25))
    l2.after_experience(None)  # the initial anchor never moves
    assert all(torch.equal(l2.anchor_[n], init[n]) for n in init)


def test_parameter_names_are_unique_and_compose_runs(streams):
    names = [n for cls in ALL.values() for n in cls.get_param_names()]
    assert len(names) == len(set(names))
    combo = Compose(EWC(ewc_fisher_samples=100), SI())
    assert set(combo.get_params()) == set(EWC.get_param_names()) | set(SI.get_param_names())
    log = _record_penalties(combo)
    res = _run(streams["task"], combo, hidden=(50,), iterations=20, n_exp=2)
    assert all(l == l for l in res.losses)  # noqa: E741
    assert all(p > 0 for e, p in log[21:]) and all(p == 0 for e, p in log[:20])
    ewc, si = combo.members
    assert ewc.terms_ and si.omega_


@pytest.mark.parametrize("labels", ["all", "true"])
def test_ewc_fast_linear_fisher_equals_the_general_path(labels, monkeypatch):
    from lifelong.models import build_model
    from lifelong.strategies import ewc as ewc_mod

    torch.manual_seed(0)
    model = build_model("mlp", (1, 6, 6), 10, "class", hidden=[16, 8])
    model.observe([0, 1, 2, 3], 0)
    x, y = torch.rand(70, 1, 6, 6), torch.randint(0, 4, (70,))
    exp = Experience(0, 0, [0, 1, 2, 3], Split(x, y), Split(x[:0], y[:0]), Split(x, y))
    fast = EWC(ewc_fisher_labels=labels).setup(model).estimate_fisher(exp)
    called = []
    monkeypatch.setattr(ewc_mod, "_accumulate_linear", lambda *a: called.append(1))
    monkeypatch.setattr(ewc_mod, "_linear_layers", lambda *a: None)
    slow = EWC(ewc_fisher_labels=labels).setup(model).estimate_fisher(exp)
    assert not called
    for n in slow:
        torch.testing.assert_close(fast[n], slow[n], rtol=1e-4, atol=1e-8)


def test_ewc_fisher_of_a_cnn_takes_the_general_path_and_is_exact():
    from lifelong.models import SmallCNN

    torch.manual_seed(0)
    model = ContinualModel(SmallCNN((1, 8, 8), channels=[2], hidden=4), Head(4, 3))
    x, y = torch.rand(3, 1, 8, 8), torch.tensor([0, 2, 1])
    exp = Experience(0, 0, [0, 1, 2], Split(x, y), Split(x[:0], y[:0]), Split(x, y))
    got = EWC(ewc_fisher_labels="all").setup(model).estimate_fisher(exp)
    want = _loop_fisher(model, x, y, torch.zeros(3, dtype=torch.long), "all")
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-8)


def test_ewc_fast_fisher_applies_to_multi_head_models(monkeypatch):
    """Other tasks' heads do not run on a task's samples; the fast path still applies."""
    from lifelong.models import build_model
    from lifelong.strategies import ewc as ewc_mod

    torch.manual_seed(0)
    model = build_model("mlp", (1, 6, 6), 4, "task", hidden=[8])
    model.observe([0, 1], 0)
    model.observe([2, 3], 1)
    x, y = torch.rand(40, 1, 6, 6), torch.randint(2, 4, (40,))
    exp = Experience(1, 1, [2, 3], Split(x, y), Split(x[:0], y[:0]), Split(x, y))
    fast_calls = []
    real = ewc_mod._accumulate_linear
    monkeypatch.setattr(ewc_mod, "_accumulate_linear", lambda *a: (fast_calls.append(1), real(*a)))
    fast = EWC().setup(model).estimate_fisher(exp)
    assert fast_calls
    monkeypatch.setattr(ewc_mod, "_linear_layers", lambda *a: None)
    slow = EWC().setup(model).estimate_fisher(exp)
    for n in slow:
        torch.testing.assert_close(fast[n], slow[n], rtol=1e-4, atol=1e-8)
    assert fast["head.heads.0.weight"].abs().sum() == 0
