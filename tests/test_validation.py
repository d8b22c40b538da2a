"""Validation in one place, before any data loads: every strategy parameter is typed and
range-checked from its constructor signature; every user input of the command line is checked
before the first run starts, and a mistake is one message (exit code 2), never a traceback, a
NaN run or a silent default."""
import io
import json
import math
import typing

import numpy as np
import pytest
from pydantic import BaseModel
from rich.console import Console

from _cli import run_cli
from lifelong.config import (RunConfig, StrategyConfig, parse_config, strategy_param_model,
                             validate_strategy_params)
from lifelong.errors import ConfigError, DatasetError
from lifelong.strategies import STRATEGIES

BASE = ["run", "--benchmark", "split-digits", "--iterations", "2", "--set", "model.hidden=[8]", "--quiet"]


@pytest.fixture
def nothing_runs(monkeypatch):
    """Fail the test if a run starts or a dataset loads: validation must come first."""
    import lifelong.runner
    import lifelong.streams.presets

    def refuse(*args, **kwargs):
        raise AssertionError("a run started or data loaded before validation failed")

    monkeypatch.setattr(lifelong.runner, "run_to_folder", refuse)
    monkeypatch.setattr(lifelong.streams.presets, "load_dataset", refuse)


def _refused(argv, tmp_path, capsys, *needles):
    out_dir = tmp_path / "out"
    code, out, err = run_cli(argv + ["--out", str(out_dir)], capsys)
    text = " ".join(err.split())
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err
    for needle in needles:
        assert needle in text, text
    assert not out_dir.exists()  # no run folder written
    return text


# -- the list, each through the real command line ----------------------------------------
@pytest.mark.parametrize("extra, needles", [
    (["--strategy", "er", "--set", "strategy.mem_size=-5"],
     ["config key 'strategy.mem_size'", "greater than or equal to 1", "got -5"]),
    (["--set", "model.hidden=[-3]"], ["config key 'model.hidden.0'", "greater than or equal to 1"]),
    (["--strategy", "ewc", "--set", "strategy.ewc_lambda=-1e9"],
     ["config key 'strategy.ewc_lambda'", "greater than or equal to 0"]),
    (["--strategy", "lwf", "--set", "strategy.lwf_temperature=0"],
     ["config key 'strategy.lwf_temperature'", "greater than 0", "got 0"]),
    (["--strategy", "ewc", "--set", "strategy.ewc_fisher_labels=foo"],
     ["config key 'strategy.ewc_fisher_labels'", "'all', 'sample', 'predicted' or 'true'", "got 'foo'"]),
    (["--seeds", "3-1"], ["--seeds range '3-1' is empty"]),
    (["--seeds", "1,1"], ["--seeds lists seed 1 twice"]),
    (["--workers", "0"], ["--workers", "0 is not in the range x>=1"]),
    (["--set", "strategy=er"], ["config key 'strategy' is a section", "strategy: {name: er"]),
    (["--set", "train.lr=.inf"], ["config key 'train.lr'", "finite number"]),
    (["--set", "train.lr=nan"], ["config key 'train.lr'", "finite number"]),
    (["--strategy", "finetune", "--set", "strategy.mem_size=5"],
     ["'strategy.mem_size' is taken by none of the strategies run (finetune)"]),
    (["--strategy", "finetune,joint", "--set", "strategy.ewc_lambda=5"],
     ["'strategy.ewc_lambda' is taken by none of the strategies run (finetune, joint)"]),
    (["--seed", "1", "--seeds", "0,1"], ["give --seed or --seeds, not both"]),
    (["--data-dir", "/tmp"], ["config key 'benchmark.data_dir' does not apply to 'split-digits'"]),
    (["--strategy", "finetune,er", "--set", "strategy.mem_size=0"], ["config key 'strategy.mem_size'"]),
    (["--strategy", "er,er"], ["--strategy lists 'er' twice"]),
])
def test_bad_input_is_one_message_before_anything_runs(extra, needles, tmp_path, capsys, nothing_runs):
    _refused(BASE + extra, tmp_path, capsys, *needles)


