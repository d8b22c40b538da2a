"""Online replay methods on split digits, class-incremental: one pass over each experience
with minibatches of 10 (SGD), a memory of ``--mem`` samples, several seeds. Prints a Markdown
table of the average accuracy after the last experience (mean +- sd over seeds).

GDumb trains only on its memory: its learner gets ``--gdumb-epochs`` passes over the memory
per experience (its paper trains many passes), reported beside the same-step-count run.

    PYTHONPATH=src python benchmarks/online_replay.py --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import statistics
import time

import _common  # noqa: F401  (import path)
import torch

from lifelong.data import digits
from lifelong.models import build_model
from lifelong.strategies import STRATEGIES
from lifelong.streams import split_stream
from lifelong.training import train

METHODS = ["finetune", "er", "er_ace", "der", "derpp", "mir", "gdumb", "sharp", "onpro"]


def run(name, seed, args, epochs=1):
    stream = split_stream(digits(), scenario="class", n_experiences=5, seed=0)
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "class", hidden=args.hidden)
    params = {"mem_size": args.mem} if "mem_size" in STRATEGIES[name].get_param_names() else {}
    strategy = STRATEGIES[name](**params).setup(model, "cpu", seed)
    res = train(stream, strategy, lambda p: torch.optim.SGD(p, lr=args.lr), batch_size=args.batch_size,
                epochs=epochs, seed=seed)
    return res.metrics()["average_accuracy"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--mem", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--hidden", nargs="+", type=int, default=[100, 100])
    ap.add_argument("--gdumb-epochs", type=int, default=30)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = [(m, 1) for m in args.methods]
    if "gdumb" in args.methods:
        rows.append(("gdumb", args.gdumb_epochs))
    print(f"| method | average accuracy (mean +- sd, seeds {args.seeds}) | per seed | time (s) |")
    print("|---|---|---|---|")
    for name, epochs in rows:
        t0 = time.perf_counter()
        accs = [run(name, s, args, epochs) for s in args.seeds]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        label = name if epochs == 1 else f"{name} ({epochs} passes over the memory)"
        print(f"| {label} | {100 * statistics.mean(accs):.1f} +- {100 * sd:.1f} | "
              f"{', '.join(f'{100 * a:.1f}' for a in accs)} | {time.perf_counter() - t0:.1f} |", flush=True)


if __name__ == "__main__":
    main()
