"""Why sequential Bayesian inference still forgets: a toy after Kessler et al. (2023, Section 4).

Two tasks of 2-D Gaussian classes share one binary head (domain-IL). Task 1 puts class 0 at
(-2, 2) and class 1 at (2, 2); task 2 puts class 0 at (2, -2) and class 1 at (-2, -2): together
an XOR, which a linear model cannot represent (misspecified) and an MLP with 10 hidden units
can (the reference code's toy network). Task sizes are balanced or imbalanced.

For each model and sizes N1/N2 three posteriors are compared by their accuracy on each task's
test set (balanced test sets, 200 points per task):

- ``joint``: HMC on both tasks' data under the N(0, 1/10) prior. By Bayes' rule this *is* the
  exact sequential posterior (p(w | D1, D2) ∝ p(D2 | w) p(w | D1)), so whatever it forgets,
  exact sequential inference forgets too.
- ``seqbayes``: the strategy -- HMC on task 1, a Gaussian fitted to the samples
  (``--density``), HMC on task 2 under that prior.
- ``task 2 only``: HMC on task 2 under the original prior (no posterior passed on:
  the fine-tuning of Bayesian inference).

Run: ``PYTHONPATH=src nice -n 10 python benchmarks/seqbayes_toy.py`` (6 minutes on a loaded
2-core machine with the defaults; ``--quick`` for a smoke run). Numbers: docs/bayesian.md.
"""
from __future__ import annotations

import argparse
import time

from _common import setup_torch

import torch

from lifelong.models import build_model
from lifelong.strategies.seqbayes import SeqBayes
from lifelong.streams.base import Experience, Split, Stream
from lifelong.training import train

CENTRES = {1: [(-2.0, 2.0), (2.0, 2.0)], 2: [(2.0, -2.0), (-2.0, -2.0)]}  # task -> class 0, class 1


def task_data(task: int, n: int, g: torch.Generator) -> Split:
    """``n`` points (half of each class, at least one of each) of ``task``, std 0.7 around
    the class centres."""
    n0 = max(n // 2, 1)
    sizes = (n0, max(n - n0, 1))
    x = torch.cat([torch.tensor(c) + 0.7 * torch.randn(k, 2, generator=g) for c, k in zip(CENTRES[task], sizes)])
    y = torch.cat([torch.full((k,), label, dtype=torch.long) for label, k in enumerate(sizes)])
    return Split(x, y)


def stream(parts: list[Split], tests: list[Split]) -> Stream:
    exps = [Experience(i, 0, [0, 1], p, Split(p.x[:0], p.y[:0]), tests[min(i, len(tests) - 1)])
            for i, p in enumerate(parts)]
    return Stream("toy", "domain", exps, 2, (2,))


def fit(parts: list[Split], tests: list[Split], hidden: list[int], seed: int, args) -> tuple[list[float], float]:
    torch.manual_seed(seed)
    model = build_model("mlp", (2,), 2, "domain", hidden=hidden)
    s = SeqBayes(seqbayes_samples=args.samples, seqbayes_burn_in=args.burn_in, seqbayes_thin=args.thin,
                 seqbayes_leapfrog=args.leapfrog, seqbayes_chains=args.chains, seqbayes_density=args.density,
                 seqbayes_max_params=10_000).setup(model, "cpu", seed)
    train(stream(parts, tests), s, lambda p: torch.optim.SGD(p, lr=0.0), batch_size=16, iterations=1, seed=seed)
    accs = [float((s.predict(t.x).argmax(1) == t.y).float().mean()) for t in tests]
    return accs, sum(s.accept_) / len(s.accept_)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="200/200,200/20,20/200", help="N1/N2 pairs, comma separated")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--burn-in", type=int, default=100)
    p.add_argument("--thin", type=int, default=1)
    p.add_argument("--leapfrog", type=int, default=10)
    p.add_argument("--chains", type=int, default=1)
    p.add_argument("--density", choices=["full", "diag"], default="full")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny settings (smoke run)")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.seeds, args.samples, args.burn_in, args.chains = "40/10", 1, 20, 20, 1
    setup_torch(args.threads, "cpu")
    sizes = [tuple(int(v) for v in s.split("/")) for s in args.sizes.split(",")]
    print(f"HMC: {args.chains} chain(s) x {args.samples} samples (thin {args.thin}, burn-in {args.burn_in}, "
          f"{args.leapfrog} leapfrog steps), density '{args.density}', {args.seeds} seeds; "
          "accuracy on task 1 / task 2 (mean over seeds)\n")
    print("| model | N1 / N2 | joint (= exact sequential) | seqbayes (HMC + Gaussian prior) | task 2 only |")
    print("|---|---|---|---|---|")
    t0 = time.perf_counter()
    for name, hidden in (("linear (misspecified)", []), ("MLP 2-10-2", [10])):
        for n1, n2 in sizes:
            rows = {"joint": [], "seq": [], "only2": []}
            for seed in range(args.seeds):
                g = torch.Generator().manual_seed(seed)
                d1, d2 = task_data(1, n1, g), task_data(2, n2, g)
                tests = [task_data(1, 200, g), task_data(2, 200, g)]
                rows["joint"].append(fit([Split.cat([d1, d2])], tests, hidden, seed, args)[0])
                rows["seq"].append(fit([d1, d2], tests, hidden, seed, args)[0])
                rows["only2"].append(fit([d2], tests, hidden, seed, args)[0])
            cell = lambda r: " / ".join(f"{100 * sum(a[i] for a in r) / len(r):.1f}" for i in range(2))  # noqa: E731
            print(f"| {name} | {n1} / {n2} | {cell(rows['joint'])} | {cell(rows['seq'])} | {cell(rows['only2'])} |",
                  flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
