"""Bayesian continual learning: VCL (variational, weight posteriors) and ProtoCL (conjugate
class prototypes). Hand-computed KL and conjugate updates, the prior handed on as a copy, and
what each paper claims on split digits: VCL forgets less than fine-tuning in task-IL, ProtoCL
beats fine-tuning in class-IL."""
import math

import pytest
import torch
from torch import nn

from lifelong.config import StrategyConfig, validate_strategy_params
from lifelong.data import digits
from lifelong.errors import ConfigError
from lifelong.models import ContinualModel, Head, build_model
from lifelong.strategies import Strategy
from lifelong.strategies.base import Batch
from lifelong.strategies.protocl import ProtoCL, posterior_update, predictive_log_prob
from lifelong.strategies.vcl import VCL, gaussian_kl, kcenter
from lifelong.streams import split_stream
from lifelong.training import train

torch.set_num_threads(1)


def _run(strategy, scenario, seed=0, iterations=100, lr=1e-2, hidden=(64,)):
    stream = split_stream(digits(), scenario=scenario, n_experiences=5, seed=seed)
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.n_classes, scenario, hidden=list(hidden))
    strategy.setup(model, "cpu", seed)
    return train(stream, strategy, lambda p: torch.optim.Adam(p, lr=lr), batch_size=32, iterations=iterations,
                 seed=seed)


# ------------------------------------------------------------------------------------------ VCL
def test_gaussian_kl_equals_the_hand_computed_value():
    # KL(N(0.5, 0.25) || N(0, 1)) = 0.5 * (log(1/0.25) + (0.25 + 0.25) / 1 - 1)
    mu, lv = torch.tensor([0.5]), torch.tensor([math.log(0.25)])
    assert gaussian_kl(mu, lv, torch.zeros(1), torch.zeros(1)).item() == pytest.approx(
        0.5 * (math.log(4) + 0.5 - 1), abs=1e-6)
    # KL(N(1, 1) || N(-1, 4)) = log 2 + (1 + 4) / 8 - 0.5; summed over elements
    two = gaussian_kl(torch.tensor([0.5, 1.0]), torch.tensor([math.log(0.25), 0.0]),
                      torch.tensor([0.0, -1.0]), torch.tensor([0.0, math.log(4.0)]))
    assert two.item() == pytest.approx(0.5 * (math.log(4) + 0.5 - 1) + math.log(2) + 5 / 8 - 0.5, abs=1e-6)


def test_the_penalty_is_the_kl_to_the_prior_over_the_training_size():
    model = ContinualModel(nn.Sequential(nn.Linear(2, 2)), Head(2, 2))
    s = VCL().setup(model, "cpu", 0)
    s.n_train_, s.tasks_seen_ = 50, 1  # past the maximum-likelihood start
    prior_mu, prior_lv = {}, {}
    with torch.no_grad():
        for n, p in model.named_parameters():
            k = n.replace(".", "/")
            s.logvar_[k].fill_(-2.0)
            prior_mu[k], prior_lv[k] = torch.randn_like(p), torch.full_like(p, -1.0)
    s.prior_ = {k: (prior_mu[k], prior_lv[k]) for k in prior_mu}
    want = 0.0
    for n, p in model.named_parameters():
        k = n.replace(".", "/")
        q = torch.distributions.Normal(p.detach(), math.exp(-1.0))
        r = torch.distributions.Normal(prior_mu[k], math.exp(-0.5))
        want += torch.distributions.kl_divergence(q, r).sum().item()
    assert s.penalty(None, None).item() == pytest.approx(want / 50, rel=1e-5)


