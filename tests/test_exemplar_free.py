"""Exemplar-free methods on frozen features (issue 6): NCM, FeTrIL, ACIL, G-ACIL.

What the papers claim, checked where it is cheap: on frozen features (Split digits, the raw
64 pixels as "pretrained features": ``model: mlp, hidden: []``) the prototype and analytic
classifiers beat fine-tuning of a linear head by a wide margin in class-IL, FeTrIL beats it too;
the analytic classifiers are weight-invariant -- the incremental solution equals joint ridge
regression on all data, for any number and size of phases and (G-ACIL) any class overlap.
Plus: closed-form methods take no gradient step, base training freezes the backbone after the
first experience, state survives a checkpoint mid-stream, bad input gives one clear error.
"""
import functools
import io

import pytest
import torch
import torch.nn.functional as F

from lifelong.data import digits
from lifelong.errors import ConfigError
from lifelong.models import build_model
from lifelong.runner import run
from lifelong.strategies import STRATEGIES
from lifelong.strategies._analytic import RecursiveRidge, joint_ridge
from lifelong.strategies.acil import ACIL
from lifelong.strategies.fetril import FeTrIL
from lifelong.strategies.gacil import GACIL
from lifelong.strategies.ncm import NCM
from lifelong.streams import Experience, Split, Stream, split_stream
from lifelong.training import train

FAST = {"acil": {"acil_buffer_size": 512}, "gacil": {"gacil_buffer_size": 512}}


@functools.lru_cache(maxsize=None)
def _digits():
    return digits()


def _split(scenario="class", n=5):
    return split_stream(_digits(), scenario=scenario, n_experiences=n, seed=0)


def _phased(groups, test_groups=None) -> Stream:
    """A class-IL stream over digits whose experience i holds the classes ``groups[i]``. A class in
    several groups (blurry stream) has its training samples dealt round-robin over them."""
    data = _digits()
    x, y = data.train.to_float(), data.train.y
    parts: list[list[torch.Tensor]] = [[] for _ in groups]
    for c in range(10):
        where = [i for i, g in enumerate(groups) if c in g]
        idx = torch.nonzero(y == c).flatten()
        for k, i in enumerate(where):
            parts[i].append(idx[k::len(where)])
    xt, yt = data.test.to_float(), data.test.y
    exps = []
    for i, g in enumerate(groups):
        idx = torch.cat(parts[i]) if parts[i] else torch.zeros(0, dtype=torch.long)
        te = torch.isin(yt, torch.tensor(sorted(g)))
        exps.append(Experience(i, i, sorted(g), Split(x[idx], y[idx]), Split(x[:0], y[:0]), Split(xt[te], yt[te])))
    return Stream("phased-digits", "class", exps, 10, tuple(data.train.input_shape))


def _fit(name, stream, hidden=(), seed=0, epochs=3, monitor=None, **kw):
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.n_classes, stream.scenario, hidden=list(hidden))
    strategy = STRATEGIES[name](**{**FAST.get(name, {}), **kw}).setup(model, "cpu", seed)
    res = train(stream, strategy, lambda p: torch.optim.Adam(p, lr=1e-2), batch_size=32, epochs=epochs, seed=seed,
                monitor=monitor)
    return strategy, res


def _final(res):
    return sum(res.accuracy_matrix[-1]) / len(res.accuracy_matrix[-1])


# -- the papers' claims on frozen features -------------------------------------------------------
def test_class_il_on_frozen_features_prototypes_and_analytic_beat_finetuning_widely():
    stream = _split("class")
    runs = {"finetune": ("finetune", {}), "ncm": ("ncm", {}), "acil": ("acil", {}), "gacil": ("gacil", {}),
            "fetril": ("fetril", {}), "fetril-linear": ("fetril", {"fetril_classifier": "linear"})}
    acc = {key: _final(_fit(name, stream, **kw)[1]) for key, (name, kw) in runs.items()}
    assert acc["finetune"] < 0.3, acc  # a linear head forgets every earlier experience (about 1/5 left)
    for key in ("ncm", "acil", "gacil"):
        assert acc[key] > acc["finetune"] + 0.5, acc
    for key in ("fetril", "fetril-linear"):
        assert acc[key] > acc["finetune"] + 0.4, acc


