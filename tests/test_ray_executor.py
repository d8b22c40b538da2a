"""``--executor ray``: a real local Ray instance (started and shut down by each map), and an
existing cluster of two Ray nodes on this machine started with ``ray start`` (docs/ray.md).
Sweeps and reproductions through Ray give the sequential executor's numbers, == ."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from _cli import run_cli

pytest.importorskip("ray")

SWEEP = ["run", "--benchmark", "split-digits", "--strategy", "finetune,er", "--seeds", "0-1", "--iterations", "20",
         "--set", "model.hidden=[16]", "--set", "eval.every=null", "--quiet"]
RAY = str(Path(sys.executable).with_name("ray"))


def _matrices(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): json.loads(p.read_text())["accuracy_matrix"]
            for p in sorted(folder.glob("*/seed-*/results.json"))}


def _ray_is_down() -> bool:
    import ray

    return not ray.is_initialized()


@pytest.fixture(scope="module")
def ray_running():
    """One local Ray instance for the tests that do not test starting one (its workers, torch
    imported, serve them all); an executor joins it and leaves it running."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def sequential_sweep(tmp_path_factory):
    import torch

    from lifelong.cli import main

    torch.set_num_threads(1)  # as in every test (conftest) and in each Ray task
    out = tmp_path_factory.mktemp("seq") / "s"

    with pytest.raises(SystemExit) as e:
        main(SWEEP + ["--out", str(out)])
        raise SystemExit(0)
    assert (e.value.code or 0) == 0
    return _matrices(out)


def test_a_ray_sweep_gives_the_sequential_numbers(tmp_path, capsys, sequential_sweep):
    code, out, err = run_cli(SWEEP + ["--executor", "ray", "--workers", "2", "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    assert len(sequential_sweep) == 4 and _matrices(tmp_path / "r") == sequential_sweep
    assert out.count("done: ") == 4  # each run reported as it finished
    assert _ray_is_down()  # the local instance this command started is shut down


def test_connect_keeps_ray_up_across_maps_until_close():
    import ray

    from lifelong.executor import get_executor

    ex = get_executor("ray", 1)
    ex.connect()  # a caller mapping many times: one start-up
    assert list(ex.map(int, ["1", "2"])) == [1, 2] and ray.is_initialized()
    assert list(ex.map(int, ["3"])) == [3]
    ex.close()
    assert _ray_is_down()


# ----------------------------------------------------------------------------- refused values
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("extra, needle", [
    (["--executor", "bogus"], "'bogus' is not one of 'sequential', 'process', 'ray'"),
    (["--ray-address", "127.0.0.1:6379"], "--ray-address is for --executor ray (got --executor sequential)"),
    (["--executor", "process", "--cpus-per-run", "2"], "--cpus-per-run is for --executor ray"),
    (["--executor", "ray", "--cpus-per-run", "0"], "--cpus-per-run must be > 0, got 0.0"),
    (["--executor", "ray", "--gpus-per-run", "-1"], "--gpus-per-run must be >= 0, got -1.0"),
    (["--executor", "ray", "--ray-address", "localhost"], "--ray-address must be 'auto' or HOST:PORT"),
    (["--executor", "ray", "--ray-address", "127.0.0.1:{port}"], "cannot reach a Ray cluster at 127.0.0.1:{port}"),
    (["--executor", "ray", "--gpus-per-run", "1"], "--gpus-per-run 1: this machine (a local Ray instance) has 0 GPUs"),
])
@pytest.mark.parametrize("command", ["run", "reproduce"])
def test_bad_values_are_one_line_before_any_run(tmp_path, capsys, extra, needle, command):
    port = _free_port()
    extra = [a.format(port=port) for a in extra]
    needle = needle.format(port=port)
    if command == "run":
        argv = SWEEP + extra + ["--out", str(tmp_path / "o")]
    else:
        if "--gpus-per-run" in extra and "1" in extra:
            pytest.skip("the cluster's GPUs are checked once, with 'run'")
        path = tmp_path / "tiny.yaml"
        path.write_text(yaml.safe_dump(_tiny_protocol()))
        argv = ["reproduce", str(path), "--quiet", *extra, "--out", str(tmp_path / "o")]
    t0 = time.time()
    code, _, err = run_cli(argv, capsys)
    err = " ".join(err.split())
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "o" / "runs").exists() and not list((tmp_path / "o").glob("*/seed-*"))
    assert time.time() - t0 < 30
    assert _ray_is_down()


def test_unknown_executor_and_missing_ray(monkeypatch):
    import importlib.util

    from lifelong.errors import ConfigError
    from lifelong.executor import get_executor

    with pytest.raises(ConfigError, match="unknown executor 'dask'; allowed: sequential, process, ray"):
        get_executor("dask")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ConfigError, match=r"ray, which is not installed: pip install -e '\.\[tune\]'"):
        get_executor("ray")


