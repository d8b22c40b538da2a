"""Paper reproductions: protocol files, expansion, verdicts, the resumable cache and the CLI."""
import json
import re
from pathlib import Path

import pytest

from _cli import run_cli
import yaml

import lifelong.reproduce as rp
from lifelong.config import parse_config
from lifelong.errors import ConfigError

TINY = ["--set", "benchmark.name=split-digits", "--set", "train.iterations=5", "--set", "model.hidden=[16]"]


_run = run_cli


# ----------------------------------------------------------------------------- protocol files
@pytest.mark.parametrize("name", rp.available_protocols())
def test_shipped_protocols_parse_and_expand_to_valid_run_configs(name):
    p = rp.load_protocol(name)
    specs = rp.expand(p, scenarios=p.scenarios)
    expected = sum(len(p.method_scenarios(m)) for m in p.methods) * p.seeds
    assert len(specs) == expected
    assert len({s.key for s in specs}) == len(specs)  # every (scenario, method, seed) is its own run
    for s in specs:
        assert parse_config(s.config).to_dict() == s.config
        assert s.config["benchmark"]["scenario"] == s.scenario
        assert s.config["eval"]["every"] is None and s.config["train"]["reset_optimizer"] is False
    assert set(rp.available_protocols()) >= {"vandeven2022-splitmnist", "vandeven2022-permutedmnist"}


def test_split_mnist_protocol_carries_the_reference_hyper_parameters():
    p = rp.load_protocol("vandeven2022-splitmnist")
    specs = rp.expand(p, seeds=1)
    cfg = {(s.scenario, s.method): s.config for s in specs}
    for scen, lam, c in (("task", 1e5, 10), ("domain", 1e10, 5e4), ("class", 1e9, 5e3)):
        assert cfg[(scen, "ewc")]["strategy"]["ewc_lambda"] == lam
        assert cfg[(scen, "si")]["strategy"]["si_c"] == c
        assert cfg[(scen, "er")]["strategy"]["mem_per_class"] == 100
    assert ("class", "icarl") in cfg and ("task", "icarl") not in cfg and ("domain", "icarl") not in cfg
    base = cfg[("task", "none")]
    assert base["model"]["hidden"] == [400, 400] and base["train"]["iterations"] == 2000
    assert base["train"]["lr"] == 0.001 and base["train"]["batch_size"] == 128
    assert base["benchmark"]["n_experiences"] == 5
    assert sorted({s.seed for s in specs}) == [2] and base["seed"] == 2   # the paper's seeds start at 2
    # permuted MNIST: the primary scenario by default
    pm = rp.load_protocol("vandeven2022-permutedmnist")
    assert {s.scenario for s in rp.expand(pm, seeds=1)} == {"domain"}


def test_split_mnist_seeds_use_the_papers_digit_orders():
    """The reference code seeds numpy with the run's seed, draws p = np.random.permutation(10) and
    relabels digit y as p[y]; context i holds labels 2i, 2i+1. Our class_order is argsort(p)."""
    np = pytest.importorskip("numpy")
    p = rp.load_protocol("vandeven2022-splitmnist")
    assert p.first_seed == 2 and rp.seed_list(p) == [2, 3, 4, 5, 6] and rp.seed_list(p, 20) == list(range(2, 22))
    for spec in rp.expand(p, seeds=20, scenarios=["domain"], methods=["none"]):
        np.random.seed(spec.seed)
        perm = np.random.permutation(list(range(10)))
        assert spec.config["benchmark"]["class_order"] == [int(d) for d in np.argsort(perm)], spec.seed
    # a seed the paper did not run draws its own order; --set wins over the seed's entry
    (zero,) = rp.expand(p, seeds=[0], scenarios=["domain"], methods=["none"])
    assert zero.config["benchmark"]["class_order"] == "random"
    (two,) = rp.expand(p, seeds=[2], scenarios=["domain"], methods=["none"],
                       overrides=[rp.parse_override("benchmark.class_order=null")])
    assert two.config["benchmark"]["class_order"] is None