def test_closed_form_methods_take_no_gradient_step():
    stream = _split("class")
    for name in ("ncm", "acil", "gacil", "fetril"):
        strategy, res = _fit(name, stream)
        head = {k: v.clone() for k, v in strategy.model.head.state_dict().items()}
        assert res.boundaries == [1, 2, 3, 4, 5] and res.losses == [0.0] * 5, name  # one closed-form update each
        torch.manual_seed(0)
        fresh = build_model("mlp", stream.input_shape, stream.n_classes, "class", hidden=[])
        assert torch.equal(head["linear.weight"], fresh.head.linear.weight), name


# -- weight invariance: incremental == joint -----------------------------------------------------
def _blocks(n, n_phases, g):
    cuts = sorted(torch.randperm(n - 1, generator=g)[:n_phases - 1].add(1).tolist())
    return list(zip([0] + cuts, cuts + [n]))


@pytest.mark.parametrize("n_phases", [1, 2, 5, 10])
def test_recursive_ridge_equals_the_joint_solution_for_any_phases(n_phases):
    g = torch.Generator().manual_seed(n_phases)
    n, d, c, gamma = 700, 96, 10, 0.1
    y = torch.sort(torch.randint(0, c, (n,), generator=g)).values  # class-IL order: labels arrive in turn
    X = torch.randn(n, d, generator=g, dtype=torch.float64) + torch.randn(c, d, generator=g, dtype=torch.float64)[y]
    X = F.relu(X)
    Y = F.one_hot(y, c).double()
    ridge = RecursiveRidge(d, gamma)
    for a, b in _blocks(n, n_phases, g):  # random phase sizes; columns appended as labels appear
        ridge.update(X[a:b], Y[a:b, :int(y[a:b].max()) + 1])
    assert ridge.W.shape == (d, c)
    W = joint_ridge(X, Y, gamma)
    assert (ridge.W - W).abs().max() < 1e-9 * W.abs().max()
    A = X.T @ X + gamma * torch.eye(d, dtype=torch.float64)
    assert (ridge.R - torch.linalg.inv(A)).abs().max() < 1e-9 * ridge.R.abs().max()
    wrong = RecursiveRidge(d, gamma)
    wrong.update(X[::2], Y[::2])  # half the data: visibly different (the check has teeth)
    assert (wrong.W - W).abs().max() > 1e-3 * W.abs().max()


def _joint_for(strategy, stream):
    x = torch.cat([e.train.x for e in stream])
    y = torch.cat([e.train.y for e in stream])
    X = strategy.expand(strategy.features(x))
    return joint_ridge(X, F.one_hot(y, stream.n_classes).double(), float(strategy._p("gamma")))


@pytest.mark.parametrize("name", ["acil", "gacil"])
def test_analytic_strategies_give_the_joint_classifier_for_1_2_5_10_and_uneven_phases(name):
    streams = [_split("class", n) for n in (1, 2, 5, 10)] + [_phased([[3, 7, 0], [5], [1, 2, 4, 8, 9, 6]])]
    first, preds = None, []
    x_test = _digits().test.to_float()
    for stream in streams:
        strategy, _ = _fit(name, stream)
        W = strategy.ridge_.W
        joint = _joint_for(strategy, stream)
        assert (W - joint).abs().max() < 1e-9 * joint.abs().max(), len(stream)
        first = W if first is None else first
        assert (W - first).abs().max() < 1e-9 * first.abs().max()
        preds.append(strategy.predict(x_test).argmax(1))
    assert all(torch.equal(p, preds[0]) for p in preds)  # identical results whatever the phases


BLURRY = [[0, 1, 2], [2, 3], [1, 4, 5], [0, 6, 7, 2], [8, 9, 3]]  # 0: phases 1 and 4; 6-9 appear mid-stream


def test_gacil_is_weight_invariant_on_a_blurry_stream_and_acil_refuses_it():
    stream = _phased(BLURRY)
    strategy, res = _fit("gacil", stream)
    joint = _joint_for(strategy, stream)
    assert (strategy.ridge_.W - joint).abs().max() < 1e-9 * joint.abs().max()
    merged, _ = _fit("gacil", _phased([sorted(set(BLURRY[0] + BLURRY[1] + BLURRY[2])),
                                       sorted(set(BLURRY[3] + BLURRY[4]))]))
    assert (merged.ridge_.W - joint).abs().max() < 1e-9 * joint.abs().max()
    assert _final(res) > 0.85
    with pytest.raises(ConfigError, match=r"class\(es\) \[2\] seen before.*gacil"):
        _fit("acil", stream)


