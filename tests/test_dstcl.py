"""DST-CL (dynamic sparse training for task-IL): exactly zero forgetting, more accuracy than
fine-tuning, the mechanism checked on hand-set values (exact per-task sparsity, growth only where
no earlier task owns a weight, reused connections frozen, each task tested with its own mask),
bit-for-bit resume across topology updates, and refusals."""
import pytest
import torch

from lifelong import metrics
from lifelong.config import StrategyConfig, validate_strategy_params
from lifelong.errors import ConfigError
from lifelong.models import build_model
from lifelong.sparse import count_parameters, erk_densities, strategy_masks
from lifelong.strategies import Compose, get_strategy_class
from lifelong.strategies._isolation import Frozen
from lifelong.strategies.base import StepContext
from lifelong.strategies.dstcl import DSTCL
from lifelong.training import train
from test_isolation import _forgets, _stream
from test_isolation import _run as isolation_run


def _run(strategy, iterations=100, optimizer=None, reset=True, seed=0, hidden=(100, 100)):
    return isolation_run(strategy, iterations=iterations, optimizer=optimizer, reset=reset, seed=seed,
                         hidden=list(hidden))


# -- the guarantee, and the accuracy --------------------------------------------------------------
@pytest.fixture(scope="module")
def finetune_accuracy():
    return metrics.average_accuracy(_run(get_strategy_class("finetune")()))


@pytest.mark.parametrize("kw", [{"dstcl_update_every": 20},
                                {"dstcl_update_every": 20, "dstcl_distribution": "erk", "dstcl_grow": "gradient",
                                 "dstcl_sparsity": 0.95},
                                {"dstcl_update_every": 10, "dstcl_prune": "random"}])
def test_zero_forgetting_and_beats_finetuning(kw, finetune_accuracy):
    R = _run(DSTCL(**kw))
    assert _forgets(R) <= 1e-6  # every column constant after its experience
    assert metrics.bwt(R) == 0
    acc, ft = metrics.average_accuracy(R), finetune_accuracy
    # measured at 100 iterations: fine-tuning 0.883 (BWT -0.13); DST-CL 0.99 in the three settings
    assert acc > ft + 0.05, (acc, ft)


def test_zero_forgetting_holds_with_momentum_weight_decay_and_a_kept_optimizer(monkeypatch):
    """Momentum carried across experiences and weight decay move weights whose gradient is
    zero (shared biases, old heads): the write-back keeps the guarantee; without it, tasks forget."""
    sgd = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3)  # noqa: E731
    R = _run(DSTCL(dstcl_update_every=10), iterations=60, optimizer=sgd, reset=False)
    assert _forgets(R) <= 1e-6
    monkeypatch.setattr(Frozen, "restore", lambda self: None)
    R = _run(DSTCL(dstcl_update_every=10), iterations=60, optimizer=sgd, reset=False)
    assert _forgets(R) > 0.01


def test_zero_forgetting_when_composed_with_replay():
    R = _run(Compose(DSTCL(dstcl_update_every=10), get_strategy_class("er")(mem_size=100)), iterations=40)
    assert _forgets(R) <= 1e-6


# -- the mechanism ----------------------------------------------------------------------------------
def _start(s, model, stream, k):
    s.set_context(StepContext(stream=stream, experience=stream[k], n_iterations=10))
    model.observe(stream[k].classes, stream[k].task_id)
    s.before_experience(stream[k])


def _one_layer(**kw):
    stream = _stream()
    torch.manual_seed(0)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "task", hidden=[16])
    s = DSTCL(**kw).setup(model, "cpu", 0)
    return s, model, stream


