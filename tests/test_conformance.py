"""The conformance suite every strategy must pass (like scikit-learn's check_estimator).

A new method inherits these tests by being registered: deterministic under a seed, its
learned state saves and restores exactly, it runs on every scenario it declares, and it
never mutates the caller's data.
"""
import copy
import io

import pytest
import torch

from lifelong.data import digits
from lifelong.models import build_model
from lifelong.strategies import STRATEGIES
from lifelong.streams import split_stream
from lifelong.training import evaluate, train

NAMES = sorted(STRATEGIES)


def _stream(scenario):
    return split_stream(digits(), scenario=scenario, n_experiences=5, seed=0)


def _fit(name, scenario, seed=0, stream=None):
    stream = stream or _stream(scenario)
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.n_classes, scenario, hidden=[32])
    strategy = _small(STRATEGIES[name]()).setup(model, "cpu", seed)
    res = train(stream, strategy, lambda p: torch.optim.Adam(p, lr=1e-2), batch_size=16, iterations=8, seed=seed)
    return strategy, res, stream


def _small(strategy):
    """Shrink memory-hungry defaults so the suite stays fast (same code paths)."""
    for attr, value in (("mem_size", 40), ("mem_per_class", None), ("ewc_fisher_samples", 64),
                        ("acil_buffer_size", 256), ("gacil_buffer_size", 256)):
        if hasattr(strategy, attr):
            setattr(strategy, attr, value)
    return strategy


def _cases():
    for n in NAMES:
        for sc in STRATEGIES[n].scenarios:
            yield n, sc


@pytest.mark.parametrize("name, scenario", list(_cases()))
def test_runs_on_every_declared_scenario_and_is_deterministic(name, scenario):
    _, a, _ = _fit(name, scenario)
    _, b, _ = _fit(name, scenario)
    assert len(a.accuracy_matrix) == 5
    assert a.accuracy_matrix == b.accuracy_matrix
    assert a.losses == b.losses
    assert all(l == l for l in a.losses), "NaN loss"  # noqa: E741


@pytest.mark.parametrize("name", NAMES)
def test_state_saves_and_restores_exactly(name):
    scenario = STRATEGIES[name].scenarios[0]
    strategy, _, stream = _fit(name, scenario)
    buf = io.BytesIO()
    torch.save({"model": strategy.model.state_dict(), "extra": strategy.extra_state()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    torch.manual_seed(123)
    model = build_model("mlp", stream.input_shape, stream.n_classes, scenario, hidden=[32])
    for e in stream:  # heads learn which classes exist as experiences arrive
        model.observe(e.classes, e.task_id)
    model.load_state_dict(state["model"])
    fresh = _small(STRATEGIES[name]()).setup(model, "cpu", 0)
    fresh.load_extra_state(state["extra"])
    assert evaluate(fresh, stream.experiences) == evaluate(strategy, stream.experiences)
    x = stream[0].test.x[:20]
    assert torch.equal(fresh.predict(x), strategy.predict(x))


@pytest.mark.parametrize("name", NAMES)
def test_never_mutates_the_callers_data(name):
    scenario = STRATEGIES[name].scenarios[0]
    stream = _stream(scenario)
    before = copy.deepcopy([(e.train.x.clone(), e.train.y.clone(), e.test.x.clone(), e.test.y.clone())
                            for e in stream])
    _fit(name, scenario, stream=stream)
    for e, (xt, yt, xe, ye) in zip(stream, before):
        assert torch.equal(e.train.x, xt) and torch.equal(e.train.y, yt)
        assert torch.equal(e.test.x, xe) and torch.equal(e.test.y, ye)


@pytest.mark.parametrize("name", NAMES)
def test_constructor_only_stores_parameters(name):
    cls = STRATEGIES[name]
    s = cls()
    assert s.model is None
    params = s.get_params()
    assert set(params) == set(cls.get_param_names())
    assert type(s)(**params).get_params() == params
    assert cls.__doc__ or __import__(cls.__module__).__doc__


@pytest.mark.parametrize("name", NAMES)
def test_declares_paper_and_scenarios(name):
    cls = STRATEGIES[name]
    assert cls.paper, f"{name} must say which paper it implements"
    assert set(cls.scenarios) <= {"class", "task", "domain"} and cls.scenarios
    import sys

    assert sys.modules[cls.__module__].__doc__, f"{name}'s file needs a module docstring"