def test_gacil_domain_il_equals_the_joint_solution():
    stream = _split("domain")
    strategy, res = _fit("gacil", stream)
    joint = _joint_for(strategy, stream)
    assert (strategy.ridge_.W - joint).abs().max() < 1e-9 * joint.abs().max()
    _, ft = _fit("finetune", stream)
    assert _final(res) > _final(ft) + 0.1


# -- NCM -------------------------------------------------------------------------------------------
def _first(stream, k):
    return Stream(stream.name, stream.scenario, stream.experiences[:k], stream.n_classes, stream.input_shape)


def test_ncm_prototypes_are_class_means_and_unseen_classes_score_minus_inf():
    stream = _split("class")
    ncm, _ = _fit("ncm", _first(stream, 2))
    xs, ys = torch.cat([e.train.x for e in stream[:2]]), torch.cat([e.train.y for e in stream[:2]])
    for c in range(4):  # the paper: the mean of the L2-normalised features, not renormalised
        assert torch.allclose(ncm.prototypes()[c], F.normalize(xs[ys == c].flatten(1).double(), dim=1).mean(0))
    x = stream[0].test.x[:50]
    scores = ncm.predict(x)
    assert torch.isinf(scores[:, 4:]).all() and torch.isfinite(scores[:, :4]).all()
    f = F.normalize(x.flatten(1).double(), dim=1)
    assert torch.equal(scores.argmax(1), torch.cdist(f, ncm.prototypes()[:4]).argmin(1))
    task1 = ncm.predict(x, torch.ones(len(x), dtype=torch.long))  # task-IL: only task 1's classes compete
    assert torch.isinf(task1[:, :2]).all() and task1.argmax(1).ge(2).all()
    cos, _ = _fit("ncm", _first(stream, 1), ncm_distance="cosine", ncm_normalize=False)  # SimpleCIL
    e = stream[0]
    mu = torch.stack([e.train.x[e.train.y == c].flatten(1).double().mean(0) for c in (0, 1)])
    expect = F.normalize(x.flatten(1).double(), dim=1) @ F.normalize(mu, dim=1).T
    assert torch.allclose(cos.predict(x)[:, :2], expect.float())


def test_ncm_in_domain_il_keeps_the_mean_over_all_experiences():
    stream = _split("domain")
    ncm, _ = _fit("ncm", stream)
    for label in (0, 1):
        f = torch.cat([F.normalize(e.train.x[e.train.y == label].flatten(1).double(), dim=1) for e in stream])
        assert torch.allclose(ncm.prototypes()[label], f.mean(0))


# -- FeTrIL ----------------------------------------------------------------------------------------
def test_fetril_translates_the_nearest_new_class_onto_each_past_centroid():
    stream = _split("class")
    model = build_model("mlp", stream.input_shape, 10, "class", hidden=[])
    fetril = FeTrIL().setup(model)
    for e in stream.experiences[:2]:
        model.observe(e.classes, e.task_id)
        fetril.before_experience(e)
        fetril.after_experience(e)
    e = stream[2]
    fetril.before_experience(e)
    data = fetril.training_set(e)
    f, y = e.train.x.flatten(1).double(), e.train.y
    new_means = {c: f[y == c].mean(0) for c in e.classes}
    for past in range(4):
        mu = fetril.sums_[past] / fetril.counts_[past]
        pseudo = data.x[data.y == past].double()
        src = min(e.classes, key=lambda c: float((new_means[c] - mu).norm()))
        assert len(pseudo) == int((y == src).sum())
        assert torch.allclose(pseudo, f[y == src] - new_means[src] + mu, atol=1e-5)  # f_n - mu_n + mu_c
        assert torch.allclose(pseudo.mean(0), mu, atol=1e-5)
    for c in e.classes:
        assert torch.equal(data.x[data.y == c], e.train.x[e.train.y == c].flatten(1))  # real features kept


