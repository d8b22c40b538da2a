"""The core's second edition: step context, batch indices, per-experience budgets, gradient
clipping, precision, compile, divergence, task-aware prediction, device placement, and the
composition contract (no silent winner)."""
import copy
import math

import pytest
import torch

from lifelong.data import digits
from lifelong.errors import ConfigError, DivergenceError
from lifelong.models import MultiHead, build_model
from lifelong.runner import build_strategy, run
from lifelong.config import parse_config
from lifelong.strategies import Compose, Strategy, get_strategy_class
from lifelong.strategies.er import ER
from lifelong.strategies.ewc import EWC
from lifelong.streams import split_stream
from lifelong.training import train

SMALL = {"benchmark": {"name": "split-digits"}, "train": {"iterations": 6, "batch_size": 16},
         "model": {"hidden": [16]}, "eval": {"every": None}}


def _stream(scenario="class", n=5):
    return split_stream(digits(), scenario=scenario, n_experiences=n, seed=0)


def _fit(strategy, scenario="class", **kw):
    stream = kw.pop("stream", None) or _stream(scenario)
    torch.manual_seed(0)
    model = build_model("mlp", stream.input_shape, stream.n_classes, scenario, hidden=[16])
    strategy.setup(model, "cpu", 0)
    kw.setdefault("iterations", 5)
    lr = kw.pop("lr", 0.05)
    return train(stream, strategy, lambda p: torch.optim.SGD(p, lr=lr), batch_size=16, **kw), stream


class Spy(Strategy):
    """Records what the hooks see."""

    name = "spy"

    def __init__(self):
        super().__init__()
        self.seen = []

    def after_step(self, batch, logits):
        c = self.context
        grads = [p.grad.flatten() for p in self.model.parameters() if p.grad is not None]
        self.seen.append({"step": c.step, "it": c.iteration, "n": c.n_iterations, "exp": c.experience.index,
                          "lr": c.lr, "opt": c.optimizer, "index": batch.index.clone(), "x": batch.x.clone(),
                          "grad_norm": float(torch.cat(grads).norm())})


# ---------------------------------------------------------------------------- step context
def test_hooks_read_the_optimizer_lr_global_step_and_experience():
    spy = Spy()
    res, stream = _fit(spy, iterations=4)
    assert [s["step"] for s in spy.seen] == list(range(len(spy.seen)))  # updates done before this one
    assert [s["exp"] for s in spy.seen] == [i for i in range(5) for _ in range(4)]
    assert [s["it"] for s in spy.seen] == [0, 1, 2, 3] * 5
    assert {s["n"] for s in spy.seen} == {4}
    assert {s["lr"] for s in spy.seen} == {0.05}
    assert all(isinstance(s["opt"], torch.optim.SGD) for s in spy.seen)
    assert spy.context.step == 20 and res.boundaries == [4, 8, 12, 16, 20]


def test_batch_carries_dataset_indices_and_replayed_samples_get_minus_one():
    spy = Spy()
    _, stream = _fit(spy, iterations=3)
    for s in spy.seen:
        data = stream[s["exp"]].train
        assert torch.equal(data.x[s["index"]], s["x"])
    er = ER(mem_size=30)
    comp = Compose(er, Spy())
    _fit(comp, iterations=3)
    last = comp.members[1].seen[-1]
    n_new = 16
    assert (last["index"][:n_new] >= 0).all() and (last["index"][n_new:] == -1).all()
    assert len(last["index"]) == 32  # ER added a replay batch of the same size


def test_per_experience_iteration_budgets():
    spy = Spy()
    res, _ = _fit(spy, iterations=[3, 5, 2, 1, 4])
    assert res.boundaries == [3, 8, 10, 11, 15]
    stream = _stream()
    stream.experiences[2].iterations = 7  # an experience's own budget wins
    spy = Spy()
    res, _ = _fit(spy, stream=stream, iterations=2)
    assert res.boundaries == [2, 4, 11, 13, 15]
    assert [s["n"] for s in spy.seen if s["exp"] == 2] == [7] * 7


