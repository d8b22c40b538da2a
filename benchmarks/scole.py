"""SCoLe knowledge accumulation: does plain SGD fine-tuning accumulate knowledge with revisits?

Lesort et al., "Challenging Common Assumptions about Catastrophic Forgetting and Knowledge
Accumulation" (CoLLAs 2023) train with plain SGD on long sequences of short 2-class tasks whose
classes recur, and find that the accuracy on *all* classes grows over the sequence (knowledge
accumulates) although each task forgets the others' classes. The small version here: the
benchmark ``scole-<dataset>`` (:func:`lifelong.streams.revisits.scole_stream`), fine-tuning
(no method against forgetting), an MLP, SGD, a few iterations per experience, run through
``lifelong.runner.run``; the accuracy on all classes after every experience comes from the
run's accuracy matrix (:func:`lifelong.accumulation.knowledge_accumulation`).

Two class distributions: uniform, and unbalanced (class c's weight ``0.6 ** c``: class 0 about
40 times as frequent as class 9). Reported: the accuracy-on-all-classes curve (every
``--every`` experiences), its mean over the first and last tenth of the stream, the accuracy
on the current experience's own classes, and, per class, the final accuracy with the class's
number of visits. What full forgetting would give: an experience's 2 classes only, about
2/10 = 0.2 on all classes (balanced test set).

    PYTHONPATH=src python benchmarks/scole.py --out benchmarks/results/scole.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (sets the import path for lifelong)

import numpy as np  # noqa: E402

from lifelong.accumulation import knowledge_accumulation  # noqa: E402
from lifelong.runner import run  # noqa: E402


def one(a, probs, seed: int) -> dict:
    bench = {"name": f"scole-{a.dataset}", "n_experiences": a.experiences, "classes_per_experience": 2,
             "train_per_class": a.train_per_class, "test_per_class": a.test_per_class}
    if probs is not None:
        bench["class_probs"] = probs
    cfg = {"benchmark": bench, "strategy": {"name": "finetune"}, "model": {"hidden": a.hidden},
           "train": {"optimizer": "sgd", "lr": a.lr, "iterations": a.iterations, "batch_size": a.batch_size},
           "eval": {"every": None}, "seed": seed, "device": a.device, "threads": a.threads or None}
    res = run(cfg)
    curve = knowledge_accumulation(res)
    R = np.asarray(res["accuracy_matrix"])
    T = len(curve)
    tenth = max(1, T // 10)
    classes = [e["classes"] for e in res["experiences"]]
    visits = [sum(c in cs for cs in classes) for c in range(10)]
    return {"config": cfg, "curve": curve, "curve_every": [curve[i] for i in range(0, T, a.every)] + [curve[-1]],
            "first_tenth": float(np.mean(curve[:tenth])), "last_tenth": float(np.mean(curve[-tenth:])),
            "max": float(max(curve)), "final": curve[-1],
            "current_experience_accuracy": float(np.mean([R[i, i] for i in range(T)])),
            "visits_per_class": visits, "wall_time_s": res["wall_time_s"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="digits", choices=["digits", "mnist"])
    ap.add_argument("--experiences", type=int, default=300)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--hidden", type=int, nargs="+", default=[100])
    ap.add_argument("--train-per-class", type=int, default=None)
    ap.add_argument("--test-per-class", type=int, default=None)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--seeds", type=int, default=2)
    a, log, _ = C.parse_common(ap, argv)
    out = {"environment": C.environment(C.setup_torch(a.threads, a.device)), "args": vars(a), "runs": {}}
    unbalanced = [0.6 ** c for c in range(10)]
    rows = []
    for label, probs in (("uniform", None), ("unbalanced 0.6^c", unbalanced)):
        runs = [one(a, probs, a.seed + s) for s in range(a.seeds)]
        out["runs"][label] = runs
        mean = {k: float(np.mean([r[k] for r in runs])) for k in ("first_tenth", "last_tenth", "max", "final",
                                                                 "current_experience_accuracy")}
        out.setdefault("summary", {})[label] = mean
        rows.append([label, f"{mean['first_tenth']:.3f}", f"{mean['last_tenth']:.3f}", f"{mean['final']:.3f}",
                     f"{mean['current_experience_accuracy']:.3f}"])
        log(f"{label}: {mean}")
    table = C.markdown_table(["classes", "acc. all classes, first 10 %", "last 10 %", "final",
                              "own classes (R[i][i])"], rows)
    out["table"] = table
    print(table)
    C.write_json(a.out, out)
    return out


if __name__ == "__main__":
    main()