def test_fetril_linear_head_trains_only_the_head_after_the_base_phase():
    stream = _split("class")
    torch.manual_seed(0)
    model = build_model("mlp", stream.input_shape, 10, "class", hidden=[32])
    init = {k: v.clone() for k, v in model.state_dict().items()}
    snaps = []

    class Snap:  # a monitor: the model's parameters at the end of every experience
        def start(self, exp, n):
            pass

        def step(self, it, loss, latest):
            pass

        def end(self, exp, result):
            snaps.append({k: v.clone() for k, v in model.state_dict().items()})

    fetril = FeTrIL(fetril_classifier="linear").setup(model, "cpu", 0)
    res = train(stream, fetril, lambda p: torch.optim.Adam(p, lr=1e-2), batch_size=32, epochs=3, monitor=Snap())
    back = [k for k in init if k.startswith("backbone")]
    assert all(not torch.equal(snaps[0][k], init[k]) for k in back)      # base phase trains the backbone
    assert all(torch.equal(s[k], snaps[0][k]) for s in snaps for k in back)  # then it is frozen
    assert not torch.equal(snaps[-1]["head.linear.weight"], snaps[0]["head.linear.weight"])
    assert all(n > 0 for n in res.boundaries)
    _, ft = _fit("finetune", stream, hidden=(32,))
    assert _final(res) > _final(ft) + 0.3


@pytest.mark.parametrize("name, kw, trains", [("acil", {}, True), ("ncm", {}, False),
                                              ("ncm", {"ncm_base_training": True}, True),
                                              ("acil", {"acil_base_training": False}, False)])
def test_base_training_happens_on_the_first_experience_only(name, kw, trains):
    stream = _split("class")
    torch.manual_seed(0)
    model = build_model("mlp", stream.input_shape, 10, "class", hidden=[16])
    init = model.backbone.net[1].weight.detach().clone()
    strategy = STRATEGIES[name](**{**FAST.get(name, {}), **kw}).setup(model, "cpu", 0)
    res = train(stream, strategy, lambda p: torch.optim.Adam(p, lr=1e-2), batch_size=32, iterations=20)
    assert res.boundaries == ([20, 21, 22, 23, 24] if trains else [1, 2, 3, 4, 5])  # a closed-form fit: one update
    assert torch.equal(model.backbone.net[1].weight, init) != trains
    assert not any(p.requires_grad for p in model.backbone.parameters())