def test_a_scalar_strategy_in_a_config_file_is_refused(tmp_path, capsys, nothing_runs):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("benchmark: {name: split-digits}\nstrategy: er\n")
    _refused(["run", "--config", str(cfg)], tmp_path, capsys, "config key 'strategy' is a section", "not 'er'")


@pytest.mark.parametrize("suffix, text", [(".yaml", ""), (".yaml", "# only a comment\n"), (".toml", ""),
                                          (".json", "{}")])
def test_an_empty_config_file_is_reported(suffix, text, tmp_path, capsys, nothing_runs):
    cfg = tmp_path / f"c{suffix}"
    cfg.write_text(text)
    _refused(["run", "--config", str(cfg)], tmp_path, capsys, f"config file {cfg} is empty")


def test_scenario_support_of_every_listed_strategy_is_checked_before_the_first_run(tmp_path, capsys, nothing_runs):
    # finetune would run first (task-IL is fine for it); icarl is class-IL only: nothing may run
    _refused(BASE + ["--strategy", "finetune,icarl", "--scenario", "task"], tmp_path, capsys,
             "strategy 'icarl' supports scenarios class, not 'task'")
    # a composition: every member must support it (the benchmark's default scenario counts too)
    _refused(BASE + ["--strategy", "ewc+icarl", "--benchmark", "permuted-mnist"], tmp_path, capsys,
             "strategy 'icarl' supports scenarios class, not 'domain' (benchmark 'permuted-mnist')")


@pytest.mark.parametrize("benchmark", ["split-mnist", "split-digits", "permuted-mnist", "mnist-fashion-animal"])
def test_data_dir_for_a_dataset_that_ships_is_an_error(benchmark, tmp_path, capsys, nothing_runs):
    _refused(["run", "--benchmark", benchmark, "--data-dir", str(tmp_path)], tmp_path, capsys,
             f"'benchmark.data_dir' does not apply to '{benchmark}'")


def test_data_dir_still_reaches_a_folder_dataset(tmp_path, capsys):
    # accepted for npz: the error now comes from the dataset (no files there), not from the key
    code, _, err = run_cli(["run", "--benchmark", "split-npz", "--data-dir", str(tmp_path), "--quiet", "--out",
                            str(tmp_path / "out")], capsys)
    assert code == 2 and "missing train.npz, test.npz" in " ".join(err.split())


def test_a_key_is_fine_when_another_listed_strategy_takes_it(tmp_path, capsys):
    from lifelong.cli.sweep import expand

    configs = expand({"strategy": {"mem_size": 30}}, ["finetune", "er", "er+agem"], [0, 1])
    got = [(c.strategy.name, c.seed, c.strategy.params) for c in configs]
    assert got == [("finetune", 0, {}), ("finetune", 1, {}), ("er", 0, {"mem_size": 30}), ("er", 1, {"mem_size": 30}),
                   ("er+agem", 0, {"mem_size": 30}), ("er+agem", 1, {"mem_size": 30})]


def test_set_numbers_are_numbers_in_the_recorded_config():
    from lifelong.cli.sweep import parse_value

    # YAML reads 1e-3 and -1e9 as strings (it wants a dot); the config must record numbers
    assert [parse_value(v) for v in ("1e-3", "-1e9", "[16, 8]", "er", ".inf")] == [1e-3, -1e9, [16, 8], "er", math.inf]


# -- strategy parameters: the signature is the one source ---------------------------------------
def _bounded_params():
    """(strategy, parameter, a value just outside its range) for every bounded parameter."""
    out = []
    for name, cls in STRATEGIES.items():
        for key, field in strategy_param_model(cls).model_fields.items():
            metas = list(field.metadata)
            for a in typing.get_args(field.annotation):  # Optional[Annotated[int, Field(ge=1)]]
                metas += [m for f in typing.get_args(a)[1:] for m in getattr(f, "metadata", [])]
            for m in metas:
                for attr, bad in (("ge", lambda v: v - 1), ("gt", lambda v: v), ("le", lambda v: v + 1),
                                  ("lt", lambda v: v)):
                    if getattr(m, attr, None) is not None:
                        out.append((name, key, bad(getattr(m, attr))))
    return out


