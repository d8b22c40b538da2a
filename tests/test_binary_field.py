"""Binary weights learnt in field space (Li, Huang et al., Phys. Rev. E 2023): the mean-field
pre-activation moments against Monte Carlo over binary weights, predictions with exactly +-1
weights, the KL to the previous task's fields (zero on the first task, hand computed after,
pulling toward the prior), the teacher-student perceptron (the prior keeps the first teacher),
and split digits task-IL (the prior beats binary fine-tuning)."""
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lifelong.config import StrategyConfig, validate_strategy_params
from lifelong.data import digits
from lifelong.errors import ConfigError
from lifelong.models import build_model
from lifelong.strategies.base import Batch
from lifelong.strategies.binary_field import BinaryField, binary_weights, field_kl, preactivation_moments
from lifelong.streams import split_stream
from lifelong.training import train

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def _model(scenario="task", hidden=(16,)):
    stream = split_stream(digits(), scenario=scenario, n_experiences=5, seed=0)
    torch.manual_seed(0)
    return stream, build_model("mlp", stream.input_shape, stream.n_classes, scenario, hidden=list(hidden))


def test_preactivation_moments_equal_monte_carlo_over_binary_weights():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 40, generator=g, dtype=torch.float64)
    h = 1.5 * torch.randn(5, 40, generator=g, dtype=torch.float64)
    mean, var = preactivation_moments(x, h)
    k = 40000
    up = torch.rand(k, 5, 40, generator=g, dtype=torch.float64) < (1 + torch.tanh(h)) / 2  # P(w = +1)
    w = torch.where(up, 1.0, -1.0).double()
    pre = torch.einsum("bi,koi->kbo", x, w) / math.sqrt(40)
    mc_mean, mc_var = pre.mean(0), pre.var(0)
    # standard errors: sqrt(var / k) for the mean, about var * sqrt(2 / k) for the variance
    assert torch.all((mc_mean - mean).abs() < 5 * (var / k).sqrt())
    assert torch.all((mc_var - var).abs() < 5 * var * math.sqrt(2 / k))
    assert not torch.allclose(var, (x * x).sum(1, keepdim=True).expand_as(var) / 40)  # uncertainty < 1 somewhere


def test_prediction_uses_exactly_plus_minus_one_weights():
    stream, model = _model("class", hidden=(16,))
    for e in stream:
        model.observe(e.classes, e.task_id)
    s = BinaryField().setup(model, "cpu", 0)
    with torch.no_grad():
        model.backbone.net[1].weight[0, :3] = 0.0  # sign(0) counts as +1
    fields = [model.backbone.net[1].weight, model.head.linear.weight]
    for h in fields:
        assert set(binary_weights(h).unique().tolist()) <= {-1.0, 1.0}
    x = stream[0].test.x[:10]
    w1, w2 = (binary_weights(h) for h in fields)
    want = torch.relu(x.flatten(1) @ w1.T / math.sqrt(w1.shape[1])) @ w2.T / math.sqrt(w2.shape[1])
    assert torch.allclose(s.predict(x), want, atol=1e-5)
    with torch.no_grad():  # only the signs matter: scaling every field changes nothing
        for h in fields:
            h.mul_(7.0)
    assert torch.allclose(s.predict(x), want, atol=1e-5)
    # the mean-field prediction is the network with weights tanh(h), and differs
    s.bfield_predict = "mean"
    m1, m2 = (torch.tanh(h) for h in fields)
    mean = torch.relu(x.flatten(1) @ m1.T / math.sqrt(w1.shape[1])) @ m2.T / math.sqrt(w2.shape[1])
    assert torch.allclose(s.predict(x), mean, atol=1e-5) and not torch.allclose(mean, want, atol=1e-2)
    # training draws from the Gaussian pre-activations: two draws differ
    b = Batch(x, torch.zeros(10, dtype=torch.long), torch.zeros(10, dtype=torch.long))
    assert not torch.equal(s.forward(b), s.forward(b))


def test_kl_is_zero_on_the_first_task_then_hand_computed_and_pulls_toward_the_prior():
    model = build_model("mlp", (1, 2, 1), 2, "domain", hidden=[1])
    s = BinaryField(bfield_kl_weight=2.0).setup(model, "cpu", 0)
    s.n_train_ = 4
    assert s.penalty(None, None) == 0.0  # no prior yet
    s.after_experience(None)
    assert s.penalty(None, None).item() == pytest.approx(0.0, abs=1e-6)  # the fields are their own prior
    old = {k: v.detach().clone() for k, v in s.fields().items()}
    with torch.no_grad():
        for h in s.fields().values():
            h.add_(0.5)

    def kl_by_hand(h, h0):  # sum over w = +-1 of q(w) log q(w) / p(w), q(w) = e^{hw} / 2cosh h
        return sum(math.exp(h * w) / (2 * math.cosh(h)) * (
            h * w - math.log(2 * math.cosh(h)) - h0 * w + math.log(2 * math.cosh(h0))) for w in (1, -1))

    want = sum(kl_by_hand(h, h0) for k in old for h, h0 in zip(s.fields()[k].flatten().tolist(),
                                                                old[k].flatten().tolist()))
    assert s.penalty(None, None).item() == pytest.approx(2.0 * want / 4, rel=1e-5)
    assert field_kl(torch.tensor([0.3]), torch.tensor([-1.2])).item() == pytest.approx(kl_by_hand(0.3, -1.2), rel=1e-6)
    # its gradient is (h - h')(1 - m^2): one step moves every field back toward the prior
    s.penalty(None, None).backward()
    for k, h in s.fields().items():
        assert torch.allclose(h.grad, 2.0 / 4 * 0.5 * (1 - torch.tanh(h.detach()) ** 2), atol=1e-6)
        before = (h.detach() - old[k]).abs()
        assert torch.all((h.detach() - 0.1 * h.grad - old[k]).abs() < before)


