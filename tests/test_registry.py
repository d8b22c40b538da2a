"""Open registries (lifelong.registry): your own strategy, model or benchmark from your own module
or an installed entry point, behind an allow-list, checked before anything is called."""
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from _cli import run_cli
from lifelong import registry
from lifelong.config import parse_config
from lifelong.errors import ConfigError
from lifelong.models import ContinualModel, ContinualModelProtocol, backbone_class, build_model, check_model
from lifelong.runner import run
from lifelong.strategies import Strategy, get_strategy_class
from lifelong.streams.presets import build_benchmark

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
ENV = registry.ENV
FAST = {"train": {"iterations": 20, "batch_size": 32}, "eval": {"every": None}}


@pytest.fixture(autouse=True)
def _no_allow_list(monkeypatch):
    """Each test starts with an empty allow-list, whatever the shell running the tests set."""
    monkeypatch.delenv(ENV, raising=False)


@pytest.fixture
def examples_on_path(monkeypatch):
    """``PYTHONPATH=examples``, and ``my_strategy`` forgotten again after the test."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.delitem(sys.modules, "my_strategy", raising=False)
    yield
    sys.modules.pop("my_strategy", None)


# -- the allow-list -------------------------------------------------------------------------------

def test_allow_list_matches_whole_module_prefixes(monkeypatch):
    monkeypatch.setenv(ENV, " my_lab , other.pkg")
    assert registry.allowed_modules() == ["my_lab", "other.pkg"]
    assert registry.is_allowed("my_lab") and registry.is_allowed("my_lab.nets.deep")
    assert not registry.is_allowed("my_labx") and not registry.is_allowed("other")
    assert registry.is_allowed("other.pkg.x") and registry.is_allowed("lifelong.strategies.er")  # lifelong: always
    assert not registry.is_allowed("os") and not registry.is_allowed("builtins")
    monkeypatch.setenv(ENV, "*")
    assert registry.is_allowed("os")
    monkeypatch.setenv(ENV, "my_lab,../evil")
    with pytest.raises(ConfigError, match=f"environment variable {ENV}: '../evil' is not a module prefix"):
        registry.is_allowed("my_lab")


def test_allow_modules_adds_to_the_environment_for_worker_processes():
    assert registry.allow_modules(["my_lab", "my_lab"]) == ["my_lab"]
    assert registry.allow_modules("other") == ["my_lab", "other"]
    import os

    assert os.environ[ENV] == "my_lab,other"  # spawned workers (--executor process) inherit it
    with pytest.raises(ConfigError, match="allow_modules: 'my lab' is not a module prefix"):
        registry.allow_modules(["my lab"])


# -- a config cannot run code (issue 12) ------------------------------------------------------------

def _refused_everywhere(target: str, marker: Path):
    """``target`` named as features.module, model.name, strategy.name and benchmark.name: each one
    ConfigError, and the command in kwargs never runs."""
    msgs = []
    feats = {"backbone": "local", "module": target, "weights": str(marker.with_suffix(".pt")),
             "kwargs": {"command": f"touch {marker}"}}
    torch.save({}, marker.with_suffix(".pt"))
    for cfg in ({"benchmark": {"name": "split-digits", "features": feats}},
                {"model": {"name": target}},
                {"strategy": {"name": target}},
                {"strategy": {"name": f"er+{target}"}}):
        with pytest.raises(ConfigError) as e:
            parse_config(cfg)
        msgs.append(str(e.value))
    with pytest.raises(ConfigError) as e:  # the benchmark is resolved when it is built
        run({"benchmark": {"name": target}, **FAST})
    msgs.append(str(e.value))
    assert not marker.exists()
    return msgs


@pytest.mark.parametrize("target", ["os:system", "builtins:eval", "subprocess:getoutput"])
def test_a_config_naming_a_module_not_allowed_is_refused_before_import(target, tmp_path):
    for msg in _refused_everywhere(target, tmp_path / "pwned"):
        assert "is not on the allow-list, so it was not imported" in msg and f"{ENV}=" in msg, msg


@pytest.mark.parametrize("allow", ["os,builtins,subprocess", "*"])
@pytest.mark.parametrize("target", ["os:system", "builtins:eval", "subprocess:getoutput"])
def test_an_allowed_module_must_still_name_the_right_kind_and_is_never_called(target, allow, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, allow)
    msgs = _refused_everywhere(target, tmp_path / "pwned")
    for msg, kind in zip(msgs, ["extractor", "model", "strategy", "strategy", "benchmark"]):
        assert f"but a {kind} must be" in msg and "it was not called" in msg, msg


def test_a_module_not_allowed_is_never_imported(tmp_path, monkeypatch):
    """Its top-level code would write a file: nothing is written, the module is not imported."""
    marker = tmp_path / "imported"
    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / "sneaky_mod.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass Net: pass\n")
    monkeypatch.syspath_prepend(str(folder))
    for cfg in ({"model": {"name": "sneaky_mod:Net"}}, {"strategy": {"name": "sneaky_mod:Net"}}):
        with pytest.raises(ConfigError, match="module 'sneaky_mod'.*not on the allow-list"):
            parse_config(cfg)
    assert not marker.exists() and "sneaky_mod" not in sys.modules


def test_malformed_references_get_one_clear_message(monkeypatch):
    monkeypatch.setenv(ENV, "*")
    for ref in ("a:b:c", "pkg.mod:", ":Name", "pkg/../mod:Name", "pkg.mod:Na me"):
        with pytest.raises(ConfigError, match="strategy.name must look like 'package.module:ClassName'"):
            get_strategy_class(ref)
    with pytest.raises(ConfigError, match="cannot import 'no_such_pkg_xyz'"):
        get_strategy_class("no_such_pkg_xyz:S")
    with pytest.raises(ConfigError, match="'lifelong.strategies.er' has no attribute 'Nope'"):
        get_strategy_class("lifelong.strategies.er:Nope")
    monkeypatch.delenv(ENV)
    with pytest.raises(ConfigError, match="reaches the module 'os' through 'lifelong.registry'"):
        get_strategy_class("lifelong.registry:os.system")  # lifelong is allowed; os is not reached through it


# -- strategies --------------------------------------------------------------------------------------

def test_a_reference_resolves_to_the_same_class_as_the_builtin_name():
    from lifelong.strategies.er import ER

    assert get_strategy_class("lifelong.strategies.er:ER") is ER is get_strategy_class("er")
    with pytest.raises(ConfigError, match="unknown strategy 'nope'; allowed: .*finetune.*'package.module:Class'"):
        get_strategy_class("nope")
    with pytest.raises(ConfigError, match="a strategy must be a subclass of lifelong.strategies.Strategy"):
        get_strategy_class("lifelong.strategies:Compose")  # composes; not a method by itself


def test_example_strategy_from_the_cli_composed_with_a_builtin(examples_on_path, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(ENV, "my_strategy")
    out = tmp_path / "runs"
    code, _, err = run_cli(["run", "--benchmark", "split-digits", "--strategy", "my_strategy:MyReplay+ewc,finetune",
                            "--iterations", "60", "--set", "eval.every=null", "--set", "strategy.mem_size=300",
                            "--quiet", "--out", str(out)], capsys)
    assert code == 0, err
    res = {p.parent.parent.name: json.loads(p.read_text()) for p in out.glob("*/seed-0/results.json")}
    mine = res["my_strategy:MyReplay+ewc"]
    assert mine["strategy"].startswith("MyReplay(mem_size=300") and "+ EWC(" in mine["strategy"]
    assert mine["config"]["strategy"] == {"name": "my_strategy:MyReplay+ewc", "mem_size": 300}
    # replay keeps old classes: far above fine-tuning, which forgets all but the last experience
    assert mine["average_accuracy"] > res["finetune"]["average_accuracy"] + 0.3


def test_example_strategy_is_refused_without_the_allow_list(examples_on_path, tmp_path, capsys):
    code, _, err = run_cli(["run", "--benchmark", "split-digits", "--strategy", "my_strategy:MyReplay+ewc",
                            "--iterations", "5", "--quiet", "--out", str(tmp_path / "run")], capsys)
    err = " ".join(err.split())  # the console wraps long lines
    assert code == 2 and "module 'my_strategy'" in err and "not on the allow-list" in err and ENV in err
    assert "my_strategy" not in sys.modules and not (tmp_path / "run").exists()


def test_example_strategy_checks_its_parameters(examples_on_path, monkeypatch):
    monkeypatch.setenv(ENV, "my_strategy")
    with pytest.raises(ConfigError, match="strategy.mem_size"):
        parse_config({"strategy": {"name": "my_strategy:MyReplay", "mem_size": 0}})
    with pytest.raises(ConfigError, match="unknown parameter 'strategy.mem_policy'"):  # fixed to reservoir
        parse_config({"strategy": {"name": "my_strategy:MyReplay", "mem_policy": "class_balanced"}})


def test_example_er_ace_loss_is_the_asymmetric_cross_entropy(examples_on_path, monkeypatch):
    """Stream samples: cross-entropy over the classes in their own minibatch; replayed: over all."""
    monkeypatch.setenv(ENV, "my_strategy")
    from lifelong.strategies import Batch

    cls = get_strategy_class("my_strategy:MyReplay")
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0], [0.0, 1.0, 3.0, 0.0], [2.0, 0.0, 1.0, 1.0]])
    y = torch.tensor([2, 3, 0])  # two stream samples (classes 2, 3), one replayed (class 0)
    batch = Batch(torch.zeros(3, 1), y, torch.zeros(3, dtype=torch.long), n_new=2)
    got = cls().loss(logits, batch)
    lse = lambda v: torch.logsumexp(torch.tensor(v), 0)  # noqa: E731
    new = ((lse([0.5, -1.0]) - 0.5) + (lse([3.0, 0.0]) - 0.0)) / 2  # only classes 2 and 3 compete
    old = lse([2.0, 0.0, 1.0, 1.0]) - 2.0
    torch.testing.assert_close(got, new + old)


# -- models --------------------------------------------------------------------------------------

_NET = '''
import torch
from torch import nn

calls = []


class TinyNet(nn.Module):
    """A user backbone: flatten, one hidden layer of ``width`` (or hidden[0]) units."""

    def __init__(self, input_shape, hidden=None):
        super().__init__()
        d = 1
        for s in input_shape:
            d *= s
        width = hidden[0] if hidden else 24
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, width), nn.ReLU())
        self.out_features = width

    def forward(self, x):
        return self.net(x)


class NoWidth(nn.Module):
    def __init__(self, input_shape):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


class WrongWidth(NoWidth):
    def __init__(self, input_shape):
        super().__init__(input_shape)
        self.out_features = 5


class NoShape(nn.Module):
    def __init__(self):
        super().__init__()
        self.out_features = 3


def make_net(input_shape):
    calls.append(input_shape)
    return TinyNet(input_shape)
'''


def test_user_backbone_is_wrapped_with_the_scenarios_head(write_user_module):
    user_nets = write_user_module("user_nets", _NET)
    assert backbone_class("user_nets:TinyNet") is user_nets.TinyNet
    for scenario, head in (("class", "IncrementalHead"), ("task", "MultiHead"), ("domain", "Head")):
        model = build_model("user_nets:TinyNet", (1, 8, 8), 10, scenario, hidden=[7])
        assert isinstance(model, ContinualModel) and isinstance(model, ContinualModelProtocol)
        assert isinstance(model.backbone, user_nets.TinyNet) and type(model.head).__name__ == head
        model.observe([0, 1], 0)
        assert model.features(torch.zeros(3, 1, 8, 8)).shape == (3, 7)
        assert model(torch.zeros(3, 1, 8, 8), torch.zeros(3, dtype=torch.long)).shape == (3, 10)


def test_user_backbone_contract_errors(write_user_module, monkeypatch):
    user_nets = write_user_module("user_nets", _NET)
    with pytest.raises(ConfigError, match="must set self.out_features .* Got None"):
        build_model("user_nets:NoWidth", (4,), 3, "class")
    with pytest.raises(ConfigError, match=r"must map inputs .* = \(2, 5\); got \(2, 3\)"):
        build_model("user_nets:WrongWidth", (4,), 3, "class")
    with pytest.raises(ConfigError, match=r"fails on a batch of inputs shaped \(2, 5\)"):
        build_model("user_nets:WrongWidth", (5,), 3, "class")
    with pytest.raises(ConfigError, match=r"built as NoShape\(input_shape, \*\*\{\}\)"):
        build_model("user_nets:NoShape", (4,), 3, "class")
    with pytest.raises(ConfigError, match=r"built as TinyNet\(input_shape, \*\*\{'channels': \[2\]\}\)"):
        build_model("user_nets:TinyNet", (4,), 3, "class", channels=[2])
    with pytest.raises(ConfigError, match="a model must be a subclass of torch.nn.Module; it was not called"):
        parse_config({"model": {"name": "user_nets:make_net"}})
    assert user_nets.calls == []
    with pytest.raises(ConfigError, match="config key 'model.name': input should be one of 'mlp', 'cnn', "
                                          "'lite0_head', or your own as 'package.module:Class'.*got 'resnet'"):
        parse_config({"model": {"name": "resnet"}})
    monkeypatch.delenv(ENV)
    with pytest.raises(ConfigError, match="config key 'model.name': module 'user_nets'.*not on the allow-list"):
        parse_config({"model": {"name": "user_nets:TinyNet"}})


def test_check_model_names_what_is_missing():
    class NoObserve(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.head = nn.Identity(), nn.Identity()

        def features(self, x):
            return x

    with pytest.raises(TypeError, match="NoObserve is not a continual model: it lacks observe"):
        check_model(NoObserve())
    odd = ContinualModel(nn.Identity(), nn.Identity())
    odd.head = None  # a plain attribute, not a module
    with pytest.raises(TypeError, match="ContinualModel.head must be a torch.nn.Module"):
        check_model(odd)
    check_model(build_model("mlp", (4,), 3, "task", hidden=[]))


def test_user_backbone_from_the_cli(write_user_module, tmp_path, capsys):
    write_user_module("user_nets", _NET)
    code, _, err = run_cli(["run", "--benchmark", "split-digits", "--strategy", "er", "--iterations", "100",
                            "--set", "model.name=user_nets:TinyNet", "--set", "model.hidden=[16]",
                            "--set", "eval.every=null", "--quiet", "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["config"]["model"]["name"] == "user_nets:TinyNet"
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    assert state["backbone.net.1.weight"].shape == (16, 64)  # the user's layer, trained in place
    assert res["average_accuracy"] > 0.5


# -- benchmarks ------------------------------------------------------------------------------------

_BENCH = '''
import torch

from lifelong.data.base import DatasetSplits, TensorDataset
from lifelong.registry import benchmark
from lifelong.streams import split_stream

calls = []


@benchmark(keys=["n_experiences"])
def blobs(cfg, seed):
    """Six Gaussian blobs in 2-d, split into experiences."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0], [8.0, 0.0], [0.0, 8.0]])
    def ds(n):
        y = torch.arange(n) % 6
        return TensorDataset("blobs", centres[y] + 0.5 * torch.randn(n, 2, generator=g), y)
    return split_stream(DatasetSplits(ds(600), ds(300)), scenario=cfg.scenario or "class",
                        n_experiences=cfg.n_experiences or 3, seed=seed, name="blobs")