def test_seed_configs_and_first_seed_in_a_protocol(tmp_path):
    data = _tiny_protocol()
    data.update(first_seed=3, seed_configs={3: {"train": {"lr": 0.5}}})
    p = rp.Protocol("t", data)
    rp.validate_protocol(data)
    specs = rp.expand(p)
    assert [s.seed for s in specs] == [3, 4, 3, 4]
    assert [s.config["train"]["lr"] for s in specs] == [0.5, 0.001, 0.5, 0.001]
    for bad, needle in (({"first_seed": -1}, "key 'first_seed': .*greater than or equal to 0"),
                        ({"seed_configs": {"x": {}}}, "key 'seed_configs': 'x' is not allowed as a key"),
                        ({"seed_configs": {3: [1]}}, r"key 'seed_configs.3': .*valid dictionary"),
                        ({"seed_configs": {3: {"train": {"lr": -1}}}}, r"seed_configs.3: config key 'train.lr'")):
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump({**_tiny_protocol(), **bad}))
        with pytest.raises(ConfigError, match=needle):
            rp.load_protocol(path)


@pytest.mark.parametrize("edit, needle", [
    # unknown keys, at every level: the message names the key and what is allowed there
    (lambda d: d.update(seed=3), r"unknown key 'seed'; allowed here: name, title, citation"),
    (lambda d: d["citation"].update(year=2022), r"unknown key 'citation.year'; allowed here: paper, table"),
    (lambda d: d["scenarios"]["task"].update(confg={}), r"unknown key 'scenarios.task.confg'; allowed here: label, "
                                                        "config, method_params"),
    (lambda d: d["methods"]["none"].update(lable="x"), r"unknown key 'methods.none.lable'; allowed here: label"),
    (lambda d: d["tolerance"].update(point=1.0), r"unknown key 'tolerance.point'; allowed here: points, se_multiplier"),
    (lambda d: d["published"].update(provenence="primary"), r"unknown key 'published.provenence'"),
    (lambda d: d["published"]["task"]["none"].update(std=1.0), r"unknown key 'published.task.none.std'; allowed "
                                                               "here: mean, sem, source"),
    (lambda d: d.update(notes={"general": [], "cell": {}}), r"unknown key 'notes.cell'; allowed here: general, cells"),
    (lambda d: d["scenarios"].update(bogus={}), r"key 'scenarios': 'bogus' is not allowed as a key here: .*'task', "
                                                "'domain' or 'class'"),
    # wrong types and values (not coerced: YAML 1.1 reads 1e5 as the string '1e5')
    (lambda d: d["published"]["task"]["none"].update(mean="high"), r"key 'published.task.none.mean': .*valid number "
                                                                   r"\(got 'high'\)"),
    (lambda d: d.update(tolerance={"points": "1e5"}), r"key 'tolerance.points': .*valid number \(got '1e5'\)"),
    (lambda d: d.update(seeds="5"), r"key 'seeds': .*valid integer \(got '5'\)"),
    (lambda d: d.update(tolerance={"points": -1}), r"key 'tolerance.points': .*greater than or equal to 0"),
    (lambda d: d.update(metric="acc"), r"key 'metric': .*'average_accuracy'"),
    (lambda d: d["published"].update(provenance="tertiary"), r"key 'published.provenance': .*'primary' or "
                                                             "'secondary'"),
    (lambda d: d.update(name="../elsewhere"), r"key 'name': .*pattern"),
    # missing required fields
    (lambda d: d.pop("name"), r"missing required key 'name'"),
    (lambda d: d.pop("base"), r"missing required key 'base'"),
    (lambda d: d["methods"]["none"].pop("config"), r"missing required key 'methods.none.config'"),
    (lambda d: d["methods"]["none"]["config"]["strategy"].pop("name"), r"missing required key "
                                                                       "'methods.none.config.strategy.name'"),
    (lambda d: d["published"]["task"]["none"].pop("mean"), r"missing required key 'published.task.none.mean'"),
    # names that must refer to the protocol's own scenarios and methods
    (lambda d: d["published"]["task"].update(nope={"mean": 1.0}), r"key 'published.task.nope': unknown method 'nope'; "
                                                                  "the protocol's methods: joint, none"),
    (lambda d: d["published"].update({"class": {"none": {"mean": 1.0}}}), r"key 'published.class': scenario 'class' "
                                                                          "is not defined"),
    (lambda d: d["methods"]["none"].update(scenarios=["domain"]), r"key 'methods.none.scenarios': scenario 'domain'"),
    (lambda d: d.update(default_scenarios=["class"]), r"key 'default_scenarios': scenario 'class'"),
    (lambda d: d["scenarios"]["task"].update(method_params={"ewc": {}}), r"key 'scenarios.task.method_params.ewc': "
                                                                         "unknown method 'ewc'"),
    (lambda d: d.update(notes={"cells": {"task": {"nobody": "x"}}}), r"key 'notes.cells.task.nobody': unknown method"),
    # RunConfig fragments, checked with the run config schema: the fragment's key, then the config key
    (lambda d: d["base"]["train"].update(lr=-1), r", base: config key 'train.lr': .*greater than 0"),
    (lambda d: d["base"]["train"].update(lrr=0.1), r", base: unknown config key 'train.lrr'; allowed keys here: "),
    (lambda d: d["methods"]["joint"]["config"].update(train={"lr": -1}), r", methods.joint.config: config key "
                                                                         "'train.lr'"),
    (lambda d: d["scenarios"]["task"]["config"].update(model={"head": "wide"}), r", scenarios.task.config: config key "
                                                                                "'model.head'"),
    (lambda d: d["methods"]["joint"]["config"]["strategy"].update(name="nope"), r", methods.joint.config: unknown "
                                                                                "strategy 'nope'"),
])
def test_protocol_mistakes_are_one_clear_message(tmp_path, edit, needle):
    data = _tiny_protocol()
    edit(data)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=needle) as exc:
        rp.load_protocol(path)
    assert str(exc.value).startswith(f"protocol {path}")   # names the file
    # one line; long only where it lists the allowed names (every strategy, by design)
    assert "\n" not in str(exc.value) and len(str(exc.value).split("; allowed: ")[0]) < 400