def test_the_prior_after_a_task_is_a_copy_of_its_posterior():
    stream = split_stream(digits(), scenario="task", n_experiences=5, seed=0)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "task", hidden=[16])
    s = VCL(vcl_samples=2, vcl_train_samples=1).setup(model, "cpu", 0)
    # one experience by hand, as the loop runs it
    opt = torch.optim.Adam(s.param_groups()[0]["params"], lr=1e-2)
    exp = stream[0]
    model.observe(exp.classes, exp.task_id)
    s.before_experience(exp)
    data = s.train_data(exp)
    s.context.n_iterations = 4
    for it in range(4):
        s.context.iteration = it
        b = Batch(data.x[:32], data.y[:32], torch.zeros(32, dtype=torch.long))
        logits = s.forward(b)
        loss = s.loss(logits, b) + s.penalty(logits, b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        s.after_step(b, logits)
    s.after_experience(exp)
    for n, p in model.named_parameters():
        mu, lv = s.prior_[n.replace(".", "/")]
        assert torch.equal(mu, p.detach()) and torch.equal(lv, s.logvar_[n.replace(".", "/")].detach())
        assert mu.data_ptr() != p.data_ptr() and lv.data_ptr() != s.logvar_[n.replace(".", "/")].data_ptr()
    before = {k: (m.clone(), v.clone()) for k, (m, v) in s.prior_.items()}
    with torch.no_grad():  # training goes on: the prior stays
        for p in list(model.parameters()) + list(s.logvar_.values()):
            p.add_(1.0)
    assert all(torch.equal(before[k][0], s.prior_[k][0]) and torch.equal(before[k][1], s.prior_[k][1])
               for k in before)


def test_kcenter_is_farthest_first_and_the_coreset_is_left_out_of_training():
    x = torch.tensor([[0.0], [1.0], [10.0], [4.0], [6.0]])
    assert kcenter(x, 3).tolist() == [0, 2, 3]  # 0, the farthest (10), then 4 (distance 4, tied with 6: the first)
    stream = split_stream(digits(), scenario="task", n_experiences=5, seed=0)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "task", hidden=[16])
    s = VCL(vcl_coreset_size=7).setup(model, "cpu", 0)
    model.observe(stream[0].classes, 0)
    s.before_experience(stream[0])
    assert len(s.train_data(stream[0])) == len(stream[0].train) - 7 and len(s.coreset_[0][1]) == 7


def test_vcl_forgets_less_than_finetuning_in_task_il():
    """At a rate where fine-tuning forgets (BWT -0.11 / -0.14 / -0.11 on seeds 0-2; VCL -0.02 /
    +0.01 / -0.06), VCL keeps the first task. Its average accuracy is lower on digits (0.76
    against 0.90): with ~230 samples a task the KL term (scaled by 1/N) holds the shared layers
    near the first posterior and later tasks are learnt less well (docs/bayesian.md)."""
    kw = dict(vcl_samples=10, vcl_train_samples=2)
    vcl = _run(VCL(**kw), "task", hidden=(100, 100))
    ft = _run(Strategy(), "task", hidden=(100, 100))
    assert vcl.metrics()["bwt"] > ft.metrics()["bwt"] + 0.05, (vcl.metrics(), ft.metrics())
    first = [r.accuracy_matrix[-1][0] - r.accuracy_matrix[0][0] for r in (vcl, ft)]
    assert first[0] > -0.05 and first[1] < -0.1, first


# -------------------------------------------------------------------------------------- ProtoCL
def test_the_conjugate_update_equals_the_closed_form_on_a_1d_toy():
    g = torch.Generator().manual_seed(0)
    phi = torch.randn(40, 1, generator=g) * 0.3 + 2.0
    y = torch.zeros(40, dtype=torch.long)
    lam0, sig = 2.0, 0.05
    q, prec, alpha = torch.zeros(1, 1), torch.full((1,), lam0), torch.full((1,), 3.0)
    for i in range(0, 40, 8):  # batch by batch
        q, prec, alpha = posterior_update(q, prec, alpha, phi[i:i + 8], y[i:i + 8], sig)
    lam_n = lam0 + 40 / sig  # closed form: precisions add, the mean is precision-weighted
    mu_n = (lam0 * 0.0 + phi.sum() / sig) / lam_n
    assert prec.item() == pytest.approx(lam_n) and (q / prec).item() == pytest.approx(mu_n.item(), rel=1e-5)
    assert alpha.item() == 43.0
    # the posterior predictive N(phi; mu_n, 1/lam_n + sig), times the Dirichlet predictive (one class: 1)
    x = torch.tensor([[1.7], [2.4]])
    want = torch.distributions.Normal(mu_n, math.sqrt(1 / lam_n + sig)).log_prob(x)
    assert torch.allclose(predictive_log_prob(x, q, prec, alpha, sig), want, atol=1e-5)