def test_importing_lifelong_does_not_import_ray():
    code = "import sys, lifelong, lifelong.executor, lifelong.grid, lifelong.cli; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ----------------------------------------------------------------------------- on one running instance
def test_the_executor_yields_in_item_order_and_reraises_a_failing_item(ray_running):
    from lifelong.executor import get_executor

    ex = get_executor("ray", 2)
    got = []
    slow_first = ["__import__('time').sleep(1.5) or 0", "1", "2", "int('x')", "4"]
    with pytest.raises(ValueError, match="invalid literal"):
        for value in ex.map(eval, slow_first):
            got.append(value)
    assert got == [0, 1, 2]
    assert ray_running.is_initialized()  # an instance the executor did not start is left running


def test_a_failing_run_in_a_ray_sweep_is_recorded_and_the_others_finish(tmp_path, capsys, ray_running):
    args = ["run", "--benchmark", "split-digits", "--strategy", "ewc,finetune", "--iterations", "30",
            "--set", "strategy.ewc_lambda=1e38", "--set", "model.hidden=[16]", "--set", "eval.every=null",
            "--set", "train.optimizer=sgd", "--set", "train.lr=0.1", "--seeds", "0-1",
            "--executor", "ray", "--quiet", "--out", str(tmp_path / "s")]
    code, out, err = run_cli(args, capsys)
    assert code == 1
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert [f["run"] for f in summary["failed"]] == ["ewc seed 0", "ewc seed 1"]
    assert "strategy.ewc_lambda" in summary["failed"][0]["error"]
    assert [r["strategy"] for r in summary["rows"]] == ["finetune"] and summary["rows"][0]["seeds"] == [0, 1]
    assert "2 of 4 runs failed" in out


def test_a_reproduction_through_ray_equals_the_sequential_one(tmp_path, capsys, ray_running):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(_tiny_protocol()))
    results = {}
    for name, extra in (("seq", []), ("ray", ["--executor", "ray", "--workers", "2"])):
        code, stdout, err = run_cli(["reproduce", str(path), "--out", str(tmp_path / name), "--quiet", *extra], capsys)
        assert code == 0, err
        assert "4 runs computed, 0 reused" in " ".join(stdout.split())
        summary = json.loads((tmp_path / name / "results.json").read_text())
        runs = {p.relative_to(tmp_path / name).as_posix(): json.loads(p.read_text())["results"]["accuracy_matrix"]
                for p in (tmp_path / name / "runs").rglob("*.json")}
        results[name] = ([(c["method"], c["mean"], c["values"] if "values" in c else None) for c in summary["cells"]],
                         runs)
    assert len(results["seq"][1]) == 4 and results["ray"] == results["seq"]