def test_a_protocol_file_must_be_a_mapping(tmp_path):
    path = tmp_path / "p.yaml"
    for text, needle in (("- 1\n", "must hold a mapping of protocol keys (got list)"),
                         ("", "must hold a mapping of protocol keys (got NoneType)"),
                         ("name: [unclosed\n", "could not parse protocol")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(needle)):
            rp.load_protocol(path)


def test_a_bad_config_in_a_protocol_names_scenario_and_method_at_load_time(tmp_path):
    data = _tiny_protocol()
    data["scenarios"]["task"]["method_params"] = {"none": {"ewc_lambda": 1.0}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=f"protocol {re.escape(str(path))}, scenario 'task', method 'none': "
                                          "unknown parameter 'strategy.ewc_lambda'"):
        rp.load_protocol(path)


def test_the_example_in_the_docs_is_a_valid_protocol():
    docs = Path(__file__).resolve().parents[1] / "docs" / "protocols.md"
    (block,) = re.findall(r"```yaml\n(.*?)```", docs.read_text(), re.S)
    data = yaml.safe_load(block)
    rp.validate_protocol(data, "docs/protocols.md")
    p = rp.Protocol(data["name"], data)
    specs = rp.expand(p, seeds=1, scenarios=p.scenarios)
    assert len(specs) == 3 * 4 + 1 and {s.method for s in specs if s.scenario == "class"} >= {"icarl"}