def test_the_class_prior_is_the_dirichlet_predictive():
    q, prec = torch.zeros(2, 3), torch.ones(2)
    alpha = torch.tensor([3.0, 1.0])
    lp = predictive_log_prob(torch.zeros(1, 3), q, prec, alpha, 0.05)
    assert (lp[0, 0] - lp[0, 1]).item() == pytest.approx(math.log(3.0))


def test_protocl_beats_finetuning_in_class_il():
    proto = _run(ProtoCL(mem_size=100), "class", iterations=60).metrics()
    ft = _run(Strategy(), "class", iterations=60).metrics()
    assert proto["average_accuracy"] > ft["average_accuracy"] + 0.4, (proto, ft)


# -------------------------------------------------------------------------------------- values
@pytest.mark.parametrize("name, key, value", [
    ("vcl", "vcl_samples", 0), ("vcl", "vcl_prior_var", 0.0), ("vcl", "vcl_ml_init", 1.0),
    ("vcl", "vcl_coreset_size", -1), ("vcl", "vcl_coreset_method", "herding"), ("vcl", "vcl_init_logvar", 1.0),
    ("protocl", "protocl_sigma_eps", 0.0), ("protocl", "protocl_dim", 0), ("protocl", "protocl_prior_precision", -1.0),
    ("protocl", "mem_size", 0)])
def test_bad_values_are_refused(name, key, value):
    with pytest.raises(ConfigError, match=f"strategy.{key}"):
        validate_strategy_params(StrategyConfig(name=name, **{key: value}))


def test_vcl_reports_a_mean_and_a_log_variance_per_weight_as_trained():
    model = build_model("mlp", (1, 8, 8), 10, "task", hidden=[16])
    n = sum(p.numel() for p in model.parameters())
    assert VCL().setup(model, "cpu", 0).parameter_count() == {"trainable": 2 * n, "means": n, "log_variances": n}


def test_protocl_task_il_with_classes_shared_by_tasks():
    """Permuted MNIST in task-IL: every task has the ten digits. Each task's prediction uses its
    own classes, shared prototypes included; it used to keep one task per class (the latest), so
    every earlier task's predictions were masked out entirely: exactly chance (10 %)."""
    from lifelong.streams import permuted_stream

    stream = permuted_stream(digits(), n_experiences=3, scenario="task", seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "task", hidden=[64])
    strategy = ProtoCL(mem_size=300).setup(model, "cpu", 0)
    res = train(stream, strategy, lambda p: torch.optim.Adam(p, lr=1e-2), batch_size=32, iterations=100, seed=0)
    final = res.accuracy_matrix[-1]
    assert min(final) > 0.5, final  # the earlier tasks too, not chance
    # a task not seen yet has no classes: its predictions are all -inf, not another task's
    x = stream.experiences[0].test.x[:4]
    assert torch.isinf(strategy.predict(x, torch.full((4,), 7))).all()
    # the state round-trips, and a checkpoint of the one-task-per-class format still loads
    state = strategy.extra_state()
    old = dict(state, class_task=torch.tensor([0, 0, 1, 1, 2, 2, -1, -1, -1, -1]))
    del old["task_classes"]
    strategy.load_extra_state(old)
    assert strategy.task_classes_.tolist() == [[c in (0, 1) for c in range(10)], [c in (2, 3) for c in range(10)],
                                               [c in (4, 5) for c in range(10)]]
    strategy.load_extra_state(state)
    assert strategy.task_classes_.all()
