"""The benchmark scripts (benchmarks/) still run, with tiny settings. No timing is asserted:
speed goals live in the benchmarks' own output (benchmarks/results/)."""
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

overhead = pytest.importorskip("overhead")
long_stream = pytest.importorskip("long_stream")
eval_cost = pytest.importorskip("eval_cost")
run_all = pytest.importorskip("run_all")


def test_overhead_runs_and_both_sides_compute_the_same(tmp_path):
    out = overhead.main(["--iterations", "3", "--pairs", "1", "--test-per-exp", "50", "--out", str(tmp_path / "o.json"), "--quiet"])
    assert set(out["strategies"]) == {"finetune", "er", "ewc", "lwf"}
    for name, r in out["strategies"].items():
        assert len(r["ratios"]) == 1 and r["ratio"]["median"] > 0, name
        assert r["check"]["steps"] == 15, name
        assert r["check"]["first_losses_max_abs_diff"] < 1e-5, name
    # the hand-written loop is the same computation as lifelong's: same numbers
    for name in ("finetune", "er", "ewc"):
        assert out["strategies"][name]["check"]["losses_identical"], name
        assert out["strategies"][name]["check"]["accuracy_identical"], name
    assert json.loads((tmp_path / "o.json").read_text())["benchmark"] == "overhead"


def test_long_stream_runs(tmp_path):
    out = long_stream.main(["--experiences", "5", "--train-per-exp", "100", "--test-per-exp", "20",
                            "--iterations", "2", "--mem-size", "50", "--window", "2",
                            "--out", str(tmp_path / "l.json"), "--quiet"])
    per = out["per_experience"]
    assert len(per["train_s"]) == len(per["eval_s"]) == len(per["rss_bytes"]) == 5
    assert out["summary"]["buffer_size_constant"]
    assert out["summary"]["buffer_samples_seen"] == 5 * 2 * 100
    assert json.loads((tmp_path / "l.json").read_text())["benchmark"] == "long_stream"


def test_eval_cost_runs(tmp_path):
    out = eval_cost.main(["--iterations", "2", "--settings", "none,2/50", "--out", str(tmp_path / "e.json"),
                          "--quiet"])
    runs = {(r["strategy"], r["eval_every"]): r for r in out["runs"]}
    assert set(runs) == {("finetune", None), ("finetune", 2), ("er", None), ("er", 2)}
    assert runs[("er", None)]["continual_eval_s"] == 0 and runs[("er", 2)]["continual_evaluations"] == 5
    assert all(0 < r["eval_share"] < 1 for r in out["runs"])


def test_run_all_writes_results_and_readme(tmp_path):
    run_all.main(["--results-dir", str(tmp_path), "--only", "long_stream",
                  "--extra", "long_stream:--experiences 3 --train-per-exp 50 --test-per-exp 10 --iterations 1 "
                  "--mem-size 20 --quiet"])
    assert json.loads((tmp_path / "long_stream.json").read_text())["summary"]["window"] >= 1
    assert "Long stream" in (tmp_path / "README.md").read_text()


def test_checkpoint_cost_runs(tmp_path):
    import checkpoint_cost

    out = checkpoint_cost.main(["--iterations", "4", "--every", "2", "--benchmark", "split-digits", "--quiet",
                                "--out", str(tmp_path / "c.json")])
    rows = {(r["strategy"], r["every_iterations"]): r for r in out["rows"]}
    assert rows[("er", None)]["saves"] == 4  # the ends of experiences 1-4 (the last one is the final write)
    assert rows[("er", 2)]["saves"] == 4 + 5  # plus iteration 2 of each experience
    assert all(0 < r["share"] < 1 for r in out["rows"])


def test_gpu_check_runs_its_checks_on_the_cpu(capsys):
    import gpu_check

    assert gpu_check.main(["--device", "cpu", "--quick", "--benchmark", "split-digits", "--quiet"]) == 0
    assert "OK: every model and strategy tensor on cpu" in capsys.readouterr().out


@pytest.mark.slow  # starts a process pool and a local Ray instance (about 30 s on a loaded 2-core machine)
def test_ray_sweep_runs_both_executors_and_they_agree(tmp_path):
    pytest.importorskip("ray")
    import ray_sweep

    out = ray_sweep.main(["--quick", "--runs", "4", "--iterations", "1", "--quiet", "--out", str(tmp_path / "r.json")])
    assert set(out["executors"]) == {"process", "ray"} and out["runs"] == 4
    assert out["summary"]["same_numbers"] is True
    assert json.loads((tmp_path / "r.json").read_text())["benchmark"] == "ray_sweep"


