"""Task-free MAS (importance updates at detected loss plateaus) against MAS with the
boundaries given, and fine-tuning, online (one pass, batch 10, SGD), on domain-incremental
Split digits (5 experiences, labels 0/1 within each). Aljundi, Kelchtermans & Tuytelaars
(2019) report that task-free MAS comes close to MAS with boundaries.

    PYTHONPATH=src python benchmarks/mas_task_free.py --out benchmarks/results/mas_task_free.json
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
    "MAS, task-free (plateau detection)": ({"name": "mas", "mas_task_free": True}, True),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--benchmark", default="split-digits")
    ap.add_argument("--lambda", dest="lam", type=float, default=1.0)
    a, log, device = C.parse_common(ap, argv)
    rows = []
    for label, (strategy, task_free) in METHODS.items():
        accs, onl, updates = [], [], []
        for seed in range(a.seeds):
            strategy = dict(strategy, **({"mas_lambda": a.lam} if strategy["name"] == "mas" else {}))
            res = run({"benchmark": {"name": a.benchmark, "scenario": "domain"}, "model": {"hidden": [100]},
                       "strategy": strategy, "train": {"optimizer": "sgd", "lr": 0.05},
                       "online": {"task_free": task_free}, "eval": {"every": None}, "seed": seed,
                       "device": str(device)})
            accs.append(res["average_accuracy"])
            onl.append(res["online_accuracy"])
            updates.append(res["_state"]["strategy"].get("updates", 0) if isinstance(res["_state"]["strategy"], dict) else 0)
            log(f"{label} seed {seed}: final {res['average_accuracy']:.4f} online {res['online_accuracy']:.4f} "
                f"importance updates {updates[-1]}")
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)  # noqa: E731
        rows.append({"method": label, "final": statistics.fmean(accs), "final_sd": sd(accs),
                     "online": statistics.fmean(onl), "online_sd": sd(onl), "updates": updates})
    print(C.markdown_table(["method", "final avg acc", "online acc", "importance updates per seed"],
                           [[r["method"], f"{100 * r['final']:.2f} ± {100 * r['final_sd']:.2f}",
                             f"{100 * r['online']:.2f} ± {100 * r['online_sd']:.2f}", str(r["updates"])] for r in rows]))
    out = {"benchmark": "mas_task_free", "dataset": a.benchmark, "seeds": a.seeds, "lambda": a.lam, "rows": rows,
           "environment": C.environment(device)}
    C.write_json(a.out, out)
    return out


if __name__ == "__main__":
    main()
