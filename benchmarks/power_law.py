"""Power-law environments on Permuted MNIST: revisits ~ (time since last seen)^-alpha vs uniform vs none.

Gandhi, Shah, Marupudi & Varma, "Catastrophic Interference is Mitigated in Naturalistic
Power-Law Learning Environments" (2024): when tasks recur with the statistics of natural
environments (the probability of meeting a task again decays as a power of the time since it
was last met), plain SGD training suffers much less catastrophic interference than in the
standard sequential setting, about as well as uniform rehearsal, and a task met again is
relearned faster (facilitation). The small version here: the benchmark
``powerlaw-permuted-mnist`` (:func:`lifelong.streams.revisits.power_law_stream`), fine-tuning
(no method against forgetting), an MLP, plain SGD, run through ``lifelong.runner.run`` with
three schedules of the same length and the same number of gradient steps:

- ``power_law``: revisit task k with probability ~ (t - last_seen_k)^-alpha;
- ``uniform``: revisit any introduced task with equal probability (uniform rehearsal);
- ``none``: no revisits (the slots continue the newest task: sequential training).

Columns: the final accuracy averaged over all tasks; the mean over the stream of the average
accuracy on the tasks introduced so far; facilitation: for each task that is *returned* to (a
visit whose previous slot trained another task), the mean training loss of its first return
visit divided by that of its first visit (< 1: relearned faster), and the accuracy on it when
the return starts (what was retained); and the mean first-visit loss of the tasks introduced
after the first (how fast a *new* task is learned).

    PYTHONPATH=src python benchmarks/power_law.py --out benchmarks/results/power_law.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (sets the import path for lifelong)

import numpy as np  # noqa: E402

from lifelong.runner import run  # noqa: E402

MODES = ("power_law", "uniform", "none")


def analyse(res: dict) -> dict:
    R = np.asarray(res["accuracy_matrix"])
    tasks = [e["task_id"] for e in res["experiences"]]
    loss = res["train_loss"]
    T = len(tasks)
    col = {}  # task -> its first visit (also a column of R holding its test set)
    for j, k in enumerate(tasks):
        col.setdefault(k, j)
    intro = col
    final = float(np.mean([R[-1, col[k]] for k in col]))
    over_stream = float(np.mean([np.mean([R[i, col[k]] for k in col if intro[k] <= i]) for i in range(T)]))
    ratios, retained = [], []
    for k, j1 in intro.items():
        back = [j for j in range(j1 + 1, T) if tasks[j] == k and tasks[j - 1] != k]
        if back:
            j2 = back[0]
            ratios.append(loss[j2] / loss[j1])
            retained.append(R[j2 - 1, col[k]])
    new_loss = float(np.mean([loss[j] for k, j in intro.items() if k > 0]))
    return {"final_accuracy": final, "mean_accuracy_over_stream": over_stream,
            "relearn_loss_ratio": float(np.mean(ratios)) if ratios else None,
            "accuracy_at_return": float(np.mean(retained)) if retained else None,
            "returns": len(ratios), "new_task_first_visit_loss": new_loss,
            "visits_per_task": [tasks.count(k) for k in sorted(col)]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--experiences", type=int, default=60)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--train-per-experience", type=int, default=500)
    ap.add_argument("--test-per-task", type=int, default=500)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--hidden", type=int, nargs="+", default=[100])
    ap.add_argument("--seeds", type=int, default=3)
    a, log, _ = C.parse_common(ap, argv)
    out = {"environment": C.environment(C.setup_torch(a.threads, a.device)), "args": vars(a), "runs": {},
           "summary": {}}
    rows = []
    for mode in MODES:
        runs = []
        for s in range(a.seeds):
            cfg = {"benchmark": {"name": "powerlaw-permuted-mnist", "n_tasks": a.tasks, "n_experiences": a.experiences,
                                 "revisit": mode, "revisit_alpha": a.alpha,
                                 "train_per_experience": a.train_per_experience, "test_per_task": a.test_per_task},
                   "strategy": {"name": "finetune"}, "model": {"hidden": a.hidden},
                   "train": {"optimizer": "sgd", "lr": a.lr, "iterations": a.iterations,
                             "batch_size": a.batch_size},
                   "eval": {"every": None}, "seed": a.seed + s, "device": a.device, "threads": a.threads or None}
            res = run(cfg)
            runs.append({"config": cfg, **analyse(res), "wall_time_s": res["wall_time_s"]})
            log(f"{mode} seed {a.seed + s}: {runs[-1]}")
        out["runs"][mode] = runs

        def mean(key):
            vals = [r[key] for r in runs if r[key] is not None]
            return float(np.mean(vals)) if vals else None

        summ = {k: mean(k) for k in ("final_accuracy", "mean_accuracy_over_stream", "relearn_loss_ratio",
                                      "accuracy_at_return", "new_task_first_visit_loss")}
        out["summary"][mode] = summ
        fmt = (lambda v: "n/a" if v is None else f"{v:.3f}")
        rows.append([mode, *(fmt(summ[k]) for k in summ)])
    table = C.markdown_table(["revisits", "final acc. (all tasks)", "mean acc. over stream",
                              "relearn loss ratio (2nd/1st visit)", "acc. when returning",
                              "new-task first-visit loss"], rows)
    out["table"] = table
    print(table)
    C.write_json(a.out, out)
    return out


if __name__ == "__main__":
    main()
