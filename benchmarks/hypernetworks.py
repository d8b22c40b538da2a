"""Hypernetworks (hnet, rnn_hnet) against fine-tuning and EWC on task-IL Split MNIST and
Permuted MNIST: accuracy, BWT, trainable parameters and time per run (docs/hypernetworks.md).

    python benchmarks/hypernetworks.py --benchmark split --iterations 500 --seeds 0 1 2 \
        --out benchmarks/results/hypernetworks_split.json

Every run goes through ``lifelong.runner.run`` (the same code as ``lifelong run``): target MLP
784-400-400 (split, the reference's) or 784-1000-1000 (``--width 1000``, permuted in the
reference), Adam, batch 128. ``trainable``: the hypernetwork and its embeddings for hnet /
rnn_hnet (``strategy.parameter_count()``, also in ``results.json``), the model for the others.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from _common import ROOT  # noqa: F401  (puts src/ on the path)

from lifelong.runner import run

# beta per benchmark: hypercl's split MNIST 0.01 and permuted MNIST 0.1. The permuted reference's other
# settings (embeddings 24/8, hnet [25, 25] ELU, chunks of 78000) are sized for its 1000-1000 target: on a
# 400-400 target they would make a hypernetwork 4x larger than the target, so both benchmarks use the
# split MNIST architecture (465k trainable parameters for the 478k of a 784-400-400 target).
HNET = {"split": {}, "permuted": {"hnet_beta": 0.1}}
RNN = {"split": {}, "permuted": {"rnn_hnet_beta": 0.1}}


def config(method: str, bench: str, seed: int, iterations: int, width: int, n_exp: int, lr: float) -> dict:
    strategy = {"name": method}
    if method == "hnet":
        strategy.update(HNET[bench])
    elif method == "rnn_hnet":
        strategy.update(RNN[bench])
    elif method == "ewc":
        strategy.update(ewc_fisher_samples=1000)
    name = "split-mnist" if bench == "split" else "permuted-mnist"
    return {"benchmark": {"name": name, "scenario": "task", "n_experiences": n_exp}, "seed": seed,
            "model": {"name": "mlp", "hidden": [width, width]},
            "train": {"optimizer": "adam", "lr": lr, "batch_size": 128, "iterations": iterations},
            "eval": {"every": None}, "strategy": strategy}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", choices=["split", "permuted"], default="split")
    ap.add_argument("--methods", nargs="+", default=["finetune", "ewc", "hnet", "rnn_hnet"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--iterations", type=int, default=2000,
                    help="per experience (the reference: 2000 split, 5000 permuted)")
    ap.add_argument("--experiences", type=int, default=None, help="default 5 (split), 10 (permuted)")
    ap.add_argument("--width", type=int, default=400)
    ap.add_argument("--lr", type=float, default=None, help="default 1e-3 (split), 1e-4 (permuted)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    n_exp = a.experiences or (5 if a.benchmark == "split" else 10)
    lr = a.lr or (1e-3 if a.benchmark == "split" else 1e-4)
    rows = []
    for seed in a.seeds:  # seed-major: a sweep cut short still has every method
        for method in a.methods:
            cfg = config(method, a.benchmark, seed, a.iterations, a.width, n_exp, lr)
            t0 = time.perf_counter()
            out = run(cfg)
            p = out["parameters"]
            row = {"method": method, "seed": seed, "average_accuracy": out["average_accuracy"], "bwt": out["bwt"],
                   "trainable": p.get("trainable", p["total"]), "target_network": p["total"],
                   "time_s": time.perf_counter() - t0, "train_time_s": out["train_time_s"], "config": cfg}
            rows.append(row)
            print(f"{method:9s} seed {seed}: acc {row['average_accuracy']:.4f} bwt {row['bwt']:+.4f} "
                  f"trainable {row['trainable']} time {row['time_s']:.0f}s", file=sys.stderr, flush=True)
            if a.out:  # after every run: a long sweep keeps what it has
                with open(a.out, "w") as f:
                    json.dump({"benchmark": a.benchmark, "iterations": a.iterations, "experiences": n_exp,
                               "width": a.width, "lr": lr, "threads": a.threads, "runs": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