def test_each_task_gets_its_own_mask_at_the_sparsity_reusing_earlier_weights_frozen():
    s, model, stream = _one_layer(dstcl_sparsity=0.5)
    w = model.backbone.net[1].weight
    init = w.detach().clone()
    _start(s, model, stream, 0)
    m0 = s.current_.masks["net.1"].clone()
    assert int(m0.sum()) == w.numel() // 2
    assert torch.equal(w, init * m0)  # the task computes with M_0 only, from the initial values
    with torch.no_grad():
        w.add_(m0 * 1.0)  # "training" task 0
    trained0 = w.detach().clone()
    s.after_experience(stream[0])
    assert torch.equal(s.used_["net.1"], m0)
    _start(s, model, stream, 1)
    m1 = s.current_.masks["net.1"]
    assert int(m1.sum()) == w.numel() // 2 and not torch.equal(m1, m0)
    reused, fresh = m1 & m0, m1 & ~m0
    assert reused.any() and fresh.any()
    assert torch.equal(w[reused], trained0[reused]) and torch.equal(w[fresh], init[fresh])
    assert torch.all(w[~m1] == 0)
    # a step that moves everything: reused weights and the shared bias are written back, the rest of M_1 moves
    loss = model(torch.randn(8, 1, 8, 8), torch.full((8,), stream[1].task_id)).logsumexp(1).sum()
    loss.backward()
    s.before_step(None)
    assert torch.all(w.grad[reused] == 0) and torch.all(model.backbone.net[1].bias.grad == 0)
    bias = model.backbone.net[1].bias.detach().clone()
    with torch.no_grad():
        w.add_(1.0)
        model.backbone.net[1].bias.add_(1.0)
    s.after_step(None, None)  # iteration 0: no topology change
    assert torch.equal(w[reused], trained0[reused]) and torch.equal(model.backbone.net[1].bias, bias)
    assert torch.equal(w[fresh], init[fresh] + 1) and torch.all(w[~m1] == 0)
    s.after_experience(stream[1])
    # each task is tested with its own mask over the stored values
    assert torch.equal(s.task_weights(0)["net.1.weight"], trained0 * m0)
    assert torch.equal(s.task_weights(1)["net.1.weight"], torch.where(fresh, init + 1, trained0) * m1)


def test_topology_update_grows_only_free_weights_at_the_largest_gradients_keeping_the_count():
    s, model, stream = _one_layer(dstcl_sparsity=0.5, dstcl_grow="gradient", dstcl_update_every=1,
                                  dstcl_prune_fraction=0.2)
    _start(s, model, stream, 0)
    s.after_experience(stream[0])
    _start(s, model, stream, 1)
    w = model.backbone.net[1].weight
    used, before = s.used_["net.1"].clone(), s.current_.masks["net.1"].clone()
    w.grad = torch.rand(w.shape, generator=torch.Generator().manual_seed(1))
    values = w.detach().clone()
    s.set_context(StepContext(stream=stream, experience=stream[1], iteration=0, n_iterations=10))
    s.after_step(None, None)
    after = s.current_.masks["net.1"]
    assert int(after.sum()) == int(before.sum())  # the sparsity does not change
    r = 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 10))) * (0.2 - 0.005) + 0.005  # cosine-annealed at t = 1
    n = int(torch.ceil(r * before.sum()))  # 100 of the 512 active weights
    # by hand: drop the n smallest |w| of M_1 (reused ones included), regrow n among the free positions
    # not kept, at the largest |gradient| (a dropped free weight may come back, with its value)
    drop = torch.zeros(w.numel(), dtype=torch.bool)
    drop[values.abs().flatten().masked_fill(~before.flatten(), float("inf")).topk(n, largest=False).indices] = True
    kept = before & ~drop.view(w.shape)
    grow = torch.zeros(w.numel(), dtype=torch.bool)
    grow[w.grad.flatten().masked_fill((kept | used).flatten(), float("-inf")).topk(n).indices] = True
    assert torch.equal(after, kept | grow.view(w.shape))
    assert not (after & ~before & used).any()  # never a weight an earlier task owns
    assert torch.all(w[after & ~before] == 0)  # zero-cost: new weights start at 0
    assert torch.equal(w[kept], values[kept])


def test_erk_and_uniform_allocate_per_layer_densities():
    stream = _stream()
    for dist in ("erk", "uniform"):
        torch.manual_seed(0)
        model = build_model("mlp", stream.input_shape, stream.n_classes, "task", hidden=[100, 20])
        s = DSTCL(dstcl_sparsity=0.8, dstcl_distribution=dist).setup(model, "cpu", 0)
        _start(s, model, stream, 0)
        shapes = {k: tuple(m.weight.shape) for k, m in s.layers.items()}
        want = erk_densities(shapes, 0.2) if dist == "erk" else {k: 0.2 for k in shapes}
        for k, m in s.current_.masks.items():
            assert int(m.sum()) == round(want[k] * m.numel()), (dist, k)
    assert want != erk_densities(shapes, 0.2)  # the two differ on this model


