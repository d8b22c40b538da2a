"""Diagnose the vandeven2022-permutedmnist "None" gap: one factor changed per arm, shortened runs.

Fine-tuning ("None") on permuted MNIST, domain-IL, as the protocol runs it (MLP 1000-1000, Adam
lr 1e-4 betas (0.9, 0.999), batch 128, 10 contexts, every context permuted), but with fewer
iterations per context and the final average accuracy measured once, at the end, on the first
``--test-per-context`` test images of every context (the protocol's runs evaluate the full test
sets after every context, which costs as much as a short run's training). Arms:

    --pad 0|2            zero pixels on each side before permuting (reference: 2, 28x28 -> 32x32)
    --reset              a fresh Adam for every context (reference default --optimizer adam: kept)
    --init-fan-in N      (pad 0 only) draw the first layer's initial weights and biases from
                         U(+-1/sqrt(N)) instead of U(+-1/sqrt(784)): the only thing that padding
                         changes for a single context, so pad 0 + --init-fan-in 1024 separates
                         the init scale from where the zero border lands in each context

    OMP_NUM_THREADS=1 python benchmarks/vdv_permuted_diag.py --pad 2 --iterations 300 --seeds 0,1

Prints one JSON line per seed: the arm, the seed, the final average accuracy (%), the per-context
accuracies and the CPU seconds.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from lifelong.data import mnist
from lifelong.models import build_model
from lifelong.streams import permuted_stream
from lifelong.training import index_batches


def run(data, pad: int, reset: bool, iterations: int, seed: int, test_per_context: int,
        init_fan_in: int | None = None) -> dict:
    stream = permuted_stream(data, n_experiences=10, scenario="domain", permute_first=True, pad=pad, seed=seed)
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "domain", None, hidden=[1000, 1000])
    if init_fan_in is not None:
        first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        bound = 1.0 / math.sqrt(init_fan_in)
        with torch.no_grad():
            first.weight.uniform_(-bound, bound)
            first.bias.uniform_(-bound, bound)
    g = torch.Generator().manual_seed(seed)
    make = lambda: torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.999))  # noqa: E731
    opt = make()
    t0 = time.process_time()
    for exp in stream:
        model.observe(exp.classes, exp.task_id)
        if reset and exp.index > 0:
            opt = make()
        model.train()
        for idx in index_batches(len(exp.train.y), 128, g, iterations):
            loss = F.cross_entropy(model(exp.train.x[idx]), exp.train.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    accs = []
    with torch.no_grad():
        for exp in stream:
            x, y = exp.test.x[:test_per_context], exp.test.y[:test_per_context]
            accs.append(100.0 * (model(x).argmax(1) == y).float().mean().item())
    return {"pad": pad, "reset": reset, "init_fan_in": init_fan_in, "iterations": iterations, "seed": seed,
            "test_per_context": test_per_context, "average_accuracy": sum(accs) / len(accs),
            "per_context": [round(a, 2) for a in accs], "cpu_s": round(time.process_time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pad", type=int, default=2)
    ap.add_argument("--reset", action="store_true")
    ap.add_argument("--init-fan-in", type=int, default=None)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--test-per-context", type=int, default=2000)
    a = ap.parse_args()
    torch.set_num_threads(1)
    data = mnist()
    for s in [int(v) for v in a.seeds.split(",")]:
        print(json.dumps(run(data, a.pad, a.reset, a.iterations, s, a.test_per_context, a.init_fan_in)), flush=True)


if __name__ == "__main__":
    main()