def test_iteration_list_must_match_the_stream():
    cfg = copy.deepcopy(SMALL)
    cfg["train"]["iterations"] = [5, 5]
    with pytest.raises(ConfigError, match="2 budgets given for a stream of 5 experiences"):
        run(cfg)
    cfg["train"]["iterations"] = [5, 0, 5, 5, 5]
    with pytest.raises(ConfigError, match="train.iterations"):
        parse_config(cfg)


# ---------------------------------------------------------------------------- clipping, precision, compile
def test_gradient_clipping_bounds_the_update_norm():
    spy = Spy()
    _fit(spy, iterations=3, grad_clip_norm=0.01, lr=1.0)
    assert max(s["grad_norm"] for s in spy.seen) <= 0.01 + 1e-6
    free = Spy()
    _fit(free, iterations=3, lr=1.0)
    assert max(s["grad_norm"] for s in free.seen) > 0.05  # the clip really did something


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), "x"])
def test_bad_grad_clip_norm_is_refused(bad):
    cfg = copy.deepcopy(SMALL)
    cfg["train"]["grad_clip_norm"] = bad
    with pytest.raises(ConfigError, match="train.grad_clip_norm"):
        parse_config(cfg)


class GradSeen(Strategy):
    name = "gradseen"

    def __init__(self):
        super().__init__()
        self.norms = []

    def before_step(self, batch):
        self.norms.append(float(torch.cat([p.grad.flatten() for p in self.model.parameters()
                                           if p.grad is not None]).norm()))


def test_fp16_gradients_are_unscaled_before_before_step():
    ref, half = GradSeen(), GradSeen()
    _fit(ref, iterations=2)
    res, _ = _fit(half, iterations=2, precision="fp16")
    assert half.context.grad_scaler is not None and half.context.grad_scaler.get_scale() > 1
    # the scaler multiplies the loss by 2**16: unscaled gradients are of the same size as fp32's
    assert half.norms[0] == pytest.approx(ref.norms[0], rel=0.05)


def test_bf16_run_is_finite_and_close_to_fp32():
    cfg = copy.deepcopy(SMALL)
    cfg["train"]["iterations"] = 30
    a = run(cfg)
    cfg["train"]["precision"] = "bf16"
    b = run(cfg)
    assert b["config"]["train"]["precision"] == "bf16"
    assert abs(a["average_accuracy"] - b["average_accuracy"]) < 0.1


def test_bad_precision_is_refused():
    cfg = copy.deepcopy(SMALL)
    cfg["train"]["precision"] = "fp8"
    with pytest.raises(ConfigError, match="train.precision"):
        parse_config(cfg)


def test_compile_gives_the_same_numbers():
    cfg = copy.deepcopy(SMALL)
    a = run(cfg)
    cfg["train"]["compile"] = "eager"
    b = run(cfg)
    assert a["accuracy_matrix"] == b["accuracy_matrix"]
    cfg["train"]["compile"] = "tensorrt"
    with pytest.raises(ConfigError, match="train.compile"):
        parse_config(cfg)


def test_record_grad_norms():
    cfg = copy.deepcopy(SMALL)
    cfg["train"]["record_grad_norms"] = True
    res = run(cfg)
    assert len(res["grad_norms"]) == 30 and all(g > 0 for g in res["grad_norms"])


# ---------------------------------------------------------------------------- divergence
@pytest.mark.parametrize("strategy", ["finetune", "ewc", "er", "lwf"])
def test_a_diverging_run_stops_at_once_naming_the_likely_keys(strategy):
    cfg = copy.deepcopy(SMALL)
    cfg["train"].update(optimizer="sgd", lr=1e12, iterations=50)
    cfg["strategy"] = {"name": strategy}
    with pytest.raises(DivergenceError) as e:
        run(cfg)
    msg = str(e.value)
    assert "train.lr" in msg and "experience 1" in msg
    if strategy == "ewc":
        assert "strategy.ewc_lambda" in msg


