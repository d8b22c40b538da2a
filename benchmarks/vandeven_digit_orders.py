"""Does the digit order explain domain-IL Split MNIST differences? (issue 3 diagnostic)

The reference code (GMvandeVen/continual-learning, main.py + data/load.py) seeds numpy with the
run's seed and then draws the digit permutation ``p = np.random.permutation(10)``; digit ``y``
becomes label ``p[y]`` and context ``i`` holds labels ``2i, 2i+1`` (domain label ``p[y] - 2i``).
The paper's 20 runs use seeds 2..21, so their digit orders are known exactly:
``order = argsort(p)`` in our ``benchmark.class_order`` convention.

This script runs one protocol cell (default: domain-IL None) of ``vandeven2022-splitmnist`` on
(a) the paper's exact digit orders and (b) our own per-seed random orders, for the same seeds,
and prints both means with their standard errors. Runs are cached in ``--out`` (resumable).

    python benchmarks/vandeven_digit_orders.py --seeds 2-21 --method none --scenario domain
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def reference_order(seed: int) -> list[int]:
    """The digit sequence the reference code trains on for ``seed`` (seed 0: unshuffled)."""
    if seed == 0:
        return list(range(10))
    np.random.seed(seed)
    p = np.random.permutation(list(range(10)))
    return [int(d) for d in np.argsort(p)]


def main(argv=None) -> None:
    import torch

    from lifelong.cli import _parse_seeds as parse_seeds
    from lifelong.reproduce import expand, load_protocol
    from lifelong.runner import run_config_dict

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="2-21")
    ap.add_argument("--scenario", default="domain")
    ap.add_argument("--method", default="none")
    ap.add_argument("--orders", default="reference,ours", help="which orders to run: reference, ours or both")
    ap.add_argument("--out", default="runs/diagnostics/vandeven-digit-orders")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)  # one core per run, as `lifelong reproduce` does
    seeds = parse_seeds(a.seeds)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    protocol = load_protocol("vandeven2022-splitmnist")
    specs = expand(protocol, seeds=seeds, scenarios=[a.scenario], methods=[a.method])
    table: dict[str, list[float]] = {}
    for which in a.orders.split(","):
        vals = []
        for spec in specs:
            cfg = json.loads(json.dumps(spec.config))
            # the protocol's seed_configs already give seeds 2-21 the paper's order; "ours" draws its own
            cfg["benchmark"]["class_order"] = reference_order(spec.seed) if which == "reference" else "random"
            path = out / f"{a.scenario}-{a.method}-{which}-seed{spec.seed}.json"
            if path.exists():
                acc = json.loads(path.read_text())["final_average_accuracy"]
            else:
                t0 = time.time()
                res = run_config_dict(cfg)
                acc = res["average_accuracy"]
                path.write_text(json.dumps({"config": cfg, "final_average_accuracy": acc,
                                            "class_order": cfg["benchmark"]["class_order"],
                                            "elapsed_s": time.time() - t0}))
            vals.append(100 * acc)
            print(f"{which:9s} seed {spec.seed:2d}: {100 * acc:6.2f}", flush=True)
        table[which] = vals
    for which, vals in table.items():
        se = statistics.stdev(vals) / len(vals) ** 0.5 if len(vals) > 1 else float("nan")
        print(f"{a.scenario}-IL {a.method}, {which} orders, seeds {a.seeds}: {statistics.mean(vals):.2f} +- {se:.2f} "
              f"(SE, n={len(vals)}; SD {statistics.stdev(vals) if len(vals) > 1 else float('nan'):.2f})")


if __name__ == "__main__":
    main()