BOUNDED = _bounded_params()


def test_the_signatures_declare_ranges():
    declared = {(s, k) for s, k, _ in BOUNDED}
    for want in [("er", "mem_size"), ("er", "mem_per_class"), ("er", "er_new_weight"), ("ewc", "ewc_lambda"),
                 ("lwf", "lwf_temperature"), ("si", "si_epsilon"), ("prd", "prd_aug_drop"), ("slca", "slca_ca_samples"),
                 ("acil", "acil_gamma"), ("fetril", "fetril_svm_c"), ("icarl", "mem_size")]:
        assert want in declared, want


@pytest.mark.parametrize("strategy, key, value", BOUNDED, ids=[f"{s}.{k}={v}" for s, k, v in BOUNDED])
def test_every_declared_range_is_enforced(strategy, key, value):
    with pytest.raises(ConfigError, match=f"config key 'strategy.{key}'"):
        validate_strategy_params(StrategyConfig(name=strategy, **{key: value}))


FLOATS = [(n, k) for n, cls in STRATEGIES.items() for k, f in strategy_param_model(cls).model_fields.items()
          if "float" in str(f.annotation)]


@pytest.mark.parametrize("strategy, key", FLOATS, ids=[f"{s}.{k}" for s, k in FLOATS])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_no_float_parameter_takes_inf_or_nan(strategy, key, value):
    with pytest.raises(ConfigError, match=f"'strategy.{key}': must be a finite number"):
        validate_strategy_params(StrategyConfig(name=strategy, **{key: value}))


def test_defaults_pass_their_own_validation():
    for name, cls in STRATEGIES.items():
        ((_, params),) = validate_strategy_params(StrategyConfig(name=name))
        assert params == {k: f.default for k, f in strategy_param_model(cls).model_fields.items()}, name