# ---------------------------------------------------------------------------- task-aware prediction
class TaskSeen(Strategy):
    name = "taskseen"

    def __init__(self):
        super().__init__()
        self.tasks = []

    @torch.no_grad()
    def predict(self, x, task=None):
        self.tasks.append(None if task is None else task.clone())
        return self.model(x, task)


def test_task_il_evaluation_calls_predict_with_each_samples_task():
    s = TaskSeen()
    res, stream = _fit(s, "task", iterations=2)
    given = [t for t in s.tasks if t is not None]
    assert given, "predict was never called with task ids"
    assert {int(v) for t in given for v in t.unique()} == {e.task_id for e in stream}
    s = TaskSeen()
    _fit(s, "class", iterations=2)
    assert all(t is None for t in s.tasks)  # class-IL: task-agnostic only


class PerTask(Strategy):
    """Answers its task's first class whatever the input: only a task-aware call can know it."""

    name = "pertask"

    def __init__(self):
        super().__init__()
        self.first = {}

    def before_experience(self, exp):
        super().before_experience(exp)
        self.first[exp.task_id] = exp.classes[0]

    @torch.no_grad()
    def predict(self, x, task=None):
        out = torch.zeros(len(x), 10)
        if task is not None:
            cols = torch.tensor([self.first.get(int(t), 0) for t in task])
            out[torch.arange(len(x)), cols] = 1.0
        return out


def test_task_aware_accuracy_uses_the_task_aware_prediction():
    res, stream = _fit(PerTask(), "task", iterations=1)
    # the share of each task's first class: what a prediction that knows the task scores; masking
    # one task-agnostic answer (all zeros: argmax = the task's lowest column) cannot give it for
    # every task
    expected = [float((e.test.y == e.classes[0]).float().mean()) for e in stream]
    assert res.task_aware_matrix[-1] == pytest.approx(expected)


# ---------------------------------------------------------------------------- device placement
def test_task_heads_are_created_on_the_models_device():
    head = MultiHead(8, 4).to("meta")
    head.observe([0, 1], 0)
    head.observe([2, 3], 1)
    assert {p.device.type for p in head.parameters()} == {"meta"}
    head = MultiHead(8, 4)
    head.observe([0, 1], 0)
    head.to("meta").observe([2, 3], 1)
    assert {p.device.type for p in head.parameters()} == {"meta"}


# ---------------------------------------------------------------------------- composition
def _build(name, **params):
    return build_strategy(parse_config({**SMALL, "strategy": {"name": name, **params}}))


@pytest.mark.parametrize("name, match", [
    ("er+icarl", "both 'er' and 'icarl' define loss"),
    ("slca+prd", "both 'slca' and 'prd' define loss"),
    ("er+er", "both 'er' and 'er' define loss"),
    ("ncm+er", "'ncm' fits in closed form without gradient steps"),
    ("acil+lwf", "'acil' fits in closed form"),
    ("fetril+ewc", "'fetril' fits in closed form"),
    ("vcl+ewc", "'vcl' trains and predicts with parameters of its own .* of 'ewc' would act on weights it never uses"),
    ("ibcl+si", "'ibcl' trains and predicts with parameters of its own"),
    ("hnet+ewc", "'hnet' trains and predicts with parameters of its own"),
    ("hyperinterval+agem", "'hyperinterval' trains and predicts with parameters of its own"),
])
def test_compositions_that_would_drop_behaviour_are_refused(name, match):
    with pytest.raises(ConfigError, match=match):
        _build(name)
    with pytest.raises(ConfigError, match="'fetril' trains on stored features, not on the stream's inputs"):
        _build("fetril+ewc", fetril_classifier="linear")


def test_shared_keys_reach_every_member_that_takes_them():
    comp = _build("er+agem", mem_size=123)
    assert [m.mem_size for m in comp.members] == [123, 123]


