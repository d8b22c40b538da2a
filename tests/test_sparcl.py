"""SparCL (lifelong.strategies.sparcl): each part does what it says (TDM keeps the sparsity exact
and prunes by the lowest |w| + lambda |grad|; DDR's removed samples are never trained on; DGM's
masked gradients are zero and those weights do not move), the FLOPs are counted step by step,
every part off is DER++ bit for bit, bad values are refused, and it resumes bit for bit with
every part acting inside an experience."""

import pytest
import torch

from lifelong.config import StrategyConfig, validate_strategy_params
from lifelong.data import digits
from lifelong.errors import ConfigError
from lifelong.models import build_model
from lifelong.runner import run
from lifelong.sparse import forward_flops, largest
from lifelong.strategies import STRATEGIES
from lifelong.strategies.base import StepContext
from lifelong.strategies.sparcl import SparCL
from lifelong.streams import split_stream
from lifelong.training import train
from test_resume import InMemory

OFF = dict(sparcl_sparsity=0.0, sparcl_tdm=False, sparcl_ddr=False, sparcl_dgm=False, sparcl_current_task_ce=False)


def _fit(cls=SparCL, scenario="class", iterations=30, lr=0.2, checkpointer=None, resume=None, **params):
    stream = split_stream(digits(), scenario=scenario, n_experiences=5, seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", stream.input_shape, stream.n_classes, scenario, hidden=[64, 64])
    s = cls(mem_size=100, **params).setup(model, "cpu", 0)
    res = train(stream, s, lambda p: torch.optim.SGD(p, lr=lr), batch_size=32, iterations=iterations, seed=0,
                checkpointer=checkpointer, resume=resume)
    return s, res, stream


def test_every_part_off_is_derpp_bit_for_bit_and_counts_the_loops_flops():
    s, res, stream = _fit(**OFF)
    d, ref, _ = _fit(STRATEGIES["derpp"])
    assert res.accuracy_matrix == ref.accuracy_matrix and res.losses == ref.losses
    dense = forward_flops(s.model, stream.input_shape)
    f = s.training_flops()
    assert f["training"] == 3 * dense * res.samples_trained  # the runner's formula, dense
    assert f["training_gradient_masked"] == f["training"]  # no DGM: nothing saved
    assert f["training_with_replay"] > 2.5 * f["training"]  # two replayed minibatches a step


class Spy(SparCL):
    """Records, after every step, each layer's active count and the stream indices trained on."""

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        self.log = []
        return self

    def after_step(self, batch, logits):
        super().after_step(batch, logits)
        self.log.append((self.experience_.index, self.context.iteration,
                         {k: int(m.sum()) for k, m in self.masks_.masks.items()},
                         batch.index[:batch.n_new].clone(),
                         None if self.ddr_ is None else self.ddr_["removed"].clone()))


def test_tdm_keeps_the_sparsity_exact_grows_at_each_task_start_and_moves_the_mask():
    it, K = 30, 10
    s, res, _ = _fit(Spy, iterations=it, sparcl_ddr=False, sparcl_dgm=False, sparcl_mask_updates=K)
    targets = {k: round(0.25 * m.numel()) for k, m in s.masks_.masks.items()}
    extra = {k: round(0.01 * m.numel()) for k, m in s.masks_.masks.items()}
    for exp, i, counts, _, _ in s.log:
        want = {k: targets[k] + (extra[k] if i < it // K else 0) for k in targets}
        assert counts == want, (exp, i)
    for _, w, m in s.masks_.weights():
        assert torch.all(w[~m] == 0)
    static, _, _ = _fit(iterations=it, sparcl_tdm=False, sparcl_ddr=False, sparcl_dgm=False)
    fresh = SparCL(sparcl_sparsity=0.75).setup(build_model("mlp", (1, 8, 8), 10, "class", hidden=[64, 64]), "cpu", 0)
    for k in targets:  # the static mask is the initial draw; TDM moved it
        assert torch.equal(static.masks_.masks[k], fresh.masks_.masks[k])
        assert not torch.equal(s.masks_.masks[k], fresh.masks_.masks[k])


def test_tdm_shrink_keeps_the_highest_cwi_and_regrows_at_zero():
    stream = split_stream(digits(), scenario="class", n_experiences=5, seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "class", hidden=[64, 64])
    s = SparCL(sparcl_grad_weight=0.5).setup(model, "cpu", 0)
    s.set_context(StepContext(n_iterations=100))
    model.observe(stream[0].classes, 0)
    s.before_experience(stream[0])
    s._tdm_update(0)  # the task starts: +1 % of each layer
    cwi, before = {}, {}
    for k, w, m in s.masks_.weights():
        with torch.no_grad():
            w.copy_(torch.randn_like(w) * m)  # every active weight non-zero (grown ones were 0)
        w.grad = torch.randn_like(w)
        cwi[k] = (w.abs() + 0.5 * w.grad.abs()).detach()
        before[k] = m.clone()
    s._tdm_update(1)
    for k, w, m in s.masks_.weights():
        step, target = round(0.01 * m.numel()), round(0.25 * m.numel())
        kept = m & (w != 0)  # regrown weights are 0; kept ones keep their (non-zero) values
        assert int(m.sum()) == target and int(kept.sum()) == target - step
        assert bool((kept <= before[k]).all())
        dropped = before[k] & ~kept
        assert cwi[k][kept].min() >= cwi[k][dropped].max()
        assert int((m & ~kept).sum()) == step and torch.all(w[m & ~kept] == 0)


def test_ddr_removes_its_ratio_and_removed_samples_are_never_trained_on_again():
    s, res, stream = _fit(Spy, iterations=40, sparcl_tdm=False, sparcl_dgm=False)
    for e in stream:
        assert s.ddr_removed_[e.index] == round(0.3 * len(e.train))
    for exp, i, _, trained, removed in s.log:
        assert not removed[trained].any(), (exp, i)
    last = {e: removed for e, _, _, _, removed in s.log}  # the removals of each experience at its end
    assert all(int(r.sum()) == s.ddr_removed_[e] for e, r in last.items())
    _, ref, _ = _fit(iterations=40, sparcl_tdm=False, sparcl_dgm=False, sparcl_ddr=False)
    assert res.samples_trained < 0.85 * ref.samples_trained  # the loop's count falls with the data


def test_ddr_removes_the_fewest_forgetting_events_first_then_the_most_confident():
    s = SparCL()
    s.ddr_removed_ = [0]
    s.ddr_ = {"removed": torch.zeros(7, dtype=torch.bool)}
    s._reset_ddr_stats()
    s.ddr_["seen"][:] = torch.tensor([2, 2, 2, 2, 2, 2, 0], dtype=torch.int32)
    s.ddr_["learned"][:] = torch.tensor([1, 1, 1, 1, 0, 1, 0], dtype=torch.bool)
    s.ddr_["forgets"][:] = torch.tensor([0, 0, 1, 0, 0, 2, 0], dtype=torch.int32)
    s.ddr_["margin"][:] = torch.tensor([2.0, 8.0, 5.0, 4.0, -3.0, 1.0, 9.0])
    s._remove(3)  # no forgetting, by margin: 1, then 3, then 0
    assert s.ddr_["removed"].nonzero().flatten().tolist() == [0, 1, 3]
    assert int(s.ddr_["seen"].sum()) == 0  # statistics restart after a stage
    s.ddr_["seen"][:] = 1
    s.ddr_["learned"][:] = torch.tensor([1, 1, 0, 1, 0, 1, 1], dtype=torch.bool)
    s._remove(3)  # 5 and 6 (learned, equal margins: in order), then 2 before 4 (never learned)
    assert s.ddr_["removed"].nonzero().flatten().tolist() == [0, 1, 2, 3, 5, 6]


class GradSpy(SparCL):
    """Checks, on every step, that gradients outside the kept entries are zero and those
    weights do not move (plain SGD)."""

    def setup(self, model, device="cpu", seed=0):
        super().setup(model, device, seed)
        self.checked = 0
        return self

    def before_step(self, batch):
        super().before_step(batch)
        keep = min(1.0, 0.2 / 0.25)
        self.before = {}
        for k, w, m in self.masks_.weights():
            g = self.grad_masks_[k]
            assert int(g.sum()) == round(int(m.sum()) * keep)  # 80 % gradient sparsity overall
            assert torch.all(w.grad[~(m & g)] == 0)
            self.before[k] = (w.detach().clone(), m & g)

    def after_step(self, batch, logits):
        super().after_step(batch, logits)
        for k, w, _ in self.masks_.weights():
            old, kept = self.before[k]
            assert torch.equal(w[~kept], old[~kept] * self.masks_.masks[k][~kept])
        self.checked += 1


def test_dgm_masked_gradients_are_zero_and_those_weights_do_not_move():
    s, res, _ = _fit(GradSpy, iterations=12, sparcl_dgm_every=5, sparcl_ddr=False)
    assert s.checked == 5 * 12
    f = s.training_flops()
    assert f["training_gradient_masked"] < f["training"]


def test_the_count_follows_the_masks_in_force_at_each_step():
    class FlopSpy(SparCL):
        def setup(self, model, device="cpu", seed=0):
            super().setup(model, device, seed)
            self.expected = 0
            return self

        def before_step(self, batch):  # the masks this step's forward ran with
            self.expected += len(batch.y) * forward_flops(self.model, tuple(batch.x.shape[1:]), self.masks_)
            super().before_step(batch)

    s, res, stream = _fit(FlopSpy, iterations=20, sparcl_dgm=False)
    assert s.flops_["batch_forward"] == s.expected
    final = 3 * forward_flops(s.model, stream.input_shape, s.masks_) * res.samples_trained
    assert s.training_flops()["training"] > final  # the +1 % at every task start costs a little


def test_results_json_reports_the_strategys_own_count():
    cfg = {"benchmark": {"name": "split-digits"}, "model": {"hidden": [16]}, "eval": {"every": None},
           "train": {"iterations": 12, "batch_size": 16}, "strategy": {"name": "sparcl", "mem_size": 50}}
    out = run(cfg)
    assert set(out["flops"]) == {"inference_per_sample", "training", "training_gradient_masked",
                                 "training_with_replay", "training_gradient_masked_with_replay"}
    dense = run({**cfg, "strategy": {"name": "derpp", "mem_size": 50}})
    assert out["flops"]["training"] < 0.5 * dense["flops"]["training"]
    assert out["parameters"]["nonzero"] < dense["parameters"]["nonzero"]


def test_sparcl_beats_finetuning_at_under_a_third_of_derpps_flops():
    s, res, _ = _fit(iterations=60)
    d, ref, _ = _fit(iterations=60, **OFF)
    stream = split_stream(digits(), scenario="class", n_experiences=5, seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "class", hidden=[64, 64])
    plain = STRATEGIES["finetune"]().setup(model, "cpu", 0)
    ft = train(stream, plain, lambda p: torch.optim.SGD(p, lr=0.2), batch_size=32, iterations=60, seed=0)
    acc, acc_derpp, acc_ft = (r.metrics()["average_accuracy"] for r in (res, ref, ft))
    assert acc > acc_ft + 0.4 and acc > acc_derpp - 0.15
    assert s.training_flops()["training_gradient_masked_with_replay"] < d.training_flops()["training_with_replay"] / 3


@pytest.mark.parametrize("params", [{"sparcl_sparsity": 1.0}, {"sparcl_ddr_ratio": 1.5}, {"sparcl_ddr_end": 0},
                                    {"sparcl_distribution": "foo"}, {"sparcl_mask_updates": 1},
                                    {"sparcl_update_fraction": 0}, {"sparcl_gradient_sparsity": -0.1},
                                    {"sparcl_dgm_every": 0}])
def test_bad_values_are_refused(params):
    with pytest.raises(ConfigError):
        validate_strategy_params(StrategyConfig(name="sparcl", **params))


def test_a_gradient_sparsity_below_the_weight_sparsity_is_refused():
    model = build_model("mlp", (1, 8, 8), 10, "class", hidden=[16])
    with pytest.raises(ConfigError, match="sparcl_gradient_sparsity"):
        SparCL(sparcl_sparsity=0.9, sparcl_gradient_sparsity=0.8).setup(model, "cpu", 0)
    SparCL(sparcl_sparsity=0.9, sparcl_gradient_sparsity=0.8, sparcl_dgm=False).setup(model, "cpu", 0)


def test_largest_picks_exactly_n_even_with_ties():
    x = torch.tensor([0.0, 3.0, 0.0, 1.0, 0.0, 3.0])
    assert largest(x, 3).tolist() == [False, True, False, True, False, True]
    assert int(largest(x, 4).sum()) == 4 and int(largest(x, 0).sum()) == 0


def test_resumes_bit_for_bit_with_every_part_acting_inside_experiences():
    params = dict(iterations=20, sparcl_dgm_every=3, sparcl_mask_updates=5, sparcl_ddr_end=0.8)
    ck = InMemory(7)
    ref, res, _ = _fit(checkpointer=ck, **params)
    inside = [snap for snap in ck.snaps if snap["next"][1] > 0]
    for snap in inside[:1] + inside[-1:]:
        s, again, _ = _fit(resume=snap, **params)
        assert again.accuracy_matrix == res.accuracy_matrix and again.losses == res.losses
        assert s.flops_ == ref.flops_ and s.ddr_removed_ == ref.ddr_removed_