def test_the_schema_fills_in_the_documented_defaults():
    data = {k: v for k, v in _tiny_protocol().items() if k in ("name", "base", "scenarios", "methods")}
    del data["methods"]["joint"]["label"]
    spec = rp.validate_protocol(data)
    assert isinstance(spec, rp.ProtocolFile)
    p = rp.Protocol("t", data)
    assert (p.seeds, p.first_seed, p.metric, p.tolerance) == (5, 0, "average_accuracy", (3.0, 2.0))
    assert p.title == "t" and p.default_scenarios == ["task"] and p.label("joint") == "joint"
    assert p.published("task", "none") == {"mean": None, "sem": None} and p.reference("task", "none") is None


# ----------------------------------------------------------------------------- verdicts
@pytest.mark.parametrize("mean, se, pub, verdict, tol", [
    (50.0, 0.5, 52.9, "PASS", 3.0),     # within 3 points
    (50.0, 0.5, 47.1, "PASS", 3.0),
    (50.0, 2.5, 54.5, "PASS", 5.0),     # outside 3 points but within 2 SE (large SE)
    (50.0, 0.5, 53.5, "FAIL", 3.0),     # outside both
    (50.0, 2.5, 55.5, "FAIL", 5.0),
    (50.0, None, 52.0, "PASS", 3.0),    # one seed: only the 3-point rule
    (50.0, None, 54.0, "FAIL", 3.0),
    (50.0, 1.0, None, "n/a", None),     # no published value: no verdict
    (None, None, 50.0, "missing", None),
])
def test_verdict_rule(mean, se, pub, verdict, tol):
    assert rp.verdict(mean, se, pub) == (verdict, tol)


def test_standard_error_is_sample_sd_over_sqrt_n():
    assert rp.standard_error([1.0, 2.0, 3.0]) == pytest.approx(1.0 / 3 ** 0.5)
    assert rp.standard_error([4.0]) is None


def test_summary_on_hand_made_results():
    p = rp.Protocol("t", _tiny_protocol())
    specs = rp.expand(p, seeds=2)
    accs = {("none", 0): 0.50, ("none", 1): 0.52, ("joint", 0): 0.70, ("joint", 1): 0.74}
    results = {s.key: {"average_accuracy": accs[(s.method, s.seed)]} for s in specs}
    S = rp.summarize(p, specs, results)
    rows = {r["method"]: r for r in S["cells"]}
    assert rows["none"]["mean"] == pytest.approx(51.0) and rows["none"]["se"] == pytest.approx(1.0)
    assert rows["none"]["verdict"] == "PASS" and rows["none"]["diff"] == pytest.approx(-1.0)   # published 52
    assert rows["joint"]["verdict"] == "FAIL"                                                  # published 99
    assert S["status"] == "FAIL" and S["counts"] == {"PASS": 1, "FAIL": 1, "n/a": 0, "missing": 0}
    md = rp.render_markdown(S)
    assert "| None | 2 | 51.00 ± 1.00 | 52.00 ± 0.50 | -1.00 | ±3.00 | **PASS** |" in md


# ----------------------------------------------------------------------------- overrides
def test_overrides_mark_the_protocol_modified_except_execution_keys():
    p = rp.Protocol("t", _tiny_protocol())
    for text, modified in (("threads=1", False), ("device=cpu", False), ("train.iterations=6", True),
                           ("joint:train.lr=0.1", True)):
        ov = rp.parse_override(text)
        specs = rp.expand(p, seeds=1, overrides=[ov])
        assert rp.modified_by(p, specs, 1, None, None) is modified, text
    specs = rp.expand(p, seeds=1, overrides=[rp.parse_override("joint:train.lr=0.1")])
    assert {s.method: s.config["train"]["lr"] for s in specs} == {"none": 0.001, "joint": 0.1}
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        rp.expand(p, overrides=[rp.parse_override("nope:train.lr=0.1")])
    with pytest.raises(ConfigError, match="unknown scenario 'class'"):
        rp.expand(p, scenarios=["class"])