def test_teacher_student_the_prior_keeps_the_first_teacher():
    import binary_teacher_student as ts

    with_prior = ts.sequence(n=200, alpha=2.0, tasks=2, rho=0.0, lam=1.0, seed=0, steps=100, lr=0.05)
    without = ts.sequence(n=200, alpha=2.0, tasks=2, rho=0.0, lam=0.0, seed=0, steps=100, lr=0.05)
    assert with_prior[0, 0] > 0.9  # task 1 learnt (same run up to there)
    assert torch.equal(with_prior[0], without[0])
    # after task 2: the overlap with teacher 1 is kept far better with the prior ...
    # (measured, seeds 0 / 1 / 2: 0.92 / 0.69 / 0.90 with the prior, 0.67 / 0.23 / 0.70 without) ...
    assert with_prior[1, 0] > without[1, 0] + 0.15
    # ... at a cost on the new task: the student moves toward teacher 2, less than without the prior
    assert with_prior[0, 1] < with_prior[1, 1] < without[1, 1]


def test_teacher_student_script_runs(capsys):
    import binary_teacher_student as ts

    out = ts.main(["--n", "60", "--alpha", "1", "--tasks", "2", "--steps", "5", "--seeds", "0-1"])
    assert set(out) == {"prior", "no prior"} and len(out["prior"]) == 2
    assert "generalisation error on teacher j" in capsys.readouterr().out


def _split_digits(kl, seed=0):
    stream, model = _model("task", hidden=(64,))
    s = BinaryField(bfield_kl_weight=kl).setup(model, "cpu", seed)
    res = train(stream, s, lambda p: torch.optim.Adam(p, lr=0.02), batch_size=32, iterations=200, seed=seed)
    return res.accuracy_matrix[-1]


def test_the_prior_beats_binary_fine_tuning_on_split_digits_task_il():
    # measured (seeds 0, 1, 2), final average: 0.969 / 0.972 / 0.975 with the prior (weight 0.1)
    # against 0.961 / 0.958 / 0.969 for fine-tuning the fields (weight 0); first task at the end:
    # 0.99 / 0.99 / 0.99 against 0.94 / 0.90 / 0.94
    prior, finetune = _split_digits(0.1), _split_digits(0.0)
    assert sum(prior) / 5 > sum(finetune) / 5 + 0.005
    assert prior[0] > finetune[0] + 0.03


@pytest.mark.parametrize("key, value", [("bfield_kl_weight", -0.1), ("bfield_kl_weight", math.inf),
                                        ("bfield_predict", "median")])
def test_bad_values_are_refused(key, value):
    with pytest.raises(ConfigError, match=f"strategy.{key}"):
        validate_strategy_params(StrategyConfig(name="binary_field", **{key: value}))


@pytest.mark.parametrize("name, kw", [("cnn", {}), ("mlp", {"norm": "batch"})])
def test_models_other_than_the_plain_mlp_are_refused(name, kw):
    shape = (1, 28, 28) if name == "cnn" else (1, 8, 8)
    model = build_model(name, shape, 10, "class", **kw)
    with pytest.raises(ConfigError, match="binary_field' trains binary weights of the MLP model only"):
        BinaryField().setup(model, "cpu", 0)
    assert isinstance(model, nn.Module)


@pytest.mark.parametrize("strategy", ["binary_field", "binary_field+ewc"])
def test_train_compile_is_refused_before_any_data_loads(strategy, monkeypatch):
    # its layers' forward is swapped every step: a compiled backbone would recompile each time
    from lifelong import runner

    monkeypatch.setattr(runner, "build_benchmark", lambda *a: pytest.fail("data loaded before the refusal"))
    cfg = {"benchmark": {"name": "split-digits", "scenario": "task"}, "strategy": {"name": strategy},
           "train": {"compile": "eager", "iterations": 2}}
    with pytest.raises(ConfigError, match="cannot run with train.compile: it swaps every linear layer's forward"):
        runner.run(cfg)


def test_a_sweep_refuses_train_compile_before_its_first_run(tmp_path, capsys):
    # finetune would run first: the refusal comes from the check every run of a sweep passes before any starts
    from lifelong.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run", "--benchmark", "split-digits", "--strategy", "finetune,binary_field", "--iterations", "2",
              "--set", "train.compile=eager", "--quiet", "--out", str(tmp_path / "s")])
    err = " ".join(capsys.readouterr().err.split())
    assert e.value.code == 2 and "strategy 'binary_field' cannot run with train.compile" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()