# -- state: a checkpoint mid-stream continues exactly ---------------------------------------------
@pytest.mark.parametrize("name", ["ncm", "acil", "gacil", "fetril"])
def test_checkpoint_mid_stream_resumes_exactly(name):
    stream = _phased(BLURRY) if name in ("ncm", "gacil") else _split("class")
    full, _ = _fit(name, stream, hidden=(16,))
    head = Stream(stream.name, stream.scenario, stream.experiences[:2], 10, stream.input_shape)
    tail = Stream(stream.name, stream.scenario, stream.experiences[2:], 10, stream.input_shape)
    first, _ = _fit(name, head, hidden=(16,))
    buf = io.BytesIO()
    torch.save({"model": first.model.state_dict(), "extra": first.extra_state()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    torch.manual_seed(99)
    model = build_model("mlp", stream.input_shape, 10, "class", hidden=[16])
    model.load_state_dict(state["model"])
    resumed = STRATEGIES[name](**FAST.get(name, {})).setup(model, "cpu", 0)
    resumed.load_extra_state(state["extra"])
    assert not any(p.requires_grad for p in model.backbone.parameters())  # still frozen
    train(tail, resumed, lambda p: torch.optim.Adam(p, lr=1e-2), batch_size=32, epochs=3)
    x = _digits().test.to_float()
    assert torch.equal(resumed.predict(x), full.predict(x))


# -- bad input: one clear error --------------------------------------------------------------------
@pytest.mark.parametrize("cls, kw, match", [
    (ACIL, {"acil_gamma": 0.0}, "acil_gamma.*> 0"),
    (ACIL, {"acil_gamma": -1.0}, "acil_gamma.*> 0"),
    (ACIL, {"acil_buffer_size": 0}, "acil_buffer_size.*>= 1"),
    (ACIL, {"acil_activation": "tanh"}, "acil_activation.*relu"),
    (GACIL, {"gacil_gamma": float("nan")}, "gacil_gamma"),
    (GACIL, {"gacil_buffer_size": -5}, "gacil_buffer_size"),
    (NCM, {"ncm_distance": "manhattan"}, "ncm_distance.*euclidean, cosine"),
    (FeTrIL, {"fetril_classifier": "forest"}, "fetril_classifier.*svm, linear"),
    (FeTrIL, {"fetril_svm_c": 0.0}, "fetril_svm_c"),
])
def test_bad_hyper_parameters_raise_one_clear_error(cls, kw, match):
    model = build_model("mlp", (4,), 3, "class", hidden=[])
    with pytest.raises(ConfigError, match=match):
        cls(**kw).setup(model)


def test_bad_use_through_a_config_raises_one_clear_error():
    small = {"benchmark": {"name": "split-digits"}, "model": {"hidden": []}, "train": {"iterations": 1}}
    with pytest.raises(ConfigError, match="supports scenarios .*'class', 'task'.*not 'domain'"):
        run({**small, "benchmark": {"name": "split-digits", "scenario": "domain"}, "strategy": {"name": "acil"}})
    with pytest.raises(ConfigError, match="acil_gamma"):
        run({**small, "strategy": {"name": "acil", "acil_gamma": 0}})
    with pytest.raises(ConfigError, match="gamma must be > 0"):
        RecursiveRidge(3, 0.0)
    res = run({**small, "strategy": {"name": "gacil", "gacil_buffer_size": 128}})  # and a good one runs
    assert res["average_accuracy"] > 0.8 and res["train_loss"] == [0.0] * 5


def test_parameter_names_do_not_clash_with_other_methods():
    mine = {n: set(STRATEGIES[n].get_param_names()) for n in ("ncm", "fetril", "acil", "gacil")}
    for name, cls in STRATEGIES.items():
        for m, params in mine.items():
            if name != m:
                assert not params & set(cls.get_param_names()), (m, name)


def test_gacil_on_the_library_blurry_stream_is_joint_and_acil_refuses_it():
    streams = pytest.importorskip("lifelong.streams")
    if not hasattr(streams, "blurry_stream"):
        pytest.skip("no blurry_stream builder")
    stream = streams.blurry_stream(_digits(), n_experiences=5, blurry=0.1, seed=0)
    assert any(set(a.classes) & set(b.classes) for i, a in enumerate(stream) for b in stream[i + 1:])
    strategy, res = _fit("gacil", stream)
    joint = _joint_for(strategy, stream)
    assert (strategy.ridge_.W - joint).abs().max() < 1e-9 * joint.abs().max()
    assert _final(res) > 0.85
    with pytest.raises(ConfigError, match="seen before.*gacil"):
        _fit("acil", stream)


def test_fetril_refuses_a_task_il_stream_whose_tasks_share_classes():
    """FeTrIL labels a class's pseudo-features with that class's one task; on Permuted MNIST in
    task-IL (every task has the ten digits) it used to put every class in the latest task and
    score earlier tasks at chance. Refused before training, naming the class and the tasks."""
    from lifelong.runner import check_task_disjoint
    from lifelong.strategies import Compose
    from lifelong.streams import permuted_stream

    shared = permuted_stream(digits(), n_experiences=2, scenario="task", seed=0)
    with pytest.raises(ConfigError, match="strategy 'fetril' needs each class in one task in task-IL, but "
                                          "benchmark '.*' has class 0 in tasks 0 and 1"):
        check_task_disjoint(STRATEGIES["fetril"](), shared)
    for name in ("sharp", "ncm", "prd"):  # state keyed by class too
        with pytest.raises(ConfigError, match=f"strategy '{name}' needs each class in one task"):
            check_task_disjoint(STRATEGIES[name](), shared)
    check_task_disjoint(STRATEGIES["finetune"](), shared)  # the others predict per task: allowed
    check_task_disjoint(STRATEGIES["fetril"](), split_stream(digits(), scenario="task", n_experiences=5, seed=0))
    check_task_disjoint(STRATEGIES["fetril"](), permuted_stream(digits(), n_experiences=2, scenario="class", seed=0))
    assert Compose(STRATEGIES["fetril"]()).task_disjoint_classes and not Compose(STRATEGIES["er"]()).task_disjoint_classes
    with pytest.raises(ConfigError, match="has class 0 in tasks 0 and 1"):
        run({"benchmark": {"name": "permuted-mnist", "scenario": "task", "n_experiences": 2},
             "strategy": {"name": "fetril"}, "train": {"iterations": 1}})
