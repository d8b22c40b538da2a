"""Orthogonal-projection methods (GPM, HLOP): behaviour, not just "runs".

GPM: the memory update is checked by hand (energies 5 / 3 / 2: how many directions each
threshold keeps, and the incremental rule that adds only the residual), a step on a new task
leaves the outputs on the old task's stored inputs unchanged (and, as a control, plain
gradient projection under Adam does not), HLOP: Oja's subspace rule finds the principal
subspace of a synthetic low-rank input, and the new neurons of a later task learn the part
the fixed ones miss. Both beat fine-tuning on task-IL Split digits and domain-IL Permuted
digits. Bad values are refused.
"""
import pytest
import torch
from torch import nn

from lifelong.config import StrategyConfig, validate_strategy_params
from lifelong.data import digits
from lifelong.errors import ConfigError
from lifelong.models import ContinualModel, Head, build_model
from lifelong.strategies import Strategy
from lifelong.strategies import _projection as proj
from lifelong.strategies.gpm import GPM, extend_basis
from lifelong.strategies.hlop import HLOP
from lifelong.streams import permuted_stream, split_stream
from lifelong.training import train


def _energies_rows(energies, d, rotate=None):
    """Rows whose Gram matrix has eigenvalues ``energies`` along e_1, e_2, ... (or rotated)."""
    n = len(energies)
    r = torch.zeros(n, d)
    for i, e in enumerate(energies):
        r[i, i] = e ** 0.5
    return r if rotate is None else r @ rotate.T


# -- GPM's memory update, by hand -----------------------------------------------------------------
@pytest.mark.parametrize("threshold, k", [(0.4, 1), (0.5, 1), (0.75, 2), (0.8, 2), (0.85, 3), (1.0, 3)])
def test_gpm_first_task_keeps_the_fewest_directions_reaching_the_threshold(threshold, k):
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0)))
    r = _energies_rows([5.0, 3.0, 2.0], 6, rotate=q)  # energies 5, 3, 2 of 10 along q's columns
    m = extend_basis(None, r, threshold)
    assert m.shape == (6, k)
    torch.testing.assert_close(m.T @ m, torch.eye(k), atol=1e-5, rtol=0)
    # the basis spans the top-k directions (up to sign)
    torch.testing.assert_close((m.T @ q[:, :k]).abs().sum(0), torch.ones(k), atol=1e-5, rtol=0)


def test_gpm_later_tasks_add_only_the_residual():
    e = torch.eye(6)
    m = e[:, :1]  # the memory holds e1
    r = _energies_rows([5.0, 3.0, 2.0], 6)  # 5 of 10 already captured by e1
    grown = extend_basis(m, r, 0.75)  # needs 7.5: e2 (3) reaches it, e3 is not needed
    assert grown.shape == (6, 2)
    torch.testing.assert_close(grown[:, 0], e[:, 0])
    torch.testing.assert_close(grown[:, 1].abs(), e[:, 1], atol=1e-6, rtol=0)
    assert extend_basis(m, r, 0.5).shape == (6, 1)  # 5 of 10 is already enough: nothing added
    both = extend_basis(m, r, 0.95)  # 9.5: e2 and e3
    assert both.shape == (6, 3)
    torch.testing.assert_close(both.T @ both, torch.eye(3), atol=1e-6, rtol=0)
    # rank-deficient data never adds directions with no energy, even at threshold 1
    assert extend_basis(None, r, 1.0).shape == (6, 3)


def test_gpm_threshold_grows_per_task_and_is_capped():
    g = GPM(gpm_threshold=0.97, gpm_threshold_increment=0.003)
    assert [round(g.threshold(t), 6) for t in (0, 1, 5)] == [0.97, 0.973, 0.985]
    assert GPM(gpm_threshold=0.99, gpm_threshold_increment=0.01).threshold(3) == 1.0


# -- GPM: a step on a new task keeps the old task's outputs ----------------------------------
def _digits_stream(scenario):
    return split_stream(digits(), scenario, n_experiences=5, seed=0)