def _float_fields(model: type[BaseModel], prefix=""):
    for key, f in model.model_fields.items():
        sub = next((a for a in (f.annotation, *typing.get_args(f.annotation))
                    if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is not None:
            yield from _float_fields(sub, f"{prefix}{key}.")
        elif "float" in str(f.annotation):
            yield prefix + key, f.annotation


CONFIG_FLOATS = list(_float_fields(RunConfig))


@pytest.mark.parametrize("key, annotation", CONFIG_FLOATS, ids=[k for k, _ in CONFIG_FLOATS])
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_no_float_config_key_takes_inf_or_nan(key, annotation, value):
    text = str(annotation)
    v = [value, value] if ("list" in text or "tuple" in text) else value
    data: dict = {}
    *sections, last = key.split(".")
    cur = data
    for s in sections:
        cur = cur.setdefault(s, {})
    cur[last] = v
    if sections[:2] == ["benchmark", "features"]:
        cur.setdefault("backbone", "efficientnet_lite0")
    with pytest.raises(ConfigError, match="finite number"):
        parse_config(data)


def test_config_floats_are_found():  # the test above covers these at least
    keys = {k for k, _ in CONFIG_FLOATS}
    assert {"train.lr", "train.momentum", "train.weight_decay", "train.betas", "benchmark.val_fraction",
            "benchmark.angles", "benchmark.blurry"} <= keys


# -- composition --------------------------------------------------------------------------------
def test_a_shared_key_reaches_every_member_that_takes_it():
    from lifelong.runner import build_strategy

    got = validate_strategy_params(StrategyConfig(name="er+agem+ewc", mem_size=7, ewc_lambda=3.0))
    assert [n for n, _ in got] == ["er", "agem", "ewc"]
    assert got[0][1]["mem_size"] == 7 and got[1][1]["mem_size"] == 7 and "mem_size" not in got[2][1]
    assert got[2][1]["ewc_lambda"] == 3.0 and "ewc_lambda" not in got[0][1]
    strategy = build_strategy(parse_config({"strategy": {"name": "er+agem", "mem_size": 7}}))
    assert [m.mem_size for m in strategy.members] == [7, 7]
    assert [m.mem_policy for m in strategy.members] == ["reservoir", "class_balanced"]  # each its own default


def test_the_same_strategy_twice_gives_two_members():
    got = validate_strategy_params(StrategyConfig(name="ewc+ewc", ewc_lambda=2.0))
    assert [(n, p["ewc_lambda"]) for n, p in got] == [("ewc", 2.0), ("ewc", 2.0)]


def test_a_key_no_member_takes_names_the_allowed_keys():
    with pytest.raises(ConfigError, match=r"unknown parameter 'strategy.si_c' for strategy 'er\+lwf'; allowed: "
                                          r"mem_size, mem_policy, .*lwf_temperature, lwf_alpha"):
        validate_strategy_params(StrategyConfig(name="er+lwf", si_c=1.0))


def test_python_construction_is_lenient_and_the_runner_validates():
    # documented in docs/decisions.md: constructors store, validate_strategy_params checks
    from lifelong.runner import build_strategy
    from lifelong.strategies.er import ER

    assert ER(mem_size=-5).mem_size == -5
    with pytest.raises(ConfigError, match="strategy.mem_size"):
        build_strategy(parse_config({"strategy": {"name": "er", "mem_size": -5}}))


# -- lifelong list ------------------------------------------------------------------------------
def test_list_at_80_columns_shows_every_parameter_name_whole(monkeypatch, capsys):
    import lifelong.cli.listing

    buf = io.StringIO()
    monkeypatch.setattr(lifelong.cli.listing, "console", Console(file=buf, width=80, color_system=None))
    code, _, _ = run_cli(["list"], capsys)
    text = buf.getvalue()
    assert code == 0
    assert "…" not in text and "..." not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    words = set(text.replace("│", " ").replace("=", " ").split())
    for name, cls in STRATEGIES.items():
        assert name in words
        for key in cls.get_param_names():
            assert key in words, key  # whole, never cut or wrapped inside
    assert "mem_policy='reservoir'" in text and "reservoir|class_balanced" in text  # default, allowed values
    assert "first_experience_classes" in words


# -- user folders -------------------------------------------------------------------------------
def test_nan_or_inf_features_in_a_folder_are_refused_with_the_file_and_the_count(tmp_path):
    from lifelong.data import npz_folder

    x = np.ones((6, 3), dtype=np.float32)
    x[1, 0], x[1, 2], x[4, 1] = np.nan, np.inf, -np.inf
    y = np.arange(6) % 2
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=np.ones((2, 3), dtype=np.float32), y=np.array([0, 1]))
    with pytest.raises(DatasetError) as e:
        npz_folder(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "train.npz") in msg and "3 NaN or infinite values (in 2 of 6 samples)" in msg
    np.savez(tmp_path / "train.npz", x=np.full((2, 3), 1e300), y=np.array([0, 1]))  # inf once float32
    with pytest.raises(DatasetError, match="6 values beyond float32's range"):
        npz_folder(tmp_path)
    np.savez(tmp_path / "train.npz", x=np.ones((2, 3)), y=np.array([0, 1]))
    assert npz_folder(tmp_path).train.x.shape == (2, 3)


# -- the summary over seeds ---------------------------------------------------------------------
def test_summary_rows_take_mean_and_sample_std():
    from lifelong.cli.sweep import summary_rows

    res = [{"config": {"strategy": {"name": "er"}}, "seed": s, "average_accuracy": a,
            "average_incremental_accuracy": a, "forgetting": 0.1, "bwt": -0.1, "wall_time_s": 2.0}
           for s, a in ((0, 0.5), (1, 0.7), (2, 0.9))]
    (row,) = summary_rows(res)
    assert row["seeds"] == [0, 1, 2]
    assert row["average_accuracy"]["mean"] == pytest.approx(0.7)
    assert row["average_accuracy"]["std"] == pytest.approx(0.2)  # sqrt(((-.2)^2 + 0 + .2^2) / 2)
    assert row["forgetting"] == {"mean": pytest.approx(0.1), "std": 0.0}
    json.dumps(row)