def test_method_grid_runs_its_cells_resumes_and_tabulates(tmp_path, capsys):
    method_grid = pytest.importorskip("method_grid")
    argv = ["--family", "isolation", "--out", str(tmp_path / "g"), "--cells", "split-digits:task",
            "--methods", "finetune,packnet", "--seeds", "0", "--iterations", "2"]
    assert method_grid.main(argv) == 0
    table = capsys.readouterr().out
    assert "| split-digits | task | finetune | 1 |" in table and "| split-digits | task | packnet | 1 |" in table
    # rerun: every finished run is reused; a method without the scenario is skipped and named
    assert method_grid.main(["--family", "bayesian", "--out", str(tmp_path / "g"), "--cells", "split-digits:class",
                             "--methods", "hnet", "--seeds", "0", "--iterations", "2"]) == 0
    assert "not run (scenario not supported): hnet (class)" in capsys.readouterr().out
    assert method_grid.main(argv + ["--table-only"]) == 0
    assert capsys.readouterr().out.count("| split-digits | task |") == 2


def test_online_grid_runs_its_cells_reuses_them_and_tabulates(tmp_path, capsys, monkeypatch):
    online_grid = pytest.importorskip("online_grid")
    argv = ["--out", str(tmp_path / "o"), "--benchmarks", "split-digits", "--mems", "20", "--methods",
            "finetune,er,gdumb", "--seeds", "0"]
    assert online_grid.main(argv) == 0
    table = capsys.readouterr().out
    assert "| split-digits | - | finetune | 1 |" in table and "| split-digits | 20 | er | 1 |" in table
    # GDumb with its own 128 passes over the memory, in a folder of its own; no online accuracy
    gdumb = next(line for line in table.splitlines() if "| gdumb passes128 | 1 |" in line)
    assert gdumb.split("|")[6].strip() == "-"
    cfg = json.loads((tmp_path / "o/split-digits/m20/gdumb-passes128/seed-0/results.json").read_text())["config"]
    assert cfg["strategy"] == {"name": "gdumb", "mem_size": 20, "passes": 128}

    def no_run(*a):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(online_grid, "run_one", no_run)  # rerun: every finished run is reused
    assert online_grid.main(argv) == 0
    capsys.readouterr()
    # --per-experience: each experience's accuracy right after it was learnt and at the end, from the matrix
    assert online_grid.main(argv + ["--per-experience", "split-digits"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| memory | method | seeds | exp 0 learnt |") and "exp 4 final" in lines[0]
    er = next(line for line in lines if line.startswith("| 20 | er | 1 |")).strip("|").split("|")
    mat = json.loads((tmp_path / "o/split-digits/m20/er/seed-0/results.json").read_text())["accuracy_matrix"]
    assert [float(v) for v in er[3:]] == [round(100 * mat[i][i], 1) for i in range(5)] + \
        [round(100 * v, 1) for v in mat[-1]]
    with pytest.raises(SystemExit):
        online_grid.main(argv + ["--per-experience", "split-mnist"])
    assert "--per-experience split-mnist: not one of --benchmarks" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a folder with no run of the grid: said, not an empty table
        online_grid.main(["--out", str(tmp_path / "empty")] + argv[2:] + ["--per-experience", "split-digits"])
    assert "no finished run of the grid's settings" in capsys.readouterr().err
    doc = tmp_path / "online.md"  # --update-doc: the table between the markers, the rest kept
    doc.write_text("intro\n<!-- grid:online -->\nold\n<!-- /grid -->\nafter\n")
    assert online_grid.main(argv + ["--table-only", "--update-doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("intro\n<!-- grid:online -->\n\n| benchmark |") and text.endswith("<!-- /grid -->\nafter\n")
    assert "| split-digits | 20 | er | 1 |" in text and "\nold\n" not in text
    doc.write_text("no markers")  # refused before any run (run_one would fail), the file untouched
    with pytest.raises(SystemExit, match="no '<!-- grid:online -->'"):
        online_grid.main(argv[:-2] + ["--seeds", "7", "--update-doc", str(doc)])
    assert doc.read_text() == "no markers"
    with pytest.raises(SystemExit):  # a method outside the grid is refused by name
        online_grid.main(argv[:-4] + ["--methods", "ewc"])
    assert "methods outside the grid: ewc" in capsys.readouterr().err
    for flag, bad, said in (("--mems", "200,big", "--mems must list"), ("--mems", "0", "--mems must list"),
                            ("--seeds", "a-b", "--seeds must look like"),
                            ("--benchmarks", "split-mnst", "unknown benchmarks: split-mnst")):
        with pytest.raises(SystemExit):  # refused before any run, by name
            online_grid.main(argv[:2] + [flag, bad] + ([] if flag == "--benchmarks" else argv[2:4]))
        assert said in capsys.readouterr().err


def test_method_grid_passes_a_cells_own_settings(tmp_path, monkeypatch):
    # the bayesian family's own methods measure only the task-aware matrix on Permuted MNIST; no other
    # cell does, nor the baselines (their runs there are the isolation grid's)
    method_grid = pytest.importorskip("method_grid")
    calls = []
    monkeypatch.setattr(method_grid.subprocess, "call", lambda cmd, **kw: calls.append(" ".join(cmd)) or 0)
    assert method_grid.main(["--family", "bayesian", "--out", str(tmp_path), "--methods", "hnet,finetune",
                             "--cells", "permuted-mnist:task,split-mnist:task"]) == 0
    perm_hnet, perm_ft, split_hnet, split_ft = calls
    assert "--set eval.task_agnostic=false" in perm_hnet and "benchmark.n_experiences=10" in perm_hnet
    assert not any("task_agnostic" in c for c in (perm_ft, split_hnet, split_ft))
    calls.clear()
    assert method_grid.main(["--family", "isolation", "--out", str(tmp_path), "--methods", "hat",
                             "--cells", "permuted-mnist:task"]) == 0
    assert "task_agnostic" not in calls[0]


def test_online_grid_runs_the_30_class_stream_in_class_il(tmp_path, monkeypatch):
    # mnist-fashion-animal's default scenario is domain-IL (10 shared outputs): the grid's 30-class stream
    # sets class-IL, and a domain-IL run found in its folders is not one of its cells
    online_grid = pytest.importorskip("online_grid")
    calls = []
    monkeypatch.setattr(online_grid.subprocess, "call", lambda cmd, **kw: calls.append(" ".join(cmd)) or 0)
    online_grid.run_one(tmp_path, "mnist-fashion-animal", 200, "er", 0, None)
    online_grid.run_one(tmp_path, "split-mnist", 200, "er", 0, None)
    assert "--set benchmark.scenario=class" in calls[0] and "scenario" not in calls[1]
    cfg = {"benchmark": {"name": "mnist-fashion-animal"}, "strategy": {"name": "er", "mem_size": 200},
           "model": {"name": "mlp"}, **{k.split(".")[0]: {} for k in online_grid.SETTINGS}}
    for k, v in online_grid.SETTINGS.items():
        cfg[k.split(".")[0]][k.split(".")[1]] = v
    run = {"status": "complete", "config": cfg}
    assert online_grid.key_of(run) is None  # the preset's default: domain-IL
    cfg["benchmark"]["scenario"] = "class"
    assert online_grid.key_of(run) == ("mnist-fashion-animal", 200, "er")
    cfg["benchmark"] = {"name": "split-mnist"}  # a split preset: class-IL by default
    assert online_grid.key_of(run) == ("split-mnist", 200, "er")


def test_online_grid_runs_split_cifar10_from_a_user_given_folder(tmp_path, capsys, monkeypatch):
    # issue 14: the same command runs CIFAR-10 from a folder (tiny files the test writes); the folder
    # goes to the benchmarks read from a folder only (a shipped one refuses benchmark.data_dir)
    online_grid = pytest.importorskip("online_grid")
    from test_data import _write_cifar10

    _write_cifar10(tmp_path / "data" / "cifar-10-batches-py", n=20)
    argv = ["--out", str(tmp_path / "o"), "--benchmarks", "split-cifar10", "--mems", "20", "--methods", "er",
            "--seeds", "0", "--data-dir", str(tmp_path / "data")]
    assert online_grid.main(argv) == 0
    assert "| split-cifar10 | 20 | er | 1 |" in capsys.readouterr().out
    res = json.loads((tmp_path / "o/split-cifar10/m20/er/seed-0/results.json").read_text())
    assert res["status"] == "complete" and len(res["accuracy_matrix"]) == 5
    assert res["config"]["online"]["batch_size"] == 10 and 0 <= res["online_accuracy"] <= 1
    calls = []
    monkeypatch.setattr(online_grid.subprocess, "call", lambda cmd, **kw: calls.append(cmd) or 0)
    online_grid.run_one(tmp_path, "split-mnist", 20, "er", 0, str(tmp_path / "data"))
    assert "--data-dir" not in calls[0]
    with pytest.raises(SystemExit):  # a folder no benchmark of the grid reads: refused by name, nothing run
        online_grid.main(argv[:2] + ["--benchmarks", "split-mnist"] + argv[4:])
    assert "--data-dir applies to a benchmark read from a folder" in capsys.readouterr().err
    assert len(calls) == 1


def test_online_grid_judges_each_claim_on_paired_seeds():
    online_grid = pytest.importorskip("online_grid")

    def runs(accs):
        return {s: {"average_accuracy": a} for s, a in accs.items()}

    found = {("b", 200, "er"): runs({0: 0.70, 1: 0.72, 2: 0.71}), ("b", 200, "uer"): runs({0: 0.80, 1: 0.70}),
             ("b", 200, "scr"): runs({0: 0.90, 1: 0.91, 2: 0.95}), ("b", None, "sharp"): runs({0: 0.5, 1: 0.6}),
             ("b", 500, "er"): runs({0: 0.75})}
    text = online_grid.claims(found, ["b"], [200, 500])
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): line for line in text.splitlines()[2:]}
    # UER - ER on seeds 0 and 1 only (seed 2 has no UER run): +10 and -2 points, mean 4, std 8.49
    uer = rows[("uer > er (Lin et al. 2023)", "b", "200")]
    assert "| 2 | 4.00 ± 8.49 | 1/2 | mixed |" in uer
    assert "| 3 | 21.00 ± 2.65 | 3/3 | holds |" in rows[("scr > er (Mai et al. 2021)", "b", "200")]
    # SHARP has no memory: compared with ER at every memory
    assert "| 2 | -16.00 ± 5.66 | 0/2 | does not hold |" in rows[("sharp > er (Gurbuz, Moorman & Dovrolis 2023)", "b", "200")]
    assert "| 1 | -25.00 ± 0.00 | 0/1 | does not hold |" in rows[("sharp > er (Gurbuz, Moorman & Dovrolis 2023)", "b", "500")]
    assert not any(k[0].startswith(("onpro", "pcr", "gdumb")) for k in rows)  # no runs: no row


def test_method_grid_judges_the_familys_claims_on_paired_seeds(tmp_path):
    method_grid = pytest.importorskip("method_grid")
    for m, accs in (("hnet", [0.99, 0.95, 0.97]), ("rnn_hnet", [0.98, 0.97])):  # rnn_hnet has seeds 0, 1 only
        for seed, acc in enumerate(accs):
            d = tmp_path / m / f"seed-{seed}"
            d.mkdir(parents=True)
            (d / "results.json").write_text(json.dumps({
                "status": "complete", "seed": seed, "average_accuracy": acc,
                "config": {"benchmark": {"name": "split-mnist", "scenario": "task"}, "strategy": {"name": m}}}))
    text = method_grid.claims(tmp_path, [("split-mnist", "task")], [("rnn_hnet", "hnet"), ("vcl", "ewc")])
    # seeds 0 and 1: -1 and +2 points, mean 0.5, std 2.12; no VCL or EWC run: no row
    assert text.splitlines()[2:] == [
        "| rnn_hnet > hnet (Chandra et al. 2023) | split-mnist | task | 2 | 0.50 ± 2.12 | 1/2 | mixed |"]


def test_method_grid_puts_its_table_between_the_markers_only(tmp_path, monkeypatch):
    method_grid = pytest.importorskip("method_grid")
    doc = tmp_path / "d.md"
    doc.write_text("intro\n<!-- grid:isolation -->\n\n| old |\n\n<!-- /grid -->\nwhat it shows\n")
    method_grid.update_doc(doc, "isolation", "| new |")
    assert doc.read_text() == "intro\n<!-- grid:isolation -->\n\n| new |\n\n<!-- /grid -->\nwhat it shows\n"
    with pytest.raises(SystemExit, match="no '<!-- grid:bayesian -->'"):
        method_grid.update_doc(doc, "bayesian", "| new |")
    # a doc that cannot take the table is refused before any cell runs
    monkeypatch.setattr(method_grid, "run_cell", lambda *a: pytest.fail("a cell ran before the doc was checked"))
    for bad, said in ((doc, "no '<!-- grid:bayesian -->'"), (tmp_path / "missing.md", "cannot read it")):
        with pytest.raises(SystemExit, match=said):
            method_grid.main(["--family", "bayesian", "--out", str(tmp_path / "g"), "--update-doc", str(bad)])


def test_permuted_reference_cost_runs_the_reference_config_and_refuses_bad_arguments(tmp_path, capsys, monkeypatch):
    cost = pytest.importorskip("permuted_reference_cost")
    from lifelong.config import parse_config

    cfg = parse_config(cost.config_for("vcl", 25, 3))  # the reference setting, the grid's VCL settings
    assert (cfg.train.iterations, cfg.seed, cfg.model.hidden, cfg.benchmark.pad) == (25, 3, [1000, 1000], 2)
    assert cfg.strategy.name == "vcl" and cfg.strategy.vcl_samples == 10 and cfg.eval.task_agnostic is False
    # seqbayes: the grid's small-network limit stays, the reference network is refused (not a traceback)
    refused = cost.measure("seqbayes", 1, 0)
    assert "seqbayes_max_params" in refused["refused"]
    assert "refused" in cost.table([refused])
    # the steps' CPU time, through the loop's monitor: every step counted, inside the run's CPU time
    import time

    from lifelong.runner import run

    clock = cost.StepClock()
    t0 = time.process_time()
    run({"benchmark": {"name": "split-digits"}, "model": {"hidden": [16]}, "train": {"iterations": 4},
         "eval": {"every": None}, "strategy": {"name": "ewc"}}, monitor=clock)
    assert clock.n == 5 * 4 and 0 < clock.cpu_s < time.process_time() - t0
    # --from-json: the table of an earlier run into a doc's block, no run
    rec = {"method": "finetune", "iterations": 25, "cpu_per_step_s": 0.0224, "eval_cpu_s": 47.3,
           "rest_cpu_s": 48.7, "projected_cpu_s": 1169.4, "average_accuracy": 0.6917}
    (tmp_path / "c.json").write_text(json.dumps({"runs": [rec, refused]}))
    doc = tmp_path / "d.md"
    doc.write_text("a\n<!-- grid:reference-cost -->\n<!-- /grid -->\nb\n")
    assert cost.main(["--from-json", str(tmp_path / "c.json"), "--update-doc", str(doc)]) == 0
    assert "| finetune | 0.022 | 47 | 1 | 0.3 | 69.2 |" in doc.read_text() and "seqbayes: refused" in doc.read_text()
    # --out of an earlier sweep: its other methods are kept, the ones measured again replaced
    monkeypatch.setattr(cost, "measure", lambda m, it, seed: {"method": m, "refused": "stub"})
    assert cost.main(["--methods", "seqbayes,hnet", "--out", str(tmp_path / "c.json")]) == 0
    assert [r["method"] for r in json.loads((tmp_path / "c.json").read_text())["runs"]] == ["finetune", "seqbayes",
                                                                                            "hnet"]
    assert json.loads((tmp_path / "c.json").read_text())["runs"][1]["refused"] == "stub"
    for argv, said in ((["--methods", "lwf"], "methods outside issue 16's list: lwf"),
                       (["--from-json", str(doc)], "not a results file of this script"),
                       (["--methods", "hnet", "--out", str(doc)], "is not a results file of this script"),
                       (["--iterations", "0"], "--iterations must be between 1 and 5000")):
        with pytest.raises(SystemExit):
            cost.main(argv)
        assert said in capsys.readouterr().err


def test_permuted_reference_runs_records_finished_refused_and_stopped_runs(tmp_path, capsys):
    runs = pytest.importorskip("permuted_reference_runs")
    # a run stopped at the deadline: how far it got, and the full run's projected wall time
    (tmp_path / "hnet.progress.jsonl").write_text('{"experience": 0, "wall_s": 150.0, "steps": 5000}\n'
                                                  '{"experience": 1, "wall_s": 310.0, "steps": 10000}\n')
    stopped = runs.outcome("hnet", tmp_path, "stopped_at_deadline")
    assert stopped == {"method": "hnet", "stopped_at_deadline": True, "permutations_done": 2,
                       "wall_s_so_far": 310.0, "projected_wall_s": 1550.0}
    (tmp_path / "vcl.log").write_text("Traceback ...\nRuntimeError: boom\n")
    failed = runs.outcome("vcl", tmp_path, "failed")
    assert failed["permutations_done"] == 0 and "boom" in failed["error"]
    done = {"method": "si", "wall_time_s": 960.0, "average_accuracy": 0.9712, "bwt": -0.0101,
            "parameters": {"total": 2126100}}
    text = runs.table([done, stopped, failed, {"method": "seqbayes", "refused": "too many parameters"}])
    assert "| si | 10/10 | 96 | 960 | 97.12 | -1.01 |  | 2,126,100 |" in text
    # a run resumed from a checkpoint: its wall time is its last part's; its training and evaluation count
    resumed = dict(done, method="ewc", resumed=True, wall_time_s=100.0, train_time_s=1500.0, eval_time_s=60.0)
    assert "| ewc | 10/10 | 156 | 1560 (resumed: training + evaluation) | 97.12 |" in runs.table([resumed])
    assert "| hnet | 2/10 (stopped) | 155 | ~1550 (projected) |" in text
    assert "| vcl | 0/10 (failed) |" in text and "| seqbayes | refused |" in text
    # real runs, each in its own process: a refused method, and one stopped at a 1 s deadline
    out = tmp_path / "r"
    stopped = runs.drive(["finetune"], 1, 1, 1.0, 0, "cpu", tmp_path / "s", lambda s: None)
    assert stopped[0]["stopped_at_deadline"] and stopped[0]["permutations_done"] == 0
    rows = runs.drive(["seqbayes"], 1, 1, 600.0, 0, "cpu", out, lambda s: None)
    assert "seqbayes_max_params" in rows[0]["refused"]
    assert json.loads((out / "summary.json").read_text())["runs"] == rows
    # the table of an earlier folder into a doc's block, no run
    doc = tmp_path / "d.md"
    doc.write_text("a\n<!-- grid:reference-runs -->\n<!-- /grid -->\nb\n")
    assert runs.main(["--from-dir", str(out), "--update-doc", str(doc)]) == 0
    assert "| seqbayes | refused |" in doc.read_text()
    for argv, said in ((["--methods", "lwf", "--out-dir", str(out)], "methods outside issue 16's list: lwf"),
                       (["--jobs", "0", "--out-dir", str(out)], "--jobs must be >= 1"),
                       (["--deadline-s", "0", "--out-dir", str(out)], "--deadline-s > 0"),
                       (["--iterations", "5001", "--out-dir", str(out)], "--iterations in 1..5000"),
                       (["--methods", "hnet"], "--out-dir is required"),
                       (["--out", str(tmp_path / "s.json")], "--out does not apply here"),
                       (["--from-dir", str(tmp_path / "none")], "no summary.json of this script there")):
        with pytest.raises(SystemExit):
            runs.main(argv)
        assert said in capsys.readouterr().err


def test_permuted_reference_runs_collects_command_line_runs_and_refuses_other_settings(tmp_path, capsys):
    import torch

    runs = pytest.importorskip("permuted_reference_runs")
    base = tmp_path / "runs"
    # a finished run: the reference config (as the run wrote it, every default filled in)
    (base / "er").mkdir(parents=True)
    cfg = runs.config_for("er", 5000, 0)
    cfg["train"]["momentum"], cfg["strategy"]["er_memory"] = 0.0, 200  # defaults a results file spells out
    matrix = [[0.98 if j <= i else 0.1 for j in range(10)] for i in range(10)]
    matrix[9][9] = 0.95
    (base / "er" / "results.json").write_text(json.dumps(
        {"config": cfg, "average_accuracy": 0.9542, "bwt": -0.0286, "accuracy_matrix": matrix,
         "parameters": {"total": 2126100}, "wall_time_s": 1937.0, "seed": 0,
         "checkpoints": {"saved": 6, "time_s": 1.0, "resumed_from": None}}))
    # a run still going: its checkpoint's step; binary_field with the grid's own learning rate
    (base / "binary_field" / ".partial").mkdir(parents=True)
    (base / "binary_field" / ".partial" / "run.json").write_text(
        json.dumps({"config": runs.config_for("binary_field", 5000, 0)}))
    torch.save({"step": 12345}, base / "binary_field" / ".partial" / "resume.pt")
    out = tmp_path / "cpu"
    out.mkdir()  # a row gathered earlier, whose folder is gone: kept, in the methods' order
    (out / "summary.json").write_text(json.dumps({"runs": [
        {"method": "si", "average_accuracy": 0.9477, "bwt": -0.0127, "wall_time_s": 1904.0,
         "diagonal_range": [0.944, 0.979], "parameters": {"total": 2126100}}]}))
    doc = tmp_path / "d.md"
    doc.write_text("a\n<!-- grid:reference-runs-cpu -->\n<!-- /grid -->\nb\n")
    assert runs.main(["--collect", str(base), "--out-dir", str(out), "--update-doc", str(doc),
                      "--block", "reference-runs-cpu", "--methods", "er,binary_field,hnet"]) == 0
    text = doc.read_text()
    assert "| er | 10/10 | 194 | 1937 | 95.42 | -2.86 | 95.0 to 98.0 | 2,126,100 |" in text
    assert "| binary_field | 2/10 (running: step 12345) |" in text and "hnet" not in text  # no folder: left out
    assert text.index("| si | 10/10 | 190 | 1904 | 94.77 | -1.27 | 94.4 to 97.9 |") < text.index("| er |")
    assert [r["method"] for r in json.loads((out / "summary.json").read_text())["runs"]] == ["si", "er", "binary_field"]
    assert runs.main(["--from-dir", str(out)]) == 0 and "| er | 10/10 |" in capsys.readouterr().out
    # the same run resumed from a checkpoint: its training and evaluation time, not its last part's wall time
    res = json.loads((base / "er" / "results.json").read_text())
    res.update(checkpoints={"saved": 6, "time_s": 1.0, "resumed_from": [3, 100]}, train_time_s=1800.0, eval_time_s=90.0)
    (base / "er" / "results.json").write_text(json.dumps(res))
    assert runs.main(["--collect", str(base), "--out-dir", str(out), "--methods", "er"]) == 0
    assert "| er | 10/10 | 189 | 1890 (resumed: training + evaluation) | 95.42 |" in capsys.readouterr().out
    # a run of another setting is refused, naming the difference
    (base / "vcl" / ".partial").mkdir(parents=True)
    short = runs.config_for("vcl", 300, 0)
    (base / "vcl" / ".partial" / "run.json").write_text(json.dumps({"config": short}))
    torch.save({"step": 1}, base / "vcl" / ".partial" / "resume.pt")
    with pytest.raises(SystemExit, match="train.iterations is 300, the reference's is 5000"):
        runs.main(["--collect", str(base), "--out-dir", str(out), "--methods", "vcl"])
    bf = runs.config_for("binary_field", 5000, 0)
    bf["train"]["lr"] = 1e-4  # the reference's learning rate, not the grid's for binary fields
    (base / "binary_field" / ".partial" / "run.json").write_text(json.dumps({"config": bf}))
    with pytest.raises(SystemExit, match="train.lr is 0.0001"):
        runs.main(["--collect", str(base), "--out-dir", str(out), "--methods", "binary_field"])
    (base / "binary_field" / ".partial" / "run.json").unlink()  # a checkpoint whose config cannot be checked
    with pytest.raises(SystemExit, match="no .partial/run.json"):
        runs.main(["--collect", str(base), "--out-dir", str(out), "--methods", "binary_field"])
    for argv, said in ((["--collect", str(base)], "--collect needs --out-dir"),
                       (["--collect", str(base), "--out-dir", str(out), "--methods", "lwf"], "outside issue 16's list: lwf"),
                       (["--collect", str(tmp_path / "none"), "--out-dir", str(out)], "no such folder"),
                       (["--collect", str(base), "--from-dir", str(out), "--out-dir", str(out)], "two sources"),
                       (["--from-dir", str(out), "--update-doc", str(doc), "--block", "nope"], "grid:nope")):
        with pytest.raises(SystemExit) as exc:
            runs.main(argv)
        assert said in capsys.readouterr().err + str(exc.value.code)