def _two_tasks(project, optimizer, steps=30):
    """Train task 0, store its full memory (threshold 1: every direction of its inputs), then take
    ``steps`` steps on task 1 and return (outputs on task 0's stored inputs before, after)."""
    stream = _digits_stream("domain")  # one shared head: the head is projected too
    torch.manual_seed(0)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "domain", hidden=[32])
    gpm = GPM(gpm_threshold=1.0, gpm_samples=10_000, gpm_project=project).setup(model, "cpu", 0)
    first = type(stream)(stream.name, "domain", stream.experiences[:1], stream.n_classes, stream.input_shape)
    train(first, gpm, lambda p: torch.optim.Adam(p, lr=1e-2), batch_size=16, iterations=40, seed=0)
    x0 = stream[0].train.x
    with torch.no_grad():
        before = model(x0).clone()
        w_before = [p.clone() for p in model.parameters()]
    second = type(stream)(stream.name, "domain", stream.experiences[1:2], stream.n_classes, stream.input_shape)
    train(second, gpm, optimizer, batch_size=16, iterations=steps, seed=1)
    with torch.no_grad():
        after = model(x0)
    moved = max(float((p.detach() - w).abs().max()) for p, w in zip(model.parameters(), w_before))
    return before, after, moved, gpm


@pytest.mark.parametrize("project, optimizer", [
    ("update", lambda p: torch.optim.Adam(p, lr=1e-2)),
    ("update", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3)),
    ("gradient", lambda p: torch.optim.SGD(p, lr=0.1)),  # the paper's setting
])
def test_gpm_keeps_the_old_tasks_outputs(project, optimizer):
    before, after, moved, gpm = _two_tasks(project, optimizer)
    assert moved > 1e-2  # the new task did train
    torch.testing.assert_close(after, before, atol=2e-4, rtol=1e-4)
    for b in gpm.bases_.values():  # the memory is orthonormal
        torch.testing.assert_close(b.T @ b, torch.eye(b.shape[1]), atol=1e-4, rtol=0)


def test_gpm_gradient_projection_alone_does_not_survive_adam():
    # the reason for gpm_project="update": Adam rescales the projected gradient entry by entry
    before, after, _, _ = _two_tasks("gradient", lambda p: torch.optim.Adam(p, lr=1e-2))
    assert (after - before).abs().max() > 1e-2


def test_projection_covers_convolutions_through_their_patches():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(4, 2, 5, 5)
    r = proj.rows(conv, x)
    assert r.shape == (4 * 25, 2 * 9 + 1)
    m = extend_basis(None, r[:30], 1.0)  # the patches of the first image and a bit
    g = torch.randn(3, 19)
    conv.weight.grad, conv.bias.grad = g[:, :-1].reshape(3, 2, 3, 3).clone(), g[:, -1].clone()
    model = nn.Module()
    model.conv = conv
    proj.Projector().gradients(model, {"conv": m}, "gradient")
    flat = torch.cat([conv.weight.grad.reshape(3, -1), conv.bias.grad[:, None]], 1)
    torch.testing.assert_close(flat @ r[:30].T, torch.zeros(3, 30), atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match="grouped convolution"):
        GPM().setup(ContinualModel(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten()), Head(2, 2)))


# -- HLOP: Oja's subspace rule -------------------------------------------------------------------
def _low_rank(n, d, variances, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, len(variances), generator=g))
    z = torch.randn(n, len(variances), generator=g) * torch.tensor(variances) ** 0.5
    return z @ basis.T + 0.01 * torch.randn(n, d, generator=g), basis


def _cosines(h, basis):
    """Cosines of the principal angles between span(h's rows) and span(basis's columns)."""
    q, _ = torch.linalg.qr(h.T)
    return torch.linalg.svdvals(basis.T @ q)


def _hlop_on(dim, neurons, **kw):
    hlop = HLOP(hlop_neurons=neurons, **kw).setup(ContinualModel(nn.Identity(), Head(1, 1)), "cpu", 0)
    hlop.grow("layer", dim, neurons)
    return hlop


def test_hlop_hebbian_rule_finds_the_principal_subspace():
    x, basis = _low_rank(4000, 20, [4.0, 3.0, 2.0, 1.5, 1.0])
    hlop = _hlop_on(20, 5)
    start = _cosines(hlop.weights_["layer"], basis).min()
    for _ in range(3):  # 3 passes, 40 batches of 100, 5 updates each at rate 0.05
        for s in range(0, 4000, 100):
            hlop.hebbian("layer", x[s:s + 100], 0.05)
    h = hlop.weights_["layer"]
    assert start < 0.5  # a random start is far from it
    assert _cosines(h, basis).min() > 0.99  # every principal angle below ~8 degrees
    torch.testing.assert_close(h @ h.T, torch.eye(5), atol=0.05, rtol=0)  # rows nearly orthonormal
    u = torch.linalg.svd(x, full_matrices=False)[2][:5].T  # and it agrees with the SVD's top 5
    assert _cosines(h, u).min() > 0.99