def test_er_plus_ewc_applies_both():
    calls = {"penalty": [], "batch": []}

    class SpyEWC(EWC):
        def penalty(self, logits, batch):
            p = super().penalty(logits, batch)
            calls["penalty"].append(float(p.detach()) if torch.is_tensor(p) else p)
            calls["batch"].append(len(batch.y))
            return p

    comp = Compose(ER(mem_size=40), SpyEWC(ewc_lambda=1e3))
    res, _ = _fit(comp, iterations=4)
    assert max(calls["penalty"]) > 0  # EWC's penalty acts from the second experience on
    assert max(calls["batch"]) == 32  # ... on batches ER has widened with replay
    er_only, _ = _fit(ER(mem_size=40), iterations=4)
    ewc_only, _ = _fit(EWC(ewc_lambda=1e3), iterations=4)
    assert res.accuracy_matrix != er_only.accuracy_matrix
    assert res.accuracy_matrix != ewc_only.accuracy_matrix


def test_er_plus_lwf_applies_both():
    from lifelong.strategies.lwf import LwF

    seen = []

    class SpyLwF(LwF):
        def penalty(self, logits, batch):
            p = super().penalty(logits, batch)
            seen.append((float(p.detach()) if torch.is_tensor(p) else p, len(batch.y)))
            return p

    _fit(Compose(ER(mem_size=40), SpyLwF()), iterations=4)
    assert max(p for p, _ in seen) > 0 and max(n for _, n in seen) == 32


class SlowBackbone(Strategy):
    name = "slowbackbone"

    def param_groups(self):
        return [{"params": list(self.model.backbone.parameters()), "lr_scale": 0.1}]


def test_param_groups_merge_and_unclaimed_parameters_train_at_the_configured_rate():
    comp = Compose(SlowBackbone(), EWC())
    stream = _stream()
    model = build_model("mlp", stream.input_shape, stream.n_classes, "class", hidden=[16])
    comp.setup(model)
    groups = comp.param_groups()
    by_id = {id(p): g.get("lr_scale") for g in groups for p in g["params"]}
    assert all(by_id[id(p)] == 0.1 for p in model.backbone.parameters())
    assert all(by_id[id(p)] is None for p in model.head.parameters())
    assert len(by_id) == len(list(model.parameters()))


def test_adapt_has_one_owner():
    class A(Strategy):
        name = "a"

        def adapt(self, x):
            return self.predict(x)

    class B(A):
        name = "b"

    with pytest.raises(ConfigError, match="define adapt"):
        Compose(A(), B())


def test_every_registered_pair_either_composes_or_is_refused_with_a_message():
    from lifelong.strategies import STRATEGIES

    names = [n for n in STRATEGIES if n != "finetune"]
    for a in names:
        for b in names:
            try:
                comp = Compose(get_strategy_class(a)(), get_strategy_class(b)())
            except ConfigError as exc:
                assert f"'{a}+{b}'" in str(exc)
                continue
            owners = [m.name for m in comp.members]
            assert owners == [a, b]


