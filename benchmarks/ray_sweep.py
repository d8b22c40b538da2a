"""What Ray costs a sweep of short runs (issue 13): the same sweep through the local process
pool and through a local Ray instance, both with 2 workers.

A sweep of ``--runs`` short runs (split-digits class-IL, finetune and er alternating over
seeds, ``--iterations`` steps per experience, no continual evaluation, one torch thread per
run) goes through ``lifelong.grid.execute`` twice, each into a fresh folder: ``--executor
process`` (workers=2) and ``--executor ray`` (workers=2, a local instance started and shut down
by the sweep, as ``lifelong run --executor ray`` does). Reported: the wall time of each (pool
or Ray start-up included), their ratio, the overhead per run ``(ray wall - process wall) /
runs``, Ray's start-up alone, the mean time inside a run (its ``wall_time_s``: it shows how
much the machine's load slowed the runs themselves), the time a worker slot spends outside
the runs per run ``(wall x workers - sum of run times) / runs`` (start-up, dispatch, loading,
run-folder writes), and whether both gave the same accuracy matrices (==).

    PYTHONPATH=src python benchmarks/ray_sweep.py --out benchmarks/results/ray_sweep.json
    PYTHONPATH=src python benchmarks/ray_sweep.py --quick
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, markdown_table, parse_common, write_json  # noqa: E402


def sweep_runs(base: Path, runs: int, iterations: int):
    from lifelong.cli.sweep import expand, run_paths
    from lifelong.grid import GridRun

    data = {"benchmark": {"name": "split-digits"}, "model": {"hidden": [32]}, "threads": 1,
            "train": {"iterations": iterations, "batch_size": 32}, "eval": {"every": None}}
    seeds = list(range((runs + 1) // 2))
    configs = [c.to_dict() for c in expand(data, ["finetune", "er"], seeds)][:runs]
    paths = run_paths(base, configs)
    return [GridRun(c, p, f"{c['strategy']['name']} seed {c['seed']}") for c, p in zip(configs, paths)]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--iterations", type=int, default=5, help="training steps per experience")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--order", default="process,ray", choices=["process,ray", "ray,process"],
                    help="which executor runs first (the machine's load drifts)")
    ap.add_argument("--quick", action="store_true", help="at most 8 runs of at most 2 steps per experience")
    a, log, dev = parse_common(ap, argv)
    if a.quick:
        a.runs, a.iterations = min(a.runs, 8), min(a.iterations, 2)
    from lifelong.grid import execute
    from lifelong.ray_executor import RayExecutor

    out = {"benchmark": "ray_sweep", "environment": environment(dev), "runs": a.runs, "iterations": a.iterations,
           "workers": a.workers, "order": a.order, "executors": {}}
    matrices = {}
    with tempfile.TemporaryDirectory(prefix="ray-sweep-") as tmp:
        for name in a.order.split(","):
            runs = sweep_runs(Path(tmp) / name, a.runs, a.iterations)
            log(f"{name}: {len(runs)} runs ...")
            t0 = time.perf_counter()
            startup = None
            if name == "ray":
                ex = RayExecutor(a.workers)
                ex.connect()  # timed on its own too
                startup = time.perf_counter() - t0
            report = execute(runs, name if name == "process" else ex, a.workers)
            if name == "ray":
                ex.close()  # shut down, as at the end of 'lifelong run --executor ray': part of its wall time
            wall = time.perf_counter() - t0
            failed = [o.error for o in report.failed]
            if failed:
                raise SystemExit(f"{name}: {len(failed)} runs failed, e.g. {failed[0]}")
            matrices[name] = [o.results["accuracy_matrix"] for o in report.outcomes]
            in_runs = sum(o.results["wall_time_s"] for o in report.outcomes)
            out["executors"][name] = {"wall_s": wall, "per_run_s": wall / len(runs), "startup_s": startup,
                                      "in_runs_s_per_run": in_runs / len(runs),
                                      "outside_runs_s_per_run": (wall * a.workers - in_runs) / len(runs)}
            log(f"{name}: {wall:.1f} s")
    p, r = out["executors"]["process"]["wall_s"], out["executors"]["ray"]["wall_s"]
    out["summary"] = {"ratio_ray_over_process": r / p, "ray_overhead_per_run_s": (r - p) / a.runs,
                      "same_numbers": matrices["ray"] == matrices["process"]}
    rows = [[name, e["wall_s"], e["per_run_s"], "" if e["startup_s"] is None else e["startup_s"],
             e["in_runs_s_per_run"], e["outside_runs_s_per_run"]]
            for name, e in sorted(out["executors"].items(), reverse=True)]
    print(markdown_table(["executor", "wall (s)", "wall / run (s)", "Ray start-up (s)", "inside a run (s)",
                          "outside the runs, per run (s)"], rows))
    s = out["summary"]
    print(f"\n{a.runs} runs, {a.workers} workers: ray / process = {s['ratio_ray_over_process']:.2f}; "
          f"overhead per run {1000 * s['ray_overhead_per_run_s']:.0f} ms; same numbers: {s['same_numbers']}")
    write_json(a.out, out)
    return out


if __name__ == "__main__":
    main()
