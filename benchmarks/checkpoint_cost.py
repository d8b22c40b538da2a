"""The cost of checkpointing: time per checkpoint, and its share of a Split MNIST run.

The run: ``configs/split-mnist.yaml`` (class-IL, MLP 784-400-400, 500 iterations per
experience) with ER (2000 samples) and EWC, through ``lifelong.runner.run_to_folder`` with the
default checkpoint settings (every experience end and every 300 s). The checkpointer times its
own writes (snapshot, serialisation, fsync, rename), so the share is measured inside the same
run, not as a difference of two noisy wall times. A second run per strategy checkpoints every
``--every`` iterations, to time many checkpoints.

    python benchmarks/checkpoint_cost.py --out benchmarks/results/checkpoint_cost.json
    python benchmarks/checkpoint_cost.py --quick          # 100 iterations per experience
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (sets the import path for lifelong)

from lifelong.config import load_config_file  # noqa: E402
from lifelong.runner import run_to_folder  # noqa: E402


def one(strategy: str, iterations: int, every, device, benchmark: str = "split-mnist") -> dict:
    cfg = load_config_file(C.ROOT / "configs" / "split-mnist.yaml")
    cfg["benchmark"]["name"] = benchmark
    cfg["strategy"] = {"name": strategy}
    cfg["train"]["iterations"] = iterations
    cfg["device"] = str(device)
    cfg["checkpoint"] = {"every_iterations": every} if every else None
    with tempfile.TemporaryDirectory() as d:
        res = run_to_folder(cfg, Path(d) / "run")
    ck = res["checkpoints"]
    return {"strategy": strategy, "every_iterations": every, "saves": ck["saved"], "checkpoint_s": ck["time_s"],
            "per_checkpoint_s": ck["time_s"] / max(ck["saved"], 1), "wall_s": res["wall_time_s"],
            "share": ck["time_s"] / res["wall_time_s"], "average_accuracy": res["average_accuracy"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--every", type=int, default=50, help="iterations between checkpoints in the second run")
    ap.add_argument("--iterations", type=int, help="per experience (default 500; --quick 100)")
    ap.add_argument("--benchmark", default="split-mnist")
    a, log, device = C.parse_common(ap, argv)
    iterations = a.iterations or (100 if a.quick else 500)
    rows = []
    for strategy in ("er", "ewc"):
        for every in (None, a.every):
            r = one(strategy, iterations, every, device, a.benchmark)
            log(json.dumps(r))
            rows.append(r)
    print(C.markdown_table(["strategy", "checkpoints", "saves", "time per checkpoint (s)", "checkpoint time (s)",
                            "run wall time (s)", "share of the run"],
                           [[r["strategy"], "default (experience ends, 300 s)" if r["every_iterations"] is None
                             else f"every {r['every_iterations']} iterations", r["saves"], r["per_checkpoint_s"],
                             r["checkpoint_s"], r["wall_s"], f"{100 * r['share']:.2f} %"] for r in rows]))
    out = {"benchmark": "checkpoint_cost", "target_share": 0.02, "iterations": iterations,
           "dataset": a.benchmark, "environment": C.environment(device), "rows": rows}
    C.write_json(a.out, out)
    return out


if __name__ == "__main__":
    main()
