"""Runs that survive faults: a run killed with SIGKILL at random points (inside checkpoint
writes, between the final moves, and at random times) and rerun each time ends with the
results of a run never interrupted, number for number."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lifelong.runner import run_to_folder

CFG = {"benchmark": {"name": "split-digits"}, "model": {"hidden": [32]}, "seed": 0,
       "train": {"iterations": 60, "batch_size": 16, "optimizer": "adam"},
       "strategy": {"name": "er", "mem_size": 60},
       "eval": {"every": 5, "subsample": 100}, "checkpoint": {"every_iterations": 3}}
DRIVER = ("import json, sys; from lifelong.runner import run_to_folder; "
          "run_to_folder(json.loads(sys.argv[1]), sys.argv[2])")
EXECUTION = ("wall_time_s", "train_time_s", "eval_time_s", "checkpoints")


def comparable(res: dict) -> dict:
    """Everything but the timings and the checkpoint bookkeeping (which differ between runs)."""
    out = {k: v for k, v in res.items() if k not in EXECUTION}
    if out.get("continual"):
        out["continual"] = {k: v for k, v in out["continual"].items() if k != "eval_time_s"}
    return out


def _holds_lock(out: Path) -> bool:
    """True while some process holds the run folder's lock (it is training)."""
    import fcntl

    lock = out / ".partial" / "lock"
    if not lock.exists():
        return False
    with open(lock) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def _start(cfg, out, failpoint=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("LIFELONG_FAILPOINT", None)
    if failpoint:
        env["LIFELONG_FAILPOINT"] = failpoint
    return subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(cfg), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_at_many_points_then_rerun_gives_the_uninterrupted_results(tmp_path):
    ref = run_to_folder(CFG, tmp_path / "ref")
    out = tmp_path / "run"
    rng = random.Random(0)
    # 10 kills inside a checkpoint write (the n-th atomic write of the process), 10 at random
    # times once training has started, 2 between the final moves: at least 20 kills in all
    plans = [f"atomic-write:{rng.randint(1, 6)}" for _ in range(10)] + [None] * 10
    rng.shuffle(plans)
    plans += ["final-move:1", "final-move:2"]
    kills, attempts = 0, 0
    for plan in plans:
        if (out / "results.json").exists():
            break
        attempts += 1
        p = _start(CFG, out, plan)
        if plan is None:  # once this process holds the folder, a random moment later
            t0 = time.monotonic()
            while p.poll() is None and time.monotonic() - t0 < 120 and not _holds_lock(out):
                time.sleep(0.02)
            try:
                p.wait(timeout=rng.uniform(0.0, 1.5))
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.wait()
        else:
            p.wait(timeout=300)
        if p.returncode == -signal.SIGKILL:
            kills += 1
        else:
            assert p.returncode == 0, p.stderr.read().decode()[-2000:]
    while not (out / "results.json").exists():  # finish it
        p = _start(CFG, out)
        p.wait(timeout=300)
        assert p.returncode == 0, p.stderr.read().decode()[-2000:]
    assert kills >= 20, f"only {kills} kills in {attempts} attempts"
    res = json.loads((out / "results.json").read_text())
    assert comparable(res) == comparable(json.loads(json.dumps(ref)))
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert not list(tmp_path.glob("*.tmp-*"))  # no temporary folder left beside it
    assert res["checkpoints"]["resumed_from"] is not None


def test_a_rerun_of_a_finished_run_reuses_it_and_a_foreign_folder_is_untouched(tmp_path):
    from lifelong.errors import ConfigError

    cfg = dict(CFG, train=dict(CFG["train"], iterations=5))
    first = run_to_folder(cfg, tmp_path / "run")
    mtime = (tmp_path / "run" / "results.json").stat().st_mtime_ns
    again = run_to_folder(cfg, tmp_path / "run")
    assert again == json.loads(json.dumps(first))
    assert (tmp_path / "run" / "results.json").stat().st_mtime_ns == mtime
    other = dict(cfg, seed=1)
    with pytest.raises(ConfigError, match="holds something else"):
        run_to_folder(other, tmp_path / "run")
    assert (tmp_path / "run" / "results.json").stat().st_mtime_ns == mtime


def test_results_are_strict_json_with_a_status(tmp_path):
    cfg = dict(CFG, train=dict(CFG["train"], iterations=5), eval={"every": None})
    run_to_folder(cfg, tmp_path / "run")
    text = (tmp_path / "run" / "results.json").read_text()

    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    res = json.loads(text, parse_constant=refuse)
    assert res["status"] == "complete" and isinstance(res["undefined"], list)


def test_a_corrupt_checkpoint_is_reported_and_kept(tmp_path):
    from lifelong.checkpoint import CheckpointError

    cfg = dict(CFG, train=dict(CFG["train"], iterations=5))
    p = _start(cfg, tmp_path / "run", "atomic-write:3")  # killed after a checkpoint or two
    p.wait(timeout=300)
    resume = tmp_path / "run" / ".partial" / "resume.pt"
    assert resume.exists()
    resume.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt. Move it away"):
        run_to_folder(cfg, tmp_path / "run")
    assert resume.read_bytes() == b"not a checkpoint"


def _mount(kind: str, target: Path, source: Path | None = None) -> bool:
    """A real tiny filesystem or read-only bind mount (root on Linux); False where not allowed."""
    target.mkdir(parents=True, exist_ok=True)
    cmds = ([["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(target)]] if kind == "tiny" else
            [["mount", "--bind", str(source), str(target)], ["mount", "-o", "remount,bind,ro", str(target)]])
    for c in cmds:
        if subprocess.run(c, capture_output=True).returncode != 0:
            subprocess.run(["umount", str(target)], capture_output=True)
            return False
    return True


SMALL = dict(CFG, train=dict(CFG["train"], iterations=5), eval={"every": None})


def test_a_run_folder_that_cannot_be_written_is_refused_before_training(tmp_path, monkeypatch):
    from lifelong import runner
    from lifelong.errors import ConfigError

    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    if not _mount("ro", ro, src):
        pytest.skip("cannot bind-mount a read-only folder here (needs root on Linux)")
    started = []
    monkeypatch.setattr(runner, "train", lambda *a, **k: started.append(1))
    try:
        with pytest.raises(ConfigError, match=r"cannot write into the run folder .*(permission denied|Read-only)"):
            run_to_folder(SMALL, ro / "run")
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)
    assert not started


def test_a_full_disk_at_the_end_rescues_the_results_and_says_so(tmp_path, monkeypatch):
    from lifelong.errors import ConfigError

    full = tmp_path / "full"
    if not _mount("tiny", full):
        pytest.skip("cannot mount a tiny tmpfs here (needs root on Linux); the simulated failure below still runs")
    monkeypatch.setenv("LIFELONG_RESCUE_DIR", str(tmp_path / "rescue"))
    big = dict(SMALL, model={"hidden": [400]})  # checkpoints of ~1.3 MB on a 256 kB filesystem
    try:
        with pytest.warns(RuntimeWarning, match="could not write the checkpoint"):
            with pytest.raises(ConfigError, match=r"disk is full.*saved to .*rescue") as e:
                run_to_folder(big, full / "run")
    finally:
        subprocess.run(["umount", str(full)], capture_output=True)
    rescued = next((tmp_path / "rescue").iterdir())
    assert str(rescued) in str(e.value)
    got = json.loads((rescued / "results.json").read_text())
    ref = run_to_folder(big, tmp_path / "ref")
    assert comparable(got) == comparable(json.loads(json.dumps(ref)))
    assert (rescued / "checkpoint.pt").stat().st_size > 0


def test_a_failed_final_write_keeps_everything(tmp_path, monkeypatch):
    """The simulated version (runs everywhere): the final write fails with ENOSPC."""
    import errno

    from lifelong import runfolder
    from lifelong.errors import ConfigError

    real = runfolder._write_synced
    calls = []

    def failing(path, data):
        if path.parent.name == "final":
            calls.append(path)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(runfolder, "_write_synced", failing)
    monkeypatch.setenv("LIFELONG_RESCUE_DIR", str(tmp_path / "rescue"))
    with pytest.raises(ConfigError, match="disk is full") as e:
        run_to_folder(SMALL, tmp_path / "run")
    assert calls
    rescued = next((tmp_path / "rescue").iterdir())
    assert str(rescued) in str(e.value) and (rescued / "results.json").is_file()
    assert (tmp_path / "run" / ".partial").is_dir()  # the checkpoint stays for a rerun
    monkeypatch.setattr(runfolder, "_write_synced", real)
    res = run_to_folder(SMALL, tmp_path / "run")  # the rerun finishes the folder
    assert comparable(res) == comparable(json.loads((rescued / "results.json").read_text()))


def _cli_proc(args, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    env.pop("LIFELONG_FAILPOINT", None)
    env.update(env_extra or {})
    return subprocess.Popen([sys.executable, "-m", "lifelong.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)  # its own group: kill the workers too


def _killpg(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


@pytest.mark.slow
def test_a_killed_two_worker_sweep_rerun_into_its_folder_gives_the_uninterrupted_results(tmp_path):
    args = ["run", "--benchmark", "split-digits", "--strategy", "finetune,er", "--seeds", "0-1", "--iterations", "40",
            "--set", "model.hidden=[32]", "--set", "checkpoint.every_iterations=4", "--set", "eval.every=10",
            "--quiet", "--executor", "process", "--workers", "2"]
    ref = _cli_proc(args + ["--out", str(tmp_path / "ref")])
    assert ref.wait(timeout=600) == 0, ref.stderr.read().decode()[-2000:]
    out = tmp_path / "sweep"
    rng = random.Random(1)
    kills = 0
    for _ in range(6):  # kill the whole process group (workers included) at random moments
        p = _cli_proc(args + ["--out", str(out)])
        try:
            p.wait(timeout=rng.uniform(3.0, 8.0))
        except subprocess.TimeoutExpired:
            _killpg(p)
            kills += 1
        if (out / "summary.json").exists():
            break
    p = _cli_proc(args + ["--out", str(out)])
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-2000:]
    assert kills >= 1
    for res_ref in (tmp_path / "ref").glob("*/seed-*/results.json"):
        mine = out / res_ref.relative_to(tmp_path / "ref")
        assert comparable(json.loads(mine.read_text())) == comparable(json.loads(res_ref.read_text())), mine
    assert not list(out.rglob(".partial"))


def test_a_failing_run_is_recorded_and_does_not_stop_the_sweep(tmp_path, capsys):
    from _cli import run_cli

    args = ["run", "--benchmark", "split-digits", "--strategy", "ewc,finetune", "--iterations", "30",
            "--set", "strategy.ewc_lambda=1e38", "--set", "model.hidden=[16]", "--set", "eval.every=null",
            "--set", "train.optimizer=sgd", "--set", "train.lr=0.1",
            "--quiet", "--out", str(tmp_path / "s")]
    code, out, err = run_cli(args, capsys)
    assert code == 1
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert [f["run"] for f in summary["failed"]] == ["ewc seed 0"]
    assert "became" in summary["failed"][0]["error"] and "strategy.ewc_lambda" in summary["failed"][0]["error"]
    assert [r["strategy"] for r in summary["rows"]] == ["finetune"]
    assert "1 of 2 runs failed" in out
    mtime = (tmp_path / "s" / "finetune" / "seed-0" / "results.json").stat().st_mtime_ns
    code, out, _ = run_cli(args, capsys)  # the rerun reuses finetune and retries ewc
    assert code == 1 and (tmp_path / "s" / "finetune" / "seed-0" / "results.json").stat().st_mtime_ns == mtime


def test_a_sweep_folder_holding_anything_else_is_never_touched(tmp_path, capsys):
    from _cli import run_cli

    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    code, _, err = run_cli(["run", "--benchmark", "split-digits", "--strategy", "finetune,er", "--iterations", "3",
                            "--quiet", "--out", str(tmp_path / "s")], capsys)
    assert code == 2 and "not a sweep of lifelong's" in " ".join(err.split())
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_a_killed_reproduction_rerun_gives_the_uninterrupted_table(tmp_path):
    """A shortened ``lifelong reproduce``: killed at random moments and inside checkpoint writes,
    rerun each time; its cells equal those of a reproduction never interrupted."""
    import yaml

    proto = {"name": "tiny-faults", "title": "a tiny protocol for the fault test", "citation": {"paper": "test (2026)"},
             "seeds": 2,
             "base": {"benchmark": {"name": "split-digits", "n_experiences": 5}, "model": {"name": "mlp", "hidden": [32]},
                      "train": {"iterations": 40, "batch_size": 16}, "eval": {"every": 10, "subsample": 100},
                      "checkpoint": {"every_iterations": 4}},
             "scenarios": {"class": {"label": "Class-IL", "config": {"benchmark": {"scenario": "class"}}}},
             "methods": {"none": {"label": "None", "config": {"strategy": {"name": "finetune"}}},
                         "er": {"label": "ER", "config": {"strategy": {"name": "er", "mem_size": 50}}}},
             "tolerance": {"points": 3.0, "se_multiplier": 2.0},
             "published": {"source": "made up for a test", "class": {"none": {"mean": 19.0, "sem": 0.5},
                                                                     "er": {"mean": 80.0, "sem": 1.0}}}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(proto))
    ref = _cli_proc(["reproduce", str(path), "--out", str(tmp_path / "ref"), "--quiet"])
    assert ref.wait(timeout=600) in (0, 1), ref.stderr.read().decode()[-2000:]
    out = tmp_path / "rep"
    rng = random.Random(2)
    kills = 0
    plans = [f"atomic-write:{rng.randint(1, 8)}" for _ in range(4)] + [None] * 4
    rng.shuffle(plans)
    for plan in plans:
        p = _cli_proc(["reproduce", str(path), "--out", str(out), "--quiet"],
                      {"LIFELONG_FAILPOINT": plan} if plan else None)
        try:
            p.wait(timeout=rng.uniform(3.0, 7.0) if plan is None else 600)
        except subprocess.TimeoutExpired:
            _killpg(p)
        if p.returncode == -signal.SIGKILL:
            kills += 1
        elif (out / "results.json").exists():
            break
    p = _cli_proc(["reproduce", str(path), "--out", str(out), "--quiet"])
    assert p.wait(timeout=600) in (0, 1), p.stderr.read().decode()[-2000:]
    assert kills >= 3
    cells = lambda d: [(c["scenario"], c["method"], c["values"]) for c in json.loads((d / "results.json").read_text())["cells"]]  # noqa: E731
    assert cells(out) == cells(tmp_path / "ref")
    assert not [p for p in (out / "runs").rglob("*") if p.is_dir() and p.name.startswith("seed")]  # run folders removed


def _as_made_by_an_older_lifelong(config: dict) -> dict:
    """The config as a lifelong without some of today's keys wrote it (those keys at their defaults)."""
    old = json.loads(json.dumps(config))
    del old["benchmark"]["pad"], old["model"]["init_from"], old["train"]["seed"]
    return old


def test_runs_made_before_a_config_key_was_added_are_still_reused_and_resumed(tmp_path):
    # a key added to lifelong since (at its default) does not change the numbers: a finished
    # run is reused, an interrupted one resumes; a stored config that sets it otherwise is foreign
    import torch

    from lifelong.errors import ConfigError
    from lifelong.runfolder import fingerprint

    cfg = dict(CFG, train=dict(CFG["train"], iterations=5))
    first = run_to_folder(cfg, tmp_path / "done")
    stored = json.loads((tmp_path / "done" / "results.json").read_text())
    stored["config"] = _as_made_by_an_older_lifelong(stored["config"])
    (tmp_path / "done" / "results.json").write_text(json.dumps(stored))
    again = run_to_folder(cfg, tmp_path / "done")
    assert again["accuracy_matrix"] == first["accuracy_matrix"] and again["config"] == stored["config"]
    stored["config"]["benchmark"]["pad"] = 2  # not the default: another run
    (tmp_path / "done" / "results.json").write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match="holds something else"):
        run_to_folder(cfg, tmp_path / "done")

    ref = run_to_folder(CFG, tmp_path / "ref")
    out = tmp_path / "run"
    p = _start(CFG, out, "atomic-write:4")  # killed while writing a checkpoint, after the first ones
    p.wait(timeout=300)
    assert p.returncode == -signal.SIGKILL and (out / ".partial" / "resume.pt").exists()
    run = json.loads((out / ".partial" / "run.json").read_text())
    run["config"] = _as_made_by_an_older_lifelong(run["config"])
    run["fingerprint"] = fingerprint(run["config"])  # what that lifelong computed, and its checkpoint carries
    (out / ".partial" / "run.json").write_text(json.dumps(run))
    snap = torch.load(out / ".partial" / "resume.pt", weights_only=False)
    torch.save(dict(snap, fingerprint=run["fingerprint"]), out / ".partial" / "resume.pt")
    res = run_to_folder(CFG, out)
    assert res["checkpoints"]["resumed_from"] is not None
    assert comparable(res) == comparable(json.loads(json.dumps(ref)))
