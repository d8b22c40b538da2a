"""Sparse Model Soups (lifelong.soups), the run keys it rests on (model.init_from, model.mask,
train.seed: lifelong.strategies._start_from) and ``lifelong soup``."""
import copy
import json

import pytest
import torch

from lifelong.config import parse_config
from lifelong.errors import ConfigError
from lifelong.models import build_model
from lifelong.runner import build_strategy, make_optimizer_factory, run
from lifelong.soups import (_Models, average_states, check_soupable, geometric_sparsities, retrain_values,
                            sparse_model_soups)
from lifelong.sparse import count_parameters, strategy_masks
from lifelong.strategies.base import Strategy
from lifelong.streams.presets import build_benchmark
from lifelong.training import train

from _cli import run_cli
from test_resume import InMemory

ER = {"benchmark": {"name": "split-digits", "scenario": "class"}, "model": {"hidden": [64]},
      "strategy": {"name": "er", "mem_size": 100}, "train": {"iterations": 30, "batch_size": 32, "lr": 0.01},
      "eval": {"every": None}, "threads": 1, "device": "cpu", "seed": 0}
TINY = {"benchmark": {"name": "split-digits", "scenario": "task"}, "model": {"hidden": [16]},
        "strategy": {"name": "finetune"}, "train": {"iterations": 8, "batch_size": 32, "lr": 0.01},
        "eval": {"every": None}, "threads": 1, "device": "cpu", "seed": 0}


@pytest.fixture(scope="module")
def soups(tmp_path_factory):
    out = tmp_path_factory.mktemp("sms") / "soup"
    return out, sparse_model_soups(copy.deepcopy(ER), out, sparsities=[0.5, 0.8], retrains=3)


def load(path):
    return torch.load(path, weights_only=True)


def test_mask_shared_weights_outside_zero_soup_is_the_average_and_sparsity_reached(soups):
    out, res = soups
    previous = None
    for k, s in enumerate([0.5, 0.8], start=1):
        mask = load(out / f"cycle{k}" / "mask.pt")
        total = sum(m.numel() for m in mask.values())
        assert sum(int(m.sum()) for m in mask.values()) == round((1 - s) * total)  # global: exactly s of the weights
        if previous is not None:
            assert all(not (m & ~previous[n]).any() for n, m in mask.items())  # pruning never grows
        states = [load(out / f"cycle{k}" / f"retrain{i}.pt") for i in range(3)]
        soup = load(out / f"cycle{k}" / "soup.pt")
        for name, m in mask.items():  # every retrain and the soup: zero outside the one mask
            for st in states + [soup]:
                assert torch.equal(st[name][~m], torch.zeros(int((~m).sum())))
        for key, v in soup.items():  # the soup is the hand-computed uniform average
            if v.is_floating_point():
                torch.testing.assert_close(v, (states[0][key] + states[1][key] + states[2][key]) / 3, rtol=0,
                                           atol=1e-6)
                assert not torch.equal(states[0][key], states[1][key])  # the retrains differ (batch order)
            else:
                assert torch.equal(v, states[0][key])
        row = res["cycle_results"][k - 1]
        assert row["measured_sparsity"] == pytest.approx(s, abs=1e-3)
        biases = sum(v.numel() for n, v in soup.items() if n.endswith(".bias"))
        assert row["parameters"]["nonzero"] == round((1 - s) * total) + biases  # biases stay dense
        previous = mask


def test_a_soup_is_scored_as_a_run_scores_its_final_model(soups):
    out, res = soups
    models = _Models(parse_config(ER))
    assert models.accuracy(load(out / "dense.pt")) == res["dense"]["per_experience"]
    retrain = res["cycle_results"][0]["retrains"][2]
    assert models.accuracy(load(out / "cycle1" / "retrain2.pt")) == retrain["per_experience"]
    assert res["values"] == [1, 2, 3]  # train.seed of each retrain; the stream follows seed 0


def test_soup_beats_the_mean_retrain_and_imp_for_er_on_split_digits(soups):
    """Class-IL ER on digits (seed 0): averaging the retrains is better than the average retrain
    at each cycle, and than IMP at the final sparsity (measured: 88.9 vs 87.9 and 87.5 vs 86.7;
    86.7 IMP)."""
    _, res = soups
    for c in res["cycle_results"]:
        assert c["soup"]["accuracy"] >= c["mean_retrain"]
    assert res["cycle_results"][-1]["soup"]["accuracy"] > res["cycle_results"][-1]["imp"]["accuracy"]
    # IMP's cycle 1 is the first retrain (same start, mask and seed)
    assert res["cycle_results"][0]["imp"]["accuracy"] == res["cycle_results"][0]["retrains"][0]["accuracy"]