# ----------------------------------------------------------------------------- resume + CLI
def test_resume_reuses_finished_runs_and_recomputes_only_what_changed(tmp_path, capsys, monkeypatch):
    out = tmp_path / "rep"
    argv = ["reproduce", "vandeven2022-splitmnist", "--scenarios", "task", "--methods", "none,joint", "--seeds", "2",
            *TINY, "--out", str(out), "--quiet"]
    calls = []
    real = rp.store.run_and_store
    monkeypatch.setattr(rp.store, "run_and_store", lambda item: calls.append(item) or real(item))
    code, stdout, _ = _run(argv, capsys)
    # 5-iteration runs on digits are far from the published Split MNIST values: FAIL, exit 1
    assert code == 1 and len(calls) == 4
    assert "MODIFIED PROTOCOL" in stdout and "4 runs computed, 0 reused" in " ".join(stdout.split())
    files = sorted((out / "runs").rglob("*.json"))
    assert len(files) == 4
    summary = json.loads((out / "results.json").read_text())
    assert summary["modified"] is True and summary["status"] == "FAIL"
    assert "modified protocol: verdicts are not comparable".upper() in (out / "results.md").read_text()

    calls.clear()
    code, stdout, _ = _run(argv, capsys)  # same command: nothing recomputed
    assert code == 1 and calls == [] and "0 runs computed, 4 reused" in " ".join(stdout.split())
    assert json.loads((out / "results.json").read_text())["cells"] == summary["cells"]

    # a file written before a new optional (null) config key joined the schema, under another
    # name: found by its stored config, renamed to the current name, reused
    entry = json.loads(files[1].read_text())
    entry["config"]["benchmark"]["some_future_key"] = None
    entry["key"] = "0" * 64
    legacy = files[1].with_name(files[1].name.split("-")[0] + "-" + "0" * 16 + ".json")
    legacy.write_text(json.dumps(entry))
    files[1].unlink()
    code, stdout, _ = _run(argv, capsys)
    assert calls == [] and "0 runs computed, 4 reused" in " ".join(stdout.split())
    assert files[1].exists() and not legacy.exists()

    files[0].unlink()  # an interrupted run: only the missing one is computed
    code, stdout, _ = _run(argv, capsys)
    assert len(calls) == 1 and "1 runs computed, 3 reused" in " ".join(stdout.split())

    calls.clear()  # a changed config is not mistaken for a finished run
    changed = [a if a != "none,joint" else "none" for a in argv[:-3]]
    code, stdout, _ = _run(changed + ["--set", "train.iterations=6", "--out", str(out), "--quiet"], capsys)
    assert len(calls) == 2 and "2 runs computed, 0 reused" in " ".join(stdout.split())
    calls.clear()  # execution keys (device, threads) do not invalidate the cache
    code, stdout, _ = _run(argv[:-3] + ["--set", "threads=2", "--out", str(out), "--quiet"], capsys)
    assert calls == [] and "0 runs computed, 4 reused" in " ".join(stdout.split())


def test_a_failing_cell_gives_a_non_zero_exit_code(tmp_path, capsys):
    data = _tiny_protocol()
    data["published"]["task"]["joint"] = {"mean": 150.0, "sem": None}   # impossible
    data["published"]["task"]["none"] = {"mean": None, "sem": None}
    path = tmp_path / "impossible.yaml"
    path.write_text(yaml.safe_dump(data))
    code, stdout, _ = _run(["reproduce", str(path), "--seeds", "1", "--out", str(tmp_path / "o"), "--quiet"], capsys)
    assert code == 1
    assert "FAIL" in stdout and "MODIFIED" not in stdout
    summary = json.loads((tmp_path / "o" / "results.json").read_text())
    assert summary["status"] == "FAIL" and summary["counts"]["FAIL"] == 1 and summary["counts"]["n/a"] == 1
    assert "**FAIL**" in (tmp_path / "o" / "results.md").read_text()
    # with no published value anywhere there is no verdict, and no failure
    data["published"]["task"]["joint"] = {"mean": None, "sem": None}
    path.write_text(yaml.safe_dump(data))
    code, _, _ = _run(["reproduce", str(path), "--seeds", "1", "--out", str(tmp_path / "o"), "--quiet"], capsys)
    assert code == 0


