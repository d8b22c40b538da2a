"""Evidence for the seed claim of Defazio et al. 2023 ("When, Why and How Much? Adaptive Learning
Rate Scheduling by Refinement", arXiv 2310.07831): linear decay matches or beats cosine decay;
the refined schedule (from the gradient norms of a previous run) is the paper's further step.

Split MNIST (5 experiences), class-IL and task-IL, fine-tuning and ER (500 samples); every
learning-rate schedule applied per experience (each experience decays from the peak again, the
optimizer is reset per experience, as the library does by default):

- constant: the reference;
- cosine: ``(1 + cos(pi t / T)) / 2``;
- linear: ``1 - t / T``;
- refined: from the gradient norms that the *linear* run of the same configuration and seed
  recorded (``train.record_grad_norms: true``), one refined schedule per experience, as the
  paper refines a linear-decay run.

Everything through ``lifelong.runner.run`` with ``train.schedule``. The table gives each
schedule's final average accuracy (mean ± sd over seeds) and the paired differences against
cosine (linear - cosine is the claim).

    PYTHONPATH=src python benchmarks/schedules.py --out benchmarks/results/schedules.json

Defaults (about 4.5 minutes of one core): 3 seeds, 200 iterations per experience, batch 128,
Adam (peak lr 1e-3; ``--optimizer sgd --lr 0.1`` for plain SGD, the setting of the paper's
theory and of the refinement's l2 variant), MLP 784-200-200, no continual evaluation.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (import path)

from _common import environment, markdown_table, parse_common, write_json
from lifelong.runner import run
from lifelong.stats import mean_std

SCHEDULES = ["constant", "cosine", "linear", "refined"]


def config(scenario: str, strategy: str, schedule: dict, seed: int, a, record: bool = False) -> dict:
    strat = {"name": strategy, **({"mem_size": 500} if strategy == "er" else {})}
    train = {"iterations": a.iterations, "batch_size": a.batch_size, "optimizer": a.optimizer, "lr": a.lr,
             "schedule": schedule}
    if record:
        train["record_grad_norms"] = True
    return {"benchmark": {"name": "split-mnist", "scenario": scenario}, "model": {"name": "mlp", "hidden": [200, 200]},
            "strategy": strat, "train": train, "eval": {"every": None}, "seed": seed, "device": "cpu",
            "threads": a.threads or None}


def table_rows(results: dict) -> list[list]:
    rows = []
    for key, per in results.items():
        cos = per["cosine"]
        row = [key] + [f"{mean_std(per[s])[0]:.4f} ± {mean_std(per[s])[1]:.4f}" for s in SCHEDULES]
        for s in ("linear", "refined", "constant"):
            d = [x - c for x, c in zip(per[s], cos)]
            m, sd = mean_std(d)
            row.append(f"{m:+.4f} ± {sd:.4f} ({sum(v >= 0 for v in d)}/{len(d)})")
        rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=200, help="per experience")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    ap.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    ap.add_argument("--scenarios", default="class,task")
    ap.add_argument("--strategies", default="finetune,er")
    a, log, device = parse_common(ap, argv)
    t0 = time.perf_counter()
    results: dict[str, dict[str, list[float]]] = {}  # final average accuracy
    learned: dict[str, dict[str, list[float]]] = {}  # accuracy on each experience right after training it
    tmp = Path(tempfile.mkdtemp(prefix="lifelong-schedules-"))
    for scenario in a.scenarios.split(","):
        for strategy in a.strategies.split(","):
            key = f"{scenario}-IL {strategy}"
            results[key] = {s: [] for s in SCHEDULES}
            learned[key] = {s: [] for s in SCHEDULES}
            for seed in range(a.seed, a.seed + a.seeds):
                norms_file = tmp / f"{scenario}-{strategy}-{seed}.json"
                for name in SCHEDULES:
                    if name == "refined":
                        sched = {"name": "refined", "grad_norms_from": str(norms_file)}
                    else:
                        sched = {"name": name}
                    res = run(config(scenario, strategy, sched, seed, a, record=name == "linear"))
                    if name == "linear":
                        norms_file.write_text(json.dumps({"grad_norms": res["grad_norms"],
                                                          "boundaries": res["boundaries"]}))
                    acc = res["average_accuracy"]
                    results[key][name].append(acc)
                    R = res["accuracy_matrix"]
                    learned[key][name].append(sum(R[i][i] for i in range(len(R))) / len(R))
                    log(f"{key} seed {seed} {name}: {acc:.4f}")
    header = ["setting"] + SCHEDULES + ["linear - cosine", "refined - cosine", "constant - cosine"]
    md = (f"Split MNIST ({a.iterations} iterations per experience, {a.optimizer} lr {a.lr}); "
          f"mean ± sd over {a.seeds} seeds; differences paired by seed, (k/n): seeds where the schedule matches or beats cosine\n\n"
          "Final average accuracy\n\n" + markdown_table(header, table_rows(results))
          + "\n\nAccuracy on each experience right after training it (mean of the diagonal)\n\n"
          + markdown_table(header, table_rows(learned)))
    print(md)
    out = {"benchmark": "schedules", "args": vars(a), "schedules": SCHEDULES, "results": results, "learned": learned,
           "table_md": md, "wall_s": time.perf_counter() - t0, "environment": environment(device)}
    write_json(a.out, out)
    return out


if __name__ == "__main__":
    main()
