"""Operator count per training step, lifelong against the plain loop of ``overhead.py``.

On a GPU every tensor operation is a kernel launch (a few microseconds of CPU time each), so
per-step operations beyond the plain loop's are the overhead that would show there even when
it is lost in the noise on a CPU. This counts the top-level ``aten::`` operations of whole
runs with ``torch.profiler`` at two lengths and divides the difference by the extra steps, so
the per-experience work (evaluation, Fisher, copies) cancels out. Runs on CPU; no timing.

    PYTHONPATH=src python benchmarks/profile_ops.py [--strategies finetune,er,ewc,lwf]
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402,F401  (sets the import path for lifelong)
import overhead as O  # noqa: E402

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402


def count_ops(name: str, side: str, P: dict, iterations: int) -> collections.Counter:
    go = O.RUNNERS[side](name, P, iterations, 128)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        go()
    return collections.Counter(ev.name for ev in prof.events()
                               if ev.cpu_parent is None and ev.name.startswith("aten::"))


def per_step(name: str, side: str, P: dict, short: int, long: int) -> dict[str, float]:
    a, b = count_ops(name, side, P, short), count_ops(name, side, P, long)
    steps = (long - short) * O.N_EXP
    return {k: (b[k] - a.get(k, 0)) / steps for k in b if b[k] != a.get(k, 0)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--strategies", default=",".join(O.STRATEGIES))
    ap.add_argument("--iterations", default="5,15", help="the two run lengths (iterations per experience)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    short, long = (int(v) for v in a.iterations.split(","))
    P = O.prepare(torch.device("cpu"), 0, test_per_exp=100)
    out, rows = {}, []
    for name in a.strategies.split(","):
        lf, pl = per_step(name, "lifelong", P, short, long), per_step(name, "plain", P, short, long)
        extra = {k: round(lf.get(k, 0) - pl.get(k, 0), 2) for k in sorted(set(lf) | set(pl))
                 if abs(lf.get(k, 0) - pl.get(k, 0)) >= 0.05}
        out[name] = {"lifelong": sum(lf.values()), "plain": sum(pl.values()), "difference": extra}
        rows.append([name, f"{sum(lf.values()):.1f}", f"{sum(pl.values()):.1f}",
                     ", ".join(f"{k.removeprefix('aten::')} {v:+g}" for k, v in extra.items()) or "-"])
    print("## Top-level aten operations per training step\n")
    print(C.markdown_table(["strategy", "lifelong", "plain", "lifelong - plain, by operation"], rows))
    return out


if __name__ == "__main__":
    main()
