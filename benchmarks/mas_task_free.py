"""Task-free MAS (importance updates at detected loss plateaus) against MAS with the
boundaries given, and fine-tuning, online (one pass, batch 10, SGD lr 0.05, MLP 100), on a
split stream (5 experiences), domain- or class-incremental. Aljundi, Kelchtermans &
Tuytelaars (2019) report that task-free MAS comes close to MAS with boundaries. For each
task-free MAS run it reports the steps where an importance update was triggered against the
true boundaries: how many experiences got one (found), how many extra ones (false), and the
median delay (steps after the experience started).

The relative detection's defaults were chosen on split digits (the tuning stream); report on
Split MNIST / Fashion-MNIST:

    PYTHONPATH=src python benchmarks/mas_task_free.py --benchmark split-mnist --scenario domain \
        --out benchmarks/results/mas_task_free_mnist_domain.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (sets the import path for lifelong)

from lifelong.runner import run  # noqa: E402

METHODS = {
    "finetune (task-free)": ({"name": "finetune"}, True),
    "MAS, boundaries given": ({"name": "mas"}, False),
    "MAS, task-free, relative detection (ours)": ({"name": "mas", "mas_task_free": True}, True),
    "MAS, task-free, absolute thresholds (paper)": ({"name": "mas", "mas_task_free": True,
                                                    "mas_detection": "absolute"}, True),
}


def detection(steps: list[int], ends: list[int]) -> dict:
    """Match detected update steps to experiences: ``ends`` are the steps where each ends."""
    starts = [0] + ends[:-1]
    per_exp = [[s - a for s in steps if a <= s < b] for a, b in zip(starts, ends)]
    delays = [d[0] for d in per_exp if d]
    return {"found": sum(1 for d in per_exp if d), "false": sum(max(len(d) - 1, 0) for d in per_exp),
            "median_delay": statistics.median(delays) if delays else None}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--benchmark", default="split-digits")
    ap.add_argument("--scenario", default="domain", choices=["domain", "class"])
    ap.add_argument("--lambda", dest="lam", type=float, default=1.0)
    a, log, device = C.parse_common(ap, argv)
    rows = []
    for label, (strategy, task_free) in METHODS.items():
        accs, onl, updates, found = [], [], [], []
        for seed in range(a.seeds):
            strategy = dict(strategy, **({"mas_lambda": a.lam} if strategy["name"] == "mas" else {}))
            res = run({"benchmark": {"name": a.benchmark, "scenario": a.scenario}, "model": {"hidden": [100]},
                       "strategy": strategy, "train": {"optimizer": "sgd", "lr": 0.05},
                       "online": {"task_free": task_free}, "eval": {"every": None}, "seed": seed,
                       "device": str(device), "threads": a.threads or None})
            accs.append(res["average_accuracy"])
            onl.append(res["online_accuracy"])
            state = res["_state"]["strategy"] if isinstance(res["_state"]["strategy"], dict) else {}
            updates.append(state.get("updates", 0))
            steps = state.get("detected_steps") if strategy.get("mas_task_free") else None
            found.append(None if steps is None else {**detection(steps, res["boundaries"]), "steps": steps,
                                                     "boundaries": res["boundaries"]})
            log(f"{label} seed {seed}: final {res['average_accuracy']:.4f} online {res['online_accuracy']:.4f} "
                f"importance updates {updates[-1]}" + ("" if found[-1] is None else f" detection {found[-1]}"))
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)  # noqa: E731
        rows.append({"method": label, "final": statistics.fmean(accs), "final_sd": sd(accs),
                     "online": statistics.fmean(onl), "online_sd": sd(onl), "updates": updates,
                     "detection": found})

    def det(r):
        if r["detection"][0] is None:
            return "-"
        return "; ".join(f"{d['found']}/{len(d['boundaries'])} found, {d['false']} extra, delay {d['median_delay']}"
                         for d in r["detection"])

    print(C.markdown_table(["method", "final avg acc", "online acc", "importance updates per seed",
                            "detection per seed (experiences found, extra updates, median delay in steps)"],
                           [[r["method"], f"{100 * r['final']:.2f} ± {100 * r['final_sd']:.2f}",
                             f"{100 * r['online']:.2f} ± {100 * r['online_sd']:.2f}", str(r["updates"]), det(r)]
                            for r in rows]))
    out = {"benchmark": "mas_task_free", "dataset": a.benchmark, "scenario": a.scenario, "seeds": a.seeds,
           "lambda": a.lam, "rows": rows, "environment": C.environment(device)}
    C.write_json(a.out, out)
    return out


if __name__ == "__main__":
    main()
