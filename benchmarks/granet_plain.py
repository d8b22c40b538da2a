"""GraNet on a plain (non-continual) task: one experience holding the whole dataset.

Liu et al. (NeurIPS 2021), "Sparse Training via Boosting Pruning Plasticity with
Neuroregeneration", claims that zero-cost neuroregeneration (prune by magnitude, regrow as many
by gradient, every Delta T steps) lifts gradual magnitude pruning (GMP) at the same final
sparsity, and that sparse-to-sparse GraNet (s_i = 0.5) does as well as dense-to-sparse.

Rows, at final sparsity ``--sparsity`` (default 0.9) of the backbone's weights (heads dense):

- dense: plain training (``finetune``);
- GMP: ``granet`` with ``granet_regenerate: false`` and ``granet_init_sparsity: 0`` (dense to sparse,
  the cubic schedule, no regeneration);
- GraNet s_i=0: dense-to-sparse with regeneration;
- GraNet s_i=0.5: sparse-to-sparse (ERK at 50 % to start).

Everything through ``lifelong.runner.run`` with ``benchmark: {name: split-<dataset>,
n_experiences: 1}`` (one experience, all ten classes), an MLP, SGD with momentum 0.9 and
weight decay 5e-4 (the reference code's), cosine learning-rate decay, the pruning window the
first half of training and Delta T = ``--update-every``. Reports the final test accuracy
(mean ± sd over seeds), each sparse method's difference to GMP paired by seed, the non-zero
parameters and the training FLOPs from ``results.json``.

    PYTHONPATH=src python benchmarks/granet_plain.py --out benchmarks/results/granet_plain.json

Defaults (about 4 minutes of one core): MNIST, MLP 784-300-100 (LeNet-300-100), 3 seeds, 1500
iterations of batch 128 (3.2 epochs), lr 0.05, Delta T 50.
"""
from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (import path)

from _common import environment, markdown_table, parse_common, write_json
from lifelong.runner import run
from lifelong.stats import mean_std

METHODS = {
    "dense": {"name": "finetune"},
    "GMP": {"name": "granet", "granet_regenerate": False, "granet_init_sparsity": 0.0},
    "GraNet s_i=0": {"name": "granet", "granet_init_sparsity": 0.0},
    "GraNet s_i=0.5": {"name": "granet", "granet_init_sparsity": 0.5},
}


def config(method: str, seed: int, a) -> dict:
    strat = dict(METHODS[method])
    if strat["name"] == "granet":
        strat.update(granet_final_sparsity=a.sparsity, granet_update_every=a.update_every)
    return {"benchmark": {"name": f"split-{a.dataset}", "n_experiences": 1},
            "model": {"name": "mlp", "hidden": [int(h) for h in a.hidden.split(",")]},
            "strategy": strat,
            "train": {"iterations": a.iterations, "batch_size": a.batch_size, "optimizer": "sgd", "lr": a.lr,
                      "momentum": 0.9, "weight_decay": 5e-4, "schedule": {"name": "cosine"}},
            "eval": {"every": None}, "seed": seed, "device": "cpu", "threads": a.threads or None}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "digits"])
    ap.add_argument("--hidden", default="300,100")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--update-every", type=int, default=50)
    ap.add_argument("--methods", default=",".join(METHODS))
    a, log, device = parse_common(ap, argv)
    t0 = time.perf_counter()
    methods = a.methods.split(",")
    acc = {m: [] for m in methods}
    costs = {}
    for seed in range(a.seed, a.seed + a.seeds):
        for m in methods:
            res = run(config(m, seed, a))
            acc[m].append(res["average_accuracy"])
            costs[m] = {"parameters": res["parameters"], "flops": res["flops"]}
            log(f"seed {seed} {m}: {res['average_accuracy']:.4f} (non-zero {res['parameters']['nonzero']})")
    rows = []
    for m in methods:
        mu, sd = mean_std(acc[m])
        row = [m, f"{mu:.4f} ± {sd:.4f}"]
        if "GMP" in acc and m != "GMP":
            d = [x - g for x, g in zip(acc[m], acc["GMP"])]
            dm, dsd = mean_std(d)
            row.append(f"{dm:+.4f} ± {dsd:.4f} ({sum(v >= 0 for v in d)}/{len(d)})")
        else:
            row.append("")
        p, f = costs[m]["parameters"], costs[m]["flops"]
        row += [f"{p['nonzero']} / {p['total']}", f"{f['inference_per_sample']:,}", f"{f['training']:.3g}"]
        rows.append(row)
    header = ["method", "test accuracy", "minus GMP (k/n >= 0)", "non-zero / total parameters",
              "inference FLOPs per sample", "training FLOPs"]
    md = (f"{a.dataset}, one experience, MLP {a.hidden}, {a.iterations} iterations of {a.batch_size}, sparsity "
          f"{a.sparsity} of the backbone, Delta T {a.update_every}; mean ± sd over {a.seeds} seeds\n\n"
          + markdown_table(header, rows))
    print(md)
    out = {"benchmark": "granet_plain", "args": vars(a), "accuracy": acc, "costs": costs, "table_md": md,
           "wall_s": time.perf_counter() - t0, "environment": environment(device)}
    write_json(a.out, out)
    return out


if __name__ == "__main__":
    main()