def test_hlop_new_neurons_learn_what_the_fixed_ones_miss():
    x, basis = _low_rank(4000, 20, [4.0, 3.0, 2.0, 1.5])
    hlop = _hlop_on(20, 2)
    hlop.weights_["layer"] = basis[:, :2].T.clone()  # fixed neurons hold the first two directions
    hlop.momentum_["layer"] = torch.zeros(2, 20)
    hlop.fixed_["layer"] = 2
    hlop.grow("layer", 20, 2)
    fixed = hlop.weights_["layer"][:2].clone()
    for _ in range(3):
        for s in range(0, 4000, 100):
            hlop.hebbian("layer", x[s:s + 100], 0.05)
    h = hlop.weights_["layer"]
    assert torch.equal(h[:2], fixed)  # old neurons do not learn
    assert _cosines(h[2:], basis[:, 2:]).min() > 0.99  # new ones take the remaining two directions
    assert (h[2:] @ basis[:, :2]).abs().max() < 0.05


def test_hlop_neuron_schedule_follows_the_reference():
    hlop = HLOP()
    assert [hlop.new_neurons(t) for t in range(10)] == [80, 70, 70, 50, 50, 50, 30, 30, 30, 10]


# -- both beat fine-tuning on small streams of digits --------------------------------------
# MLP 64-64, Adam, batch 32; average final accuracy over seeds 0, 1, 2 (measured):
# - task-IL Split digits, 5 experiences x 100 steps at lr 3e-2: fine-tuning .945, GPM .985,
#   HLOP .987;
# - domain-IL Permuted digits, 5 experiences x 60 steps at lr 1e-2: fine-tuning .401, GPM .738,
#   HLOP .595.
# HLOP with 32 + 24 neurons per task: the defaults (80 + 70) would fill the 65-dimensional
# input space on the first task.
SETTINGS = {"task-split": ("task", 100, 3e-2, 0.025), "domain-permuted": ("domain", 60, 1e-2, 0.1)}


def _avg(setting, make, seed):
    scenario, iterations, lr, _ = SETTINGS[setting]
    stream = (_digits_stream(scenario) if setting == "task-split"
              else permuted_stream(digits(), n_experiences=5, scenario=scenario, seed=0))
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.n_classes, scenario, hidden=[64])
    strategy = make().setup(model, "cpu", seed)
    res = train(stream, strategy, lambda p: torch.optim.Adam(p, lr=lr), batch_size=32, iterations=iterations,
                seed=seed)
    row = res.accuracy_matrix[-1]
    return sum(row) / len(row)


@pytest.fixture(scope="module")
def finetune_acc():
    return {setting: sum(_avg(setting, Strategy, s) for s in (0, 1, 2)) / 3 for setting in SETTINGS}


@pytest.mark.slow
@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("make", [GPM, lambda: HLOP(hlop_neurons=32, hlop_neurons_increment=24)],
                         ids=["gpm", "hlop"])
def test_beats_finetuning_on_digits(finetune_acc, setting, make):
    acc = sum(_avg(setting, make, s) for s in (0, 1, 2)) / 3
    assert acc > finetune_acc[setting] + SETTINGS[setting][3], (acc, finetune_acc[setting])


# -- bad values refused ----------------------------------------------------------------------
@pytest.mark.parametrize("name, key, value", [
    ("gpm", "gpm_threshold", 0.0), ("gpm", "gpm_threshold", 1.01), ("gpm", "gpm_threshold_increment", -0.1),
    ("gpm", "gpm_samples", 0), ("gpm", "gpm_project", "weights"),
    ("hlop", "hlop_neurons", 0), ("hlop", "hlop_neurons_increment", -1), ("hlop", "hlop_lr", 0.0),
    ("hlop", "hlop_lr_input", -1.0), ("hlop", "hlop_iterations", 0), ("hlop", "hlop_project", "x"),
])
def test_bad_values_are_refused(name, key, value):
    with pytest.raises(ConfigError, match=f"strategy.{key}"):
        validate_strategy_params(StrategyConfig(name=name, **{key: value}))
    validate_strategy_params(StrategyConfig(name=name))  # the defaults pass