def test_permuted_mnist_protocol_runs_shortened(tmp_path, capsys):
    """The second shipped protocol end to end, shortened (2 permutations x 20 iterations): every
    method of its primary scenario runs on the real permuted MNIST and learns (chance is 10 %)."""
    out = tmp_path / "pm"
    code, stdout, _ = _run(["reproduce", "vandeven2022-permutedmnist", "--seeds", "1", "--set", "train.iterations=20",
                            "--set", "benchmark.n_experiences=2", "--out", str(out), "--quiet"], capsys)
    assert code in (0, 1) and "MODIFIED PROTOCOL" in stdout
    summary = json.loads((out / "results.json").read_text())
    assert summary["modified"] is True
    cells = {c["method"]: c for c in summary["cells"]}
    assert set(cells) == {"none", "joint", "ewc", "si", "lwf", "er"}
    assert {c["scenario"] for c in cells.values()} == {"domain"}
    for c in cells.values():
        assert c["n"] == 1 and c["mean"] > 50.0, c
    stored = json.loads(next((out / "runs" / "domain" / "er").rglob("*.json")).read_text())
    assert stored["config"]["model"]["hidden"] == [1000, 1000] and stored["config"]["train"]["lr"] == 0.0001
    assert stored["config"]["strategy"]["mem_per_class"] == 10


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d["methods"]["none"].update(lable="x"), "unknown key 'methods.none.lable'"),
    (lambda d: d.update(seeds="5"), "key 'seeds': Input should be a valid integer"),
    (lambda d: d.pop("methods"), "missing required key 'methods'"),
    (lambda d: d["base"]["train"].update(lr=-1), "base: config key 'train.lr': Input should be greater than 0"),
])
def test_cli_refuses_a_bad_protocol_file_before_any_run(tmp_path, capsys, monkeypatch, edit, needle):
    calls = []
    monkeypatch.setattr(rp.store, "run_and_store", lambda item: calls.append(item))
    data = _tiny_protocol()
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    code, stdout, err = _run(["reproduce", str(path), "--seeds", "1", "--out", str(tmp_path / "o"), "--quiet"], capsys)
    err = " ".join(err.split())
    assert code == 2 and calls == [] and not (tmp_path / "o").exists()
    assert needle in err and str(path) in err and "Traceback" not in err


def test_cli_list_and_errors(capsys, tmp_path):
    code, stdout, _ = _run(["reproduce", "--list"], capsys)
    assert code == 0
    for name in rp.available_protocols():
        assert name in stdout
    code, _, err = _run(["reproduce", "no-such-protocol", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "unknown protocol 'no-such-protocol'" in " ".join(err.split())
    code, _, err = _run(["reproduce", "vandeven2022-splitmnist", "--methods", "bogus", "--out", str(tmp_path / "x")],
                        capsys)
    assert code == 2 and "unknown method 'bogus'" in " ".join(err.split())
    code, _, err = _run(["reproduce", "vandeven2022-splitmnist", "--seeds", "x", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "--seeds" in err


def _tiny_protocol() -> dict:
    return {
        "name": "tiny",
        "title": "a tiny protocol for tests",
        "citation": {"paper": "nobody (2099)"},
        "seeds": 2,
        "base": {"benchmark": {"name": "split-digits", "n_experiences": 5}, "model": {"name": "mlp", "hidden": [16]},
                 "train": {"iterations": 5, "batch_size": 32, "reset_optimizer": False}, "eval": {"every": None}},
        "scenarios": {"task": {"label": "Task-IL", "config": {"benchmark": {"scenario": "task"}}}},
        "methods": {"none": {"label": "None", "config": {"strategy": {"name": "finetune"}}},
                    "joint": {"label": "Joint", "config": {"strategy": {"name": "joint"}}}},
        "tolerance": {"points": 3.0, "se_multiplier": 2.0},
        "published": {"source": "made up for a test", "task": {"none": {"mean": 52.0, "sem": 0.5},
                                                               "joint": {"mean": 99.0, "sem": 0.1}}},
    }