def test_mask_holds_zero_after_every_step_and_heads_created_later_load(tmp_path):
    """A task-IL run from saved weights: each task's head is loaded when it appears; with a mask the
    weights outside it are zero whenever a hook reads them."""
    dense = run(TINY)
    torch.save(dense["_state"]["model"], tmp_path / "dense.pt")
    still = copy.deepcopy(TINY)
    still["model"]["init_from"] = str(tmp_path / "dense.pt")
    still["train"]["lr"] = 1e-12  # no learning: the run must score what the saved model scored
    again = run(still)
    assert again["accuracy_matrix"][-1] == dense["accuracy_matrix"][-1]
    assert "StartFrom" in again["strategy"] and again["config"]["strategy"]["name"] == "finetune"

    state = dense["_state"]["model"]
    masks = {n: torch.rand(v.shape, generator=torch.Generator().manual_seed(1)) < 0.3 for n, v in state.items()
             if n.endswith("weight")}
    torch.save(masks, tmp_path / "mask.pt")
    cfg = copy.deepcopy(TINY)
    cfg["model"].update(init_from=str(tmp_path / "dense.pt"), mask=str(tmp_path / "mask.pt"))
    cfg = parse_config(cfg)
    strategy = build_strategy(cfg)
    seen = []

    class Check(Strategy):
        name = "check"

        def _check(self):
            params = dict(self.model.named_parameters())
            for n, m in masks.items():
                if n in params:
                    assert torch.equal(params[n].detach()[~m], torch.zeros(int((~m).sum())))
                    seen.append(n)

        def before_experience(self, exp):
            self._check()

        def after_step(self, batch, logits):
            self._check()

    strategy.members.append(Check())  # after StartFrom's own hooks, as any later member
    stream = build_benchmark(cfg.benchmark, cfg.seed)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "task", hidden=[16])
    strategy.setup(model, "cpu", 0)
    result = train(stream, strategy, make_optimizer_factory(cfg.train), batch_size=32, iterations=8)
    assert {n for n in seen if n.startswith("head.")} == {n for n in masks if n.startswith("head.")}  # all 5 heads
    assert len(seen) > 40
    total, nonzero = count_parameters(model, strategy_masks(strategy))
    assert nonzero == total - sum(int((~m).sum()) for m in masks.values())
    assert len(result.accuracy_matrix) == 5


def test_sequential_and_process_executors_give_identical_numbers(tmp_path):
    a = sparse_model_soups(copy.deepcopy(TINY), tmp_path / "seq", sparsities=[0.6], retrains=2)
    b = sparse_model_soups(copy.deepcopy(TINY), tmp_path / "proc", sparsities=[0.6], retrains=2,
                           executor="process", workers=1)
    assert a["rows"] == b["rows"] and a["cycle_results"] == b["cycle_results"]
    for name in ("dense.pt", "cycle1/soup.pt", "cycle1/mask.pt"):
        sa, sb = load(tmp_path / "seq" / name), load(tmp_path / "proc" / name)
        assert all(torch.equal(sa[k], sb[k]) for k in sa if torch.is_tensor(sa[k]))


def test_weight_decay_variation_and_schedules():
    assert geometric_sparsities(0.9, 2) == pytest.approx([1 - 0.1 ** 0.5, 0.9])  # the reference's schedule
    assert retrain_values("weight_decay", 3, 0) == [0.0, 1e-5, 1e-4]
    assert retrain_values("seed", 2, 5) == [6, 7]
    assert average_states([{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([3.0, 0.0])}])["w"].tolist() == [2, 0]


def test_weight_decay_retrains_keep_the_seed_and_differ_in_decay(tmp_path):
    res = sparse_model_soups(copy.deepcopy(TINY), tmp_path / "wd", sparsities=[0.5], retrains=2,
                             vary="weight_decay", weight_decays=[0.0, 0.1])
    assert [r["value"] for r in res["cycle_results"][0]["retrains"]] == [0.0, 0.1]
    a, b = (load(tmp_path / "wd" / "cycle1" / f"retrain{i}.pt") for i in range(2))
    assert b["backbone.net.1.weight"].norm() < a["backbone.net.1.weight"].norm()  # decay shrinks the weights