@benchmark(scenario="domain")
def wrong_scenario(cfg, seed):
    return blobs(cfg, seed)


@benchmark
def not_a_stream(cfg, seed):
    return [1, 2, 3]


def unmarked(cfg, seed):
    calls.append(seed)
    return blobs(cfg, seed)
'''


def test_user_benchmark_from_the_cli(write_user_module, tmp_path, capsys):
    write_user_module("user_bench", _BENCH)
    code, _, err = run_cli(["run", "--benchmark", "user_bench:blobs", "--strategy", "er", "--iterations", "50",
                            "--set", "benchmark.n_experiences=2", "--set", "model.hidden=[]", "--set", "train.lr=0.05",
                            "--set", "eval.every=null", "--quiet", "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["benchmark"] == "blobs" and len(res["experiences"]) == 2 and res["scenario"] == "class"
    assert [e["classes"] for e in res["experiences"]] == [[0, 1, 2], [3, 4, 5]]
    assert [e["n_train"] for e in res["experiences"]] == [300, 300]
    R = res["accuracy_matrix"]
    assert R[0][0] > 0.95 and R[1][1] > 0.95  # separable blobs: each experience is learnt


def test_user_benchmark_is_checked_before_and_after_the_call(write_user_module):
    user_bench = write_user_module("user_bench", _BENCH)
    bench = lambda **kw: parse_config({"benchmark": kw}).benchmark  # noqa: E731
    assert len(build_benchmark(bench(name="user_bench:blobs"), seed=1)) == 3
    with pytest.raises(ConfigError, match="must be a function .* marked with @lifelong.registry.benchmark; "
                                          "it was not called"):
        build_benchmark(bench(name="user_bench:unmarked"))
    assert user_bench.calls == []
    with pytest.raises(ConfigError, match="returned list, not a lifelong.streams.Stream"):
        build_benchmark(bench(name="user_bench:not_a_stream"))
    with pytest.raises(ConfigError, match="returned a class-IL stream, but scenario 'domain' was asked for"):
        build_benchmark(bench(name="user_bench:wrong_scenario"))
    with pytest.raises(ConfigError, match="'benchmark.angles' does not apply to 'user_bench:blobs'; "
                                          "its keys: n_experiences, name, scenario, val_fraction"):
        build_benchmark(bench(name="user_bench:blobs", angles=[1.0]))
    with pytest.raises(ConfigError, match="benchmark.features does not apply to 'user_bench:blobs'"):
        build_benchmark(bench(name="user_bench:blobs", features={"backbone": "efficientnet_lite0"}))
    with pytest.raises(ConfigError, match="unknown benchmark 'nope'; allowed: .*split-mnist.*'package.module:function'"):
        build_benchmark(bench(name="nope"))
    with pytest.raises(ValueError, match="scenario must be"):
        registry.benchmark(scenario="online")


# -- entry points of installed packages --------------------------------------------------------------

_PLUGIN = '''
from torch import nn

