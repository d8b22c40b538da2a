"""DST-CL: task-IL accuracy against sparsity, ERK against uniform initialisation.

Yildirim et al. (arXiv:2308.14831, CPAL 2024), "Continual Learning with Dynamic Sparse
Training", find on CIFAR-100 and miniImageNet (10 tasks) that ERK initialisation does better at
low sparsity and uniform initialisation at high sparsity (unless extreme). This script asks the
same question on task-IL Split MNIST (5 tasks): ``dstcl`` at every sparsity of ``--sparsities``
with ``dstcl_distribution`` ERK and uniform, the other components fixed (``--prune``,
``--grow``, ``--update-every``), through ``lifelong.runner.run``, and a dense fine-tuning row
for reference.

Reports, per sparsity and initialisation, the final average accuracy (mean ± sd over seeds),
the ERK minus uniform difference paired by seed ((k/n) = seeds where ERK is >= uniform), the BWT
(0 by construction) and the non-zero backbone+head parameters (the union of the tasks'
connections).

    PYTHONPATH=src python benchmarks/dstcl_sparsity.py --out benchmarks/results/dstcl_sparsity.json

Defaults (about 7 minutes of one idle core): MNIST, MLP 784-400-400, 3 seeds, 300 iterations of
batch 64 per task (about 1.6 epochs of a task's ~12k images), Adam lr 1e-3 (the reference
code's optimizer and rate), update every 50 steps, magnitude pruning, random growth (the
reference code's defaults).
"""
from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (import path)

from _common import environment, markdown_table, parse_common, write_json
from lifelong.runner import run
from lifelong.stats import mean_std


def config(sparsity: float | None, init: str | None, seed: int, a) -> dict:
    if sparsity is None:
        strat = {"name": "finetune"}
    else:
        strat = {"name": "dstcl", "dstcl_sparsity": sparsity, "dstcl_distribution": init,
                 "dstcl_prune": a.prune, "dstcl_grow": a.grow, "dstcl_update_every": a.update_every}
    return {"benchmark": {"name": f"split-{a.dataset}", "n_experiences": 5, "scenario": "task"},
            "model": {"name": "mlp", "hidden": [int(h) for h in a.hidden.split(",")]},
            "strategy": strat,
            "train": {"iterations": a.iterations, "batch_size": a.batch_size, "optimizer": "adam", "lr": a.lr},
            "eval": {"every": None}, "seed": seed, "device": "cpu", "threads": a.threads or None}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "digits"])
    ap.add_argument("--hidden", default="400,400")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--sparsities", default="0.5,0.8,0.9,0.95")
    ap.add_argument("--prune", default="magnitude", choices=["magnitude", "random"])
    ap.add_argument("--grow", default="random", choices=["gradient", "random"])
    ap.add_argument("--update-every", type=int, default=50)
    ap.add_argument("--no-dense", action="store_true", help="leave out the dense fine-tuning row")
    a, log, device = parse_common(ap, argv)
    t0 = time.perf_counter()
    sparsities = [float(s) for s in a.sparsities.split(",")]
    cells = [(s, i) for s in sparsities for i in ("erk", "uniform")] + ([] if a.no_dense else [(None, None)])
    acc = {c: [] for c in cells}
    bwt = {c: [] for c in cells}
    final = {c: [] for c in cells}  # per seed, each task's final accuracy (the matrix's last row)
    params = {}
    for seed in range(a.seed, a.seed + a.seeds):
        for s, i in cells:
            res = run(config(s, i, seed, a))
            acc[(s, i)].append(res["average_accuracy"])
            bwt[(s, i)].append(res["bwt"])
            final[(s, i)].append(res["accuracy_matrix"][-1])
            params[(s, i)] = res["parameters"]
            log(f"seed {seed} sparsity {s} {i}: {res['average_accuracy']:.4f} bwt {res['bwt']:+.4f}")
    rows = []
    for s in sparsities:
        erk, uni = acc[(s, "erk")], acc[(s, "uniform")]
        d = [e - u for e, u in zip(erk, uni)]
        dm, dsd = mean_std(d)
        row = [f"{s:.0%}"]
        for i in ("erk", "uniform"):
            mu, sd = mean_std(acc[(s, i)])
            row.append(f"{mu:.4f} ± {sd:.4f}")
        row.append(f"{dm:+.4f} ± {dsd:.4f} ({sum(v >= 0 for v in d)}/{len(d)})")
        row.append(f"{max(abs(b) for i in ('erk', 'uniform') for b in bwt[(s, i)]):.1e}")
        row += [f"{params[(s, i)]['nonzero']:,}" for i in ("erk", "uniform")]
        rows.append(row)
    if not a.no_dense:
        mu, sd = mean_std(acc[(None, None)])
        bm, _ = mean_std(bwt[(None, None)])
        rows.append(["dense fine-tuning", f"{mu:.4f} ± {sd:.4f}", "", "", f"{bm:+.4f} (mean)",
                     f"{params[(None, None)]['nonzero']:,}", ""])
    header = ["sparsity per task", "ERK", "uniform", "ERK minus uniform (k/n >= 0)", "max |BWT|",
              "non-zero parameters, ERK", "uniform"]
    md = (f"task-IL split-{a.dataset}, 5 tasks, MLP {a.hidden}, {a.iterations} iterations of {a.batch_size} per "
          f"task, Adam lr {a.lr}, prune {a.prune}, grow {a.grow}, update every {a.update_every}; final average "
          f"accuracy, mean ± sd over {a.seeds} seeds\n\n" + markdown_table(header, rows))
    print(md)
    key = lambda c: "dense" if c[0] is None else f"{c[0]}/{c[1]}"  # noqa: E731
    out = {"benchmark": "dstcl_sparsity", "args": vars(a), "accuracy": {key(c): v for c, v in acc.items()},
           "bwt": {key(c): v for c, v in bwt.items()}, "final_per_task": {key(c): v for c, v in final.items()},
           "parameters": {key(c): v for c, v in params.items()},
           "table_md": md, "wall_s": time.perf_counter() - t0, "environment": environment(device)}
    write_json(a.out, out)
    return out


if __name__ == "__main__":
    main()