def test_reported_parameters_are_the_union_of_the_tasks_connections():
    s = DSTCL(dstcl_sparsity=0.9, dstcl_update_every=10)
    _run(s, iterations=30)
    masks = strategy_masks(s)
    union = {k: torch.zeros_like(v) for k, v in s.task_masks_[0].items()}
    for m in s.task_masks_:
        for k in union:
            union[k] |= m[k]
    assert all(torch.equal(masks[0][f"backbone.{k}.weight"], union[k]) for k in union)
    total, nonzero = count_parameters(s.model, masks)
    dense_rest = total - sum(v.numel() for v in union.values())
    assert nonzero == dense_rest + sum(int(v.sum()) for v in union.values())
    sparsity = 1 - sum(int(v.sum()) for v in union.values()) / sum(v.numel() for v in union.values())
    assert 1 - 5 * 0.1 <= sparsity < 0.9  # five tasks of 10 % each, overlapping where they reuse weights


def test_resumes_bit_for_bit_across_topology_updates():
    from test_resume import InMemory, _same

    def fit(checkpointer=None, resume=None):
        stream = _stream()
        torch.manual_seed(0)
        model = build_model("mlp", stream.input_shape, stream.n_classes, "task", hidden=[32])
        strategy = DSTCL(dstcl_update_every=3, dstcl_grow="gradient").setup(model, "cpu", 0)
        res = train(stream, strategy, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), batch_size=16,
                    iterations=8, seed=0, eval_every=3, eval_subsample=50, checkpointer=checkpointer, resume=resume)
        return res, strategy

    ck = InMemory(4)
    ref, strategy = fit(ck)
    inside = [s for s in ck.snaps if s["next"][1] > 0]
    for snap in inside[:1] + inside[-1:] + [s for s in ck.snaps if s["next"][1] == 0][-1:]:
        res, resumed = fit(resume=snap)
        assert _same(res, ref), snap["next"]
        assert all(torch.equal(a[k], b[k]) for a, b in zip(resumed.task_masks_, strategy.task_masks_) for k in a)


# -- refusals ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, value", [("dstcl_sparsity", 1.0), ("dstcl_sparsity", -0.1),
                                        ("dstcl_distribution", "normal"), ("dstcl_prune", "taylor"),
                                        ("dstcl_grow", "momentum"), ("dstcl_update_every", 0),
                                        ("dstcl_prune_fraction", 0.0), ("dstcl_prune_fraction", 1.0)])
def test_bad_values_are_refused(key, value):
    with pytest.raises(ConfigError, match=f"config key 'strategy.{key}'"):
        validate_strategy_params(StrategyConfig(name="dstcl", **{key: value}))


def test_a_task_arriving_twice_is_refused():  # models it cannot isolate: test_isolation.py
    stream = _stream()
    model = build_model("mlp", stream.input_shape, stream.n_classes, "task", hidden=[8])
    s = DSTCL().setup(model, "cpu", 0)
    _start(s, model, stream, 0)
    s.after_experience(stream[0])
    with pytest.raises(ConfigError, match="arrives a second time"):
        s.before_experience(stream[0])


def test_the_sparsity_benchmark_runs(tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import dstcl_sparsity

    out = dstcl_sparsity.main(["--dataset", "digits", "--hidden", "32", "--seeds", "1", "--iterations", "5",
                               "--update-every", "2", "--sparsities", "0.9", "--out", str(tmp_path / "d.json"),
                               "--quiet"])
    assert set(out["accuracy"]) == {"0.9/erk", "0.9/uniform", "dense"}
    assert out["bwt"]["0.9/erk"] == [0.0] and len(out["final_per_task"]["0.9/uniform"][0]) == 5
    assert json.loads((tmp_path / "d.json").read_text())["benchmark"] == "dstcl_sparsity"