@pytest.mark.parametrize("name", ["er+icarl", "ncm+er"])
def test_a_refused_composition_writes_no_folder(name, tmp_path, capsys):
    from _cli import run_cli

    code, _, err = run_cli(["run", "--benchmark", "split-digits", "--strategy", name, "--iterations", "2", "--quiet",
                            "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and f"strategy '{name}'" in err and not (tmp_path / "run").exists()


def test_a_diverged_run_leaves_its_folder_free_for_a_corrected_config(tmp_path):
    from lifelong.runner import run_to_folder

    cfg = copy.deepcopy(SMALL)
    cfg["train"].update(optimizer="sgd", lr=1e12, iterations=30)
    with pytest.raises(DivergenceError):
        run_to_folder(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    cfg["train"]["lr"] = 0.01
    assert run_to_folder(cfg, tmp_path / "run")["status"] == "complete"


def test_cnn_takes_its_fc_width_as_a_one_element_list():
    cfg = copy.deepcopy(SMALL)
    cfg["model"] = {"name": "cnn", "hidden": [24], "channels": [4, 8]}
    cfg["train"]["iterations"] = 2
    assert "average_accuracy" in run(cfg)
    cfg["model"]["hidden"] = [24, 12]
    with pytest.raises(ConfigError, match="model.hidden takes one width"):
        run(cfg)


# ---------------------------------------------------------------------------- online and task-free
class BoundarySpy(Strategy):
    """Counts boundary calls and what the context shows; works without boundaries."""

    name = "boundaryspy"

    def __init__(self):
        super().__init__()
        self.calls = []

    def after_step(self, batch, logits):
        self.calls.append(("step", self.context.experience))


def test_task_free_hides_every_boundary_from_the_strategy_but_the_matrix_is_recorded():
    spy = BoundarySpy()
    spy.before_experience = lambda exp: spy.calls.append(("before", exp))  # instance-level: caught if called
    spy.after_experience = lambda exp: spy.calls.append(("after", exp))
    res, stream = _fit(spy, iterations=None, epochs=1, task_free=True)
    assert {c[0] for c in spy.calls} == {"step"} and all(c[1] is None for c in spy.calls)
    assert len(res.accuracy_matrix) == 5 and len(res.boundaries) == 5  # evaluated at the hidden boundaries


def test_online_accuracy_is_measured_before_training_on_each_batch():
    class Stuck(Strategy):  # never learns: the online accuracy is the untrained model's
        name = "stuck"

        def param_groups(self):
            return [{"params": [torch.zeros(1, requires_grad=True)]}]

    res, stream = _fit(Stuck(), iterations=None, epochs=1, online_accuracy=True)
    torch.manual_seed(0)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "class", hidden=[16])
    hits = seen = 0
    for exp in stream:  # the model never changes: its accuracy on each experience's training data
        model.observe(exp.classes, exp.task_id)
        with torch.no_grad():
            hits += int((model(exp.train.x).argmax(1) == exp.train.y).sum())
        seen += len(exp.train)
    assert sum(h for h, _ in res.online) == hits and sum(n for _, n in res.online) == seen


def test_online_config_and_task_free_refusals():
    cfg = copy.deepcopy(SMALL)
    cfg["train"] = {"batch_size": 16}
    cfg["online"] = {"task_free": True}
    cfg["strategy"] = {"name": "er", "mem_size": 50}
    res = run(cfg)
    assert 0 <= res["online_accuracy"] <= 1 and len(res["online_accuracy_per_experience"]) == 5
    assert res["config"]["online"]["batch_size"] == 10
    cfg["strategy"] = {"name": "ewc"}
    with pytest.raises(ConfigError, match="needs experience boundaries"):
        run(cfg)
    cfg["strategy"] = {"name": "er", "mem_policy": "class_balanced"}
    with pytest.raises(ConfigError, match="needs experience boundaries"):
        run(cfg)
    cfg = copy.deepcopy(SMALL)
    cfg["online"] = {}
    with pytest.raises(ConfigError, match="one pass.*remove train.iterations"):
        parse_config(cfg)
    cfg["train"] = {"epochs": 2}
    with pytest.raises(ConfigError, match="train.epochs must be 1"):
        parse_config(cfg)
    with pytest.raises(ConfigError, match="online.batch_size"):
        parse_config({**SMALL, "train": {}, "online": {"batch_size": 0}})
    with pytest.raises(ConfigError, match="applies to class- and domain-incremental"):
        run({**SMALL, "train": {}, "benchmark": {"name": "split-digits", "scenario": "task"},
             "online": {"task_free": True}})


def test_task_free_online_run_resumes_bit_for_bit():
    from test_resume import InMemory

    ck = InMemory(7)
    ref, _ = _fit(ER(mem_size=30), iterations=None, epochs=1, task_free=True, online_accuracy=True, checkpointer=ck)
    for snap in (ck.snaps[1], ck.snaps[-1]):
        res, _ = _fit(ER(mem_size=30), iterations=None, epochs=1, task_free=True, online_accuracy=True, resume=snap)
        assert res.accuracy_matrix == ref.accuracy_matrix and res.online == ref.online and res.losses == ref.losses


# ---------------------------------------------------------------------------- online accuracy: the stream's rows only
def _online(strategy, **kw):
    return _fit(strategy, iterations=None, epochs=1, online_accuracy=True, **kw)


def test_online_accuracy_counts_each_incoming_sample_once_and_only_those():
    # ER trains on the stream, iCaRL on the stream and its exemplars (after it), Joint on the
    # earlier experiences and the current one (last): each predicts the incoming samples only
    from lifelong.strategies.icarl import ICaRL
    from lifelong.strategies.joint import Joint

    for strategy in (ER(mem_size=30), ICaRL(mem_size=30), Joint()):
        res, stream = _online(strategy)
        assert [n for _, n in res.online] == [len(e.train) for e in stream], strategy.name
    # VCL holds its coreset out of the incoming samples it trains on: those are not predicted
    from lifelong.strategies.vcl import VCL

    res, stream = _online(VCL(vcl_coreset_size=7, vcl_coreset_iterations=1))
    assert [n for _, n in res.online] == [len(e.train) - 7 for e in stream]


def test_online_accuracy_of_a_method_training_on_data_of_its_own_is_undefined():
    from lifelong.runner import online_summary
    from lifelong.strategies.gdumb import GDumb

    res, _ = _online(GDumb(mem_size=30, passes=2))
    assert res.online == [[0, 0]] * 5  # never predicted (GDumb trains on its memory)
    # a part of the stream is not the whole: undefined for the run when any experience is
    acc, per = online_summary([[8, 10], [0, 0], [3, 4]])
    assert math.isnan(acc) and per[0] == 0.8 and math.isnan(per[1]) and per[2] == 0.75
    acc, per = online_summary([[8, 10], [3, 4]])
    assert acc == 11 / 14 and per == [0.8, 0.75]


def test_an_experiences_own_budget_with_a_strategys_own_passes_is_refused_before_training():
    from lifelong.strategies.gdumb import GDumb

    stream = _stream()
    stream.experiences[2].iterations = 7
    g = GDumb(mem_size=30, passes=2)
    with pytest.raises(ConfigError, match="experience 2 has its own iteration budget.*'gdumb'.*2 passes"):
        _fit(g, stream=stream, iterations=None)
    assert len(g.buffer_) == 0 and g.buffer_.n_seen == 0  # nothing ran: no sample reached the memory


def test_gdumb_passes_resume_mid_experience_bit_for_bit():
    from test_resume import InMemory

    from lifelong.strategies.gdumb import GDumb

    ck = InMemory(11)
    ref, _ = _online(GDumb(mem_size=30, passes=3), checkpointer=ck)
    assert len(ck.snaps) > 2
    for snap in (ck.snaps[1], ck.snaps[-1]):
        res, _ = _online(GDumb(mem_size=30, passes=3), resume=snap)
        assert res.accuracy_matrix == ref.accuracy_matrix and res.losses == ref.losses


def test_an_online_run_sizes_its_schedule_by_the_online_batch():
    # the schedule's budget per experience is len(train) / online.batch_size steps (it was sized
    # with train.batch_size, 128, and ran past its end: IndexError)
    cfg = {"benchmark": {"name": "split-digits"}, "model": {"hidden": [16]}, "eval": {"every": None},
           "online": {"batch_size": 10}, "train": {"schedule": {"name": "cosine"}, "optimizer": "sgd", "lr": 0.1},
           "strategy": {"name": "er", "mem_size": 30}}
    from lifelong.runner import build_run_schedule
    from lifelong.streams.presets import build_benchmark

    c = parse_config(cfg)
    stream = build_benchmark(c.benchmark, c.seed)
    assert build_run_schedule(c.train, stream, 10).budgets == [-(-len(e.train) // 10) for e in stream]
    res = run(cfg)  # every step of every experience finds its factor
    assert len(res["accuracy_matrix"]) == 5