@pytest.mark.parametrize("kwargs, match", [
    ({"retrains": 0}, "--retrains must be an integer >= 1"),
    ({"sparsity": 1.0}, r"--sparsity must be a number in \(0, 1\)"),
    ({"sparsity": 0.0}, r"--sparsity must be a number in \(0, 1\)"),
    ({"vary": "lr"}, "--vary must be one of seed, weight_decay"),
    ({"sparsities": [0.8, 0.5]}, "must increase"),
    ({"vary": "weight_decay", "retrains": 2, "weight_decays": [0.1]}, "one per retrain"),
    ({"weight_decays": [0.1, 0.2, 0.3]}, "--weight-decays is for --vary weight_decay"),
])
def test_bad_values_refused_with_one_message(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        sparse_model_soups(copy.deepcopy(TINY), tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_bad_keys_and_methods_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"'model.init_from': file not found: .*nope.pt"):
        parse_config({"model": {"init_from": str(tmp_path / "nope.pt")}})
    with pytest.raises(ConfigError, match=r"'model.mask': file not found"):
        parse_config({"model": {"mask": str(tmp_path / "nope.pt")}})
    with pytest.raises(ConfigError, match=r"config key 'train.seed': Input should be a valid integer"):
        parse_config({"train": {"seed": "abc"}})
    (tmp_path / "junk.pt").write_text("not torch")
    with pytest.raises(ConfigError, match="could not read .*junk.pt as a saved state dict"):
        run(dict(copy.deepcopy(TINY), model={"hidden": [16], "init_from": str(tmp_path / "junk.pt")}))
    torch.save({"other.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="holds 'other.weight', which this model lacks"):
        run(dict(copy.deepcopy(TINY), model={"hidden": [16], "init_from": str(tmp_path / "other.pt")}))
    for name, why in (("icarl", "owns predict"), ("ncm", "without gradient steps")):
        with pytest.raises(ConfigError, match=why):
            check_soupable(build_strategy(parse_config({"strategy": {"name": name}})))
    granet = dict(copy.deepcopy(TINY), strategy={"name": "granet"})
    granet["benchmark"] = {"name": "split-digits", "scenario": "class"}
    with pytest.raises(ConfigError, match="'granet' keeps masks of its own"):
        sparse_model_soups(granet, tmp_path / "g", sparsities=[0.5], retrains=1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        sparse_model_soups(copy.deepcopy(TINY), tmp_path / "full", sparsities=[0.5], retrains=1)


@pytest.mark.parametrize("argv, match", [
    (["--retrains", "0"], "Invalid value for '--retrains'"),
    (["--sparsity", "1.0"], "Invalid value for '--sparsity'"),
    (["--vary", "lr"], "Invalid value for '--vary'"),
    (["--set", "model.init_from=/nonexistent/soup.pt"], "file not found: /nonexistent/soup.pt"),
])
def test_cli_refuses_bad_values(capsys, tmp_path, argv, match):
    code, out, err = run_cli(["soup", "--benchmark", "split-digits", "--out", str(tmp_path / "o"), *argv], capsys)
    assert code == 2 and match in " ".join(err.split())
    assert not (tmp_path / "o").exists()


def test_cli_prints_the_table(capsys, tmp_path):
    argv = ["soup", "--benchmark", "split-digits", "--scenario", "task", "--iterations", "5", "--set",
            "model.hidden=[16]", "--set", "eval.every=null", "--set", "threads=1", "--sparsities", "0.5",
            "--retrains", "2", "--out", str(tmp_path / "o")]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "| 1 | 50.0% |" in out and "best retrain" in out
    first = (tmp_path / "o" / "soups.json").read_bytes()
    assert json.loads(first)["retrains"] == 2
    code, out, err = run_cli(argv, capsys)  # the same soup again: resumed (finished), the same numbers
    assert code == 0 and "| 1 | 50.0% |" in out and (tmp_path / "o" / "soups.json").read_bytes() == first
    code, out, err = run_cli(argv[:-3] + ["3", "--out", str(tmp_path / "o")], capsys)  # another soup: refused
    assert code == 2 and "holds another soup" in " ".join(err.split())


def test_a_retrain_with_late_heads_resumes_bit_for_bit(tmp_path):
    """Task-IL: a resumed retrain must not load the saved weights again into heads it has trained."""
    dense = run(TINY)["_state"]["model"]
    torch.save(dense, tmp_path / "dense.pt")
    torch.save({n: v != 0 for n, v in dense.items() if n.endswith("weight") and v.abs().mean() > 0}
               | {"backbone.net.1.weight": dense["backbone.net.1.weight"].abs() > 0.1}, tmp_path / "mask.pt")
    cfg = dict(copy.deepcopy(TINY), strategy={"name": "er", "mem_size": 20}, seed=0)
    cfg["model"].update(init_from=str(tmp_path / "dense.pt"), mask=str(tmp_path / "mask.pt"))
    ck = InMemory(5)
    ref = run(cfg, checkpointer=ck)
    inside = [s for s in ck.snaps if s["next"][1] > 0 and s["next"][0] >= 2]
    for snap in inside[-1:] + [s for s in ck.snaps if s["next"][1] == 0][-1:]:
        res = run(cfg, resume=snap)
        assert res["accuracy_matrix"] == ref["accuracy_matrix"] and res["train_loss"] == ref["train_loss"]