from lifelong.registry import benchmark
from lifelong.strategies.er import ER


class PluginReplay(ER):
    name = "plugin_replay"


class PluginNet(nn.Module):
    def __init__(self, input_shape):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(input_shape[-1] * input_shape[-2], 8))
        self.out_features = 8

    def forward(self, x):
        return self.net(x)


@benchmark
def plugin_bench(cfg, seed):
    from lifelong.streams.presets import build_benchmark
    return build_benchmark(type(cfg)(name="split-digits"), seed)


def not_a_strategy():
    raise AssertionError("never called")
'''


def test_installed_entry_points_are_trusted_and_named_plainly(tmp_path, monkeypatch):
    """A package installed with entry points (an installed .dist-info on sys.path), its module
    not on the allow-list: its names resolve, through the same kind checks."""
    (tmp_path / "lifelong_plugin_xyz.py").write_text(_PLUGIN)
    info = tmp_path / "lifelong_plugin_xyz-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lifelong-plugin-xyz\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[lifelong.strategies]\nplugin_replay = lifelong_plugin_xyz:PluginReplay\n"
        "plugin_bad = lifelong_plugin_xyz:not_a_strategy\n\n"
        "[lifelong.models]\nplugin_net = lifelong_plugin_xyz:PluginNet\n\n"
        "[lifelong.benchmarks]\nplugin_bench = lifelong_plugin_xyz:plugin_bench\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lifelong_plugin_xyz", raising=False)
    assert registry.entry_point_names("strategy") == ["plugin_bad", "plugin_replay"]
    cls = get_strategy_class("plugin_replay")
    assert issubclass(cls, Strategy) and cls.__name__ == "PluginReplay"
    with pytest.raises(ConfigError, match="the entry point 'plugin_bad' .* a strategy must be a subclass"):
        get_strategy_class("plugin_bad")
    cfg = parse_config({"model": {"name": "plugin_net"}, "strategy": {"name": "plugin_replay+ewc", "mem_size": 10}})
    assert cfg.model.name == "plugin_net"
    assert len(build_benchmark(parse_config({"benchmark": {"name": "plugin_bench"}}).benchmark)) == 5
    res = run({"benchmark": {"name": "plugin_bench"}, "model": {"name": "plugin_net"},
               "strategy": {"name": "plugin_replay", "mem_size": 50}, **FAST})
    assert res["strategy"].startswith("PluginReplay(") and len(res["accuracy_matrix"]) == 5
    with pytest.raises(ConfigError, match=r"installed \(lifelong.strategies\): plugin_bad, plugin_replay"):
        get_strategy_class("nope")  # the message lists what is installed
    from click.testing import CliRunner

    from lifelong.cli import cli
    out = CliRunner().invoke(cli, ["list"]).output  # lifelong list names them (without loading them)
    assert "Installed strategy plugins (lifelong.strategies): plugin_bad, plugin_replay" in out
    assert "Installed model plugins (lifelong.models): plugin_net" in out
    out = CliRunner().invoke(cli, ["list", "benchmarks"]).output
    assert "plugin_bench" in out and "plugin_replay" not in out
    sys.modules.pop("lifelong_plugin_xyz", None)


# -- the README ------------------------------------------------------------------------------------

def _readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Your own strategy, model or benchmark")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_readme_commands_run(monkeypatch, tmp_path, capsys):
    """The section's shell commands, run as written (iterations lowered, into tmp_path)."""
    monkeypatch.chdir(ROOT)
    monkeypatch.delitem(sys.modules, "my_strategy", raising=False)
    block = re.search(r"```bash\n(.*?)```", _readme_section(), re.S).group(1)
    ran = 0
    for line in block.splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        words = shlex.split(line)
        if words[0] == "export":
            key, value = words[1].split("=", 1)
            monkeypatch.setenv(key, value)
            continue
        while "=" in words[0]:  # VAR=value lifelong ...
            key, value = words.pop(0).split("=", 1)
            if key == "PYTHONPATH":
                monkeypatch.syspath_prepend(str(ROOT / value))
            else:
                monkeypatch.setenv(key, value)
        assert words[0] == "lifelong", line
        args = words[1:]
        if "--iterations" in args:
            args[args.index("--iterations") + 1] = "10"
        if "--out" in args:
            args[args.index("--out") + 1] = str(tmp_path / f"run{ran}")
        code, _, err = run_cli(args + ["--quiet"], capsys)
        assert code == 0, f"{line}\n{err}"
        ran += 1
    assert ran >= 1 and registry.allowed_modules() == ["my_strategy"]  # the export took effect
    sys.modules.pop("my_strategy", None)


def test_allow_module_and_trust_config_flags(examples_on_path, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(ENV, "")  # restored after the test (the flags write the variable for worker processes)
    args = ["run", "--benchmark", "split-digits", "--strategy", "my_strategy:MyReplay", "--iterations", "3",
            "--set", "eval.every=null", "--quiet"]
    code, _, err = run_cli(args + ["--out", str(tmp_path / "a"), "--allow-module", "my_strategy"], capsys)
    assert code == 0, err
    assert (tmp_path / "a" / "results.json").is_file()
    monkeypatch.setenv(ENV, "")
    code, _, err = run_cli(args + ["--out", str(tmp_path / "b"), "--trust-config"], capsys)
    assert code == 0, err
    monkeypatch.setenv(ENV, "")
    code, _, err = run_cli(args + ["--out", str(tmp_path / "c"), "--allow-module", "other_lab"], capsys)
    assert code == 2 and "not on the allow-list" in " ".join(err.split()) and not (tmp_path / "c").exists()
    monkeypatch.setenv(ENV, "")
    code, _, err = run_cli(args + ["--out", str(tmp_path / "d"), "--allow-module", "../evil"], capsys)
    assert code == 2 and not (tmp_path / "d").exists()


def test_check_model_does_not_rest_on_a_runtime_protocol_check(monkeypatch):
    """From Python 3.12 ``isinstance`` against a runtime protocol looks members up statically, and
    an ``nn.Module``'s submodules (``backbone``, ``head``) live in ``_modules``: the check refused
    every model there (found on the lent GPU machine's Python 3.12). ``check_model`` accepts a
    model whatever that ``isinstance`` answers."""
    import inspect

    import lifelong.models as models

    model = build_model("mlp", (4,), 3, "task", hidden=[])
    with pytest.raises(AttributeError):  # what a static lookup sees of a submodule
        inspect.getattr_static(model, "backbone")

    class Static(type):  # Python 3.12's answer for every nn.Module
        def __instancecheck__(cls, obj):
            return False

    monkeypatch.setattr(models, "ContinualModelProtocol", Static("P", (), {}))
    check_model(model)