# ----------------------------------------------------------------------------- an existing cluster
class _Cluster:
    """A Ray cluster of this machine's processes: ``ray start --head`` and more nodes with
    ``ray start --address``, each in its own session so that exactly its processes are ended."""

    def __init__(self, tmp: Path):
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.tmp = tmp
        self.procs = []
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")

    def _start(self, args, env):
        log = open(self.tmp / f"ray-{len(self.procs)}.log", "w")
        p = subprocess.Popen([RAY, "start", *args, "--block", "--disable-usage-stats"], env=env, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def head(self, cpus: int):
        self._start(["--head", "--port", str(self.port), "--num-cpus", str(cpus), "--include-dashboard=false"],
                    self.env)
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert time.time() < deadline, (self.tmp / "ray-0.log").read_text()[-2000:]
                time.sleep(0.3)

    def node(self, cpus: int):
        # a second raylet on the same host: ray picks free ports for it; the head's token
        # (token authentication is on by default) must be sent, as on a real second machine
        self._start(["--address", self.address, "--num-cpus", str(cpus)], dict(self.env, RAY_AUTH_MODE="token"))

    def alive_nodes(self, want: int, timeout: float = 90) -> list:
        code = ("import json, sys, time, ray\n"
                "from lifelong.ray_executor import _use_token_if_available\n"
                "_use_token_if_available()\n"
                f"ray.init(address='{self.address}', logging_level='ERROR')\n"
                f"deadline = time.time() + {timeout}\n"
                "while True:\n"
                "    nodes = [(n['NodeManagerPort'], n['Resources'].get('CPU')) for n in ray.nodes() if n['Alive']]\n"
                f"    if len(nodes) >= {want} or time.time() > deadline: break\n"
                "    time.sleep(0.5)\n"
                "print(json.dumps(nodes))\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=self.env,
                             timeout=timeout + 60)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    def stop(self):
        """End this cluster's processes: every process of each ``ray start`` session, last node first."""
        for p in reversed(self.procs):
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                pids = _session_pids(p.pid)
                for pid in pids:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                deadline = time.time() + wait
                while _session_pids(p.pid) and time.time() < deadline:
                    time.sleep(0.2)
                    p.poll()
            p.poll()
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"  # what 'ray stop' would remove
        if current.is_file() and current.read_text().strip().endswith(f":{self.port}"):
            current.unlink()


def _session_pids(sid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.slow
def test_an_existing_two_node_cluster_on_one_machine_gives_the_sequential_numbers(tmp_path, sequential_sweep):
    cluster = _Cluster(tmp_path)
    try:
        cluster.head(cpus=2)
        cluster.node(cpus=1)
        nodes = cluster.alive_nodes(2)
        assert len(nodes) == 2 and sorted(cpu for _, cpu in nodes) == [1.0, 2.0], nodes
        out = tmp_path / "r"
        proc = subprocess.run([sys.executable, "-m", "lifelong.cli", *SWEEP, "--executor", "ray", "--workers", "3",
                               "--ray-address", cluster.address, "--out", str(out)],
                              capture_output=True, text=True, env=cluster.env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert _matrices(out) == sequential_sweep
        # three one-CPU tasks at once on 2 + 1 CPUs: both nodes run them
        code = ("from lifelong.ray_executor import RayExecutor\n"
                "item = \"__import__('time').sleep(2) or __import__('ray').get_runtime_context().get_node_id()\"\n"
                f"print(len(set(RayExecutor(3, '{cluster.address}').map(eval, [item] * 3))))\n")
        used = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cluster.env,
                              timeout=120)
        assert used.stdout.strip().splitlines()[-1:] == ["2"], used.stderr[-2000:]
        assert len(cluster.alive_nodes(2, timeout=5)) == 2  # the cluster was joined, not shut down
    finally:
        cluster.stop()
    assert not any(_session_pids(p.pid) for p in cluster.procs)


def _tiny_protocol() -> dict:
    return {
        "name": "tiny", "title": "a tiny protocol for tests", "citation": {"paper": "nobody (2099)"}, "seeds": 2,
        "base": {"benchmark": {"name": "split-digits", "n_experiences": 5}, "model": {"name": "mlp", "hidden": [16]},
                 "train": {"iterations": 5, "batch_size": 32, "reset_optimizer": False}, "eval": {"every": None}},
        "scenarios": {"task": {"label": "Task-IL", "config": {"benchmark": {"scenario": "task"}}}},
        "methods": {"none": {"label": "None", "config": {"strategy": {"name": "finetune"}}},
                    "joint": {"label": "Joint", "config": {"strategy": {"name": "joint"}}}},
        "tolerance": {"points": 3.0, "se_multiplier": 2.0},
        "published": {"source": "made up for a test", "task": {"none": {"mean": None, "sem": None},
                                                               "joint": {"mean": None, "sem": None}}},
    }
