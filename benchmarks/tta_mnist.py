"""Test-time adaptation on a long corrupted-MNIST stream: source model vs Tent vs CoTTA.

A small CNN with batch norm is trained on clean MNIST (the ordinary loop), then meets the TTA
stream of ``lifelong.streams.corruptions``: 12 corruptions at severity 5, ``--per-corruption``
test images each, the sequence repeated ``--cycles`` times, in batches of ``--batch-size``. Each
batch is predicted before the method adapts on it (``lifelong.tta``). The question (CoTTA, Wang
et al. CVPR 2022): does Tent's error grow over a long stream, and does CoTTA avoid it?

Prints a table (error per corruption, first and last cycle, overall; mean over seeds), writes
JSON (``--out``) and a figure of the error over the stream (``--figure``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import _common as C  # noqa: F401  (sets the import path)

import torch  # noqa: E402

from lifelong.data import mnist  # noqa: E402
from lifelong.streams.corruptions import CORRUPTIONS  # noqa: E402
from lifelong.tta import run_tta, train_source  # noqa: E402

METHODS = {"source": "finetune", "tent": "tent", "cotta": "cotta"}


def config(a, seed: int, strategy: str) -> dict:
    return {"stream": {"corruptions": a.corruptions.split(","), "severity": a.severity, "cycles": a.cycles,
                       "per_corruption": a.per_corruption, "batch_size": a.batch_size},
            "model": {"name": "cnn", "norm": "batch", "channels": [8, 16], "hidden": [64]},
            "train": {"iterations": a.train_iterations, "batch_size": 128, "lr": 1e-3},
            "strategy": {"name": strategy}, "seed": seed, "device": a.device}


def mean(xs):
    return sum(xs) / len(xs)


def pct(e: float) -> str:
    return f"{100 * e:.1f}"


def segment_errors(result: dict) -> list[float]:
    """Error of each (cycle, corruption) segment of one run, in stream order."""
    n_seg = max(r["segment"] for r in result["curve"]) + 1
    errors, counts = [0] * n_seg, [0] * n_seg
    for r in result["curve"]:
        errors[r["segment"]] += r["errors"]
        counts[r["segment"]] += r["n"]
    return [e / n for e, n in zip(errors, counts)]


def figure(path: Path, runs: dict, a) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6.5), gridspec_kw={"height_ratios": [2, 1]})
    colours = {"source": "tab:gray", "tent": "tab:red", "cotta": "tab:blue"}
    n_cor, n_seeds = len(a.corruptions.split(",")), len(a.seeds.split(","))
    for label, results in runs.items():
        per_seed = [segment_errors(r) for r in results]
        err = [100 * mean(col) for col in zip(*per_seed)]
        top.plot(range(len(err)), err, marker=".", ms=3, lw=1, color=colours.get(label), label=label)
        cyc = [100 * mean([r["error_per_cycle"][k] for r in results]) for k in range(a.cycles)]
        bottom.plot(range(1, a.cycles + 1), cyc, marker="o", ms=3, color=colours.get(label), label=label)
    for k in range(1, a.cycles):
        top.axvline(k * n_cor - 0.5, color="k", lw=0.5, alpha=0.3)
    top.set_xlabel(f"segment of the stream ({n_cor} corruptions x {a.cycles} cycles, {a.per_corruption} images "
                   f"each, batch {a.batch_size})")
    top.set_ylabel("error (%)")
    top.set_title(f"Corrupted-MNIST TTA stream, severity {a.severity}: error of the predictions made before "
                  f"adapting, mean over {n_seeds} seed(s)")
    top.legend(loc="upper right", fontsize=8)
    bottom.set_xlabel("cycle")
    bottom.set_ylabel("error (%), all corruptions")
    bottom.set_ylim(bottom=0)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--corruptions", default=",".join(CORRUPTIONS))
    ap.add_argument("--severity", type=int, default=5)
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--per-corruption", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--train-iterations", type=int, default=500)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--figure", default=None, help="PNG of the error over the stream")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="write the results as JSON to this file")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    log = (lambda *_: None) if a.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    device = C.setup_torch(a.threads, a.device)
    methods = a.methods.split(",")
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    data = mnist()
    t_all, c_all = time.perf_counter(), time.process_time()
    for seed in [int(s) for s in a.seeds.split(",")]:
        t0 = time.perf_counter()
        source = train_source(config(a, seed, "finetune"), data)
        log(f"seed {seed}: source model trained in {time.perf_counter() - t0:.1f}s, clean accuracy "
            f"{source.clean_accuracy:.4f}")
        for m in methods:
            r = run_tta(config(a, seed, METHODS[m]), source=source, data=data)
            runs[m].append(r)
            log(f"  {m}: error {r['error']:.4f} (first cycle {r['error_first_cycle']:.4f}, last "
                f"{r['error_last_cycle']:.4f}) in {r['adapt_time_s']:.1f}s")
    cors = a.corruptions.split(",")
    header = ["method", "cycle"] + cors + ["mean"]
    rows = []
    for m in methods:
        for label, k in (("first", 0), ("last", a.cycles - 1)):
            per = [mean([r["error_per_corruption_per_cycle"][c][k] for r in runs[m]]) for c in cors]
            rows.append([m, label] + [pct(e) for e in per] + [pct(mean([r["error_per_cycle"][k] for r in runs[m]]))])
        rows.append([m, "all"] + [pct(mean([r["error_per_corruption"][c] for r in runs[m]])) for c in cors]
                    + [pct(mean([r["error"] for r in runs[m]]))])
    table = C.markdown_table(header, rows)
    cyc_header = ["method"] + [f"c{k + 1}" for k in range(a.cycles)]
    cyc_rows = [[m] + [pct(mean([r["error_per_cycle"][k] for r in runs[m]])) for k in range(a.cycles)]
                for m in methods]
    cyc_table = C.markdown_table(cyc_header, cyc_rows)
    out = {"benchmark": "tta_mnist",
           "settings": {k: getattr(a, k) for k in ("seeds", "corruptions", "severity", "cycles", "per_corruption",
                                                   "batch_size", "train_iterations", "methods")},
           "environment": C.environment(device), "wall_time_s": time.perf_counter() - t_all,
           "cpu_time_s": time.process_time() - c_all,
           "summary": {m: {"error": mean([r["error"] for r in runs[m]]),
                           "error_per_seed": [r["error"] for r in runs[m]],
                           "error_per_cycle": [mean([r["error_per_cycle"][k] for r in runs[m]])
                                               for k in range(a.cycles)],
                           "error_first_cycle_per_seed": [r["error_first_cycle"] for r in runs[m]],
                           "error_last_cycle_per_seed": [r["error_last_cycle"] for r in runs[m]],
                           "clean_accuracy_source": [r["source"]["clean_accuracy"] for r in runs[m]],
                           "adapt_time_s": [r["adapt_time_s"] for r in runs[m]]} for m in methods},
           "runs": {m: [{k: v for k, v in r.items() if k not in ("curve", "config")}
                        | {"error_per_segment": [round(e, 6) for e in segment_errors(r)]} for r in runs[m]]
                    for m in methods},
           "table": table, "cycle_table": cyc_table}
    print(f"## TTA on corrupted MNIST: error (%) per corruption, severity {a.severity}, {a.cycles} cycles x "
          f"{len(cors)} corruptions x {a.per_corruption} images, batch {a.batch_size}, seeds {a.seeds}\n")
    print(table)
    print("\n## Error (%) per cycle\n")
    print(cyc_table)
    C.write_json(a.out, out)
    if a.figure:
        figure(Path(a.figure), runs, a)
    return out


if __name__ == "__main__":
    main()
