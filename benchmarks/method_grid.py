"""Evidence grids of issues 15 and 16: accuracy, BWT, parameters, training FLOPs and time of a
family of methods next to fine-tuning, EWC, SI and ER, on several benchmarks, scenarios and seeds.

Every (benchmark, scenario, method) cell is one resumable ``lifelong run`` sweep over the seeds in
``OUT/<benchmark>-<scenario>/<method>`` (rerunning the command reuses finished runs; a method that
does not support a scenario is skipped and listed). The table is read back from the runs'
``results.json`` (mean ± std over seeds)::

    PYTHONPATH=src python benchmarks/method_grid.py --family isolation --out runs/isolation-grid
    PYTHONPATH=src python benchmarks/method_grid.py --family bayesian --out runs/bayesian-grid
    PYTHONPATH=src python benchmarks/method_grid.py --family bayesian --out runs/bayesian-grid --table-only
    PYTHONPATH=src python benchmarks/method_grid.py --family isolation --out runs/isolation-grid --table-only \
        --update-doc docs/isolation.md

``--update-doc FILE`` replaces the table between the lines ``<!-- grid:FAMILY -->`` and
``<!-- /grid -->`` of FILE with the current one (the text around it is the reader's to keep true).

Base config: ``benchmarks/method_grid.yaml`` (MLP 784-400-400, Adam 1e-3, batch 128, 500
iterations per experience, no continual evaluation); Permuted MNIST has 10 permutations.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gridtools import CLAIM_HEADER, claim_row, grid_block, paper_source, update_doc  # noqa: E402

BASE = Path(__file__).with_name("method_grid.yaml")
BASELINES = ["finetune", "ewc", "si", "er"]
FAMILIES = {
    # issue 15: sparse training and parameter isolation, task-IL
    "isolation": {
        "methods": BASELINES + ["packnet", "hat", "dstcl", "sparcl", "granet", "gpm", "hlop", "clr"],
        "cells": [("split-mnist", "task"), ("split-fashion-mnist", "task"), ("permuted-mnist", "task"),
                  ("mnist-fashion-animal", "task")],
    },
    # issue 16: Bayesian continual learning and hypernetworks
    "bayesian": {
        # the slowest last: Permuted MNIST (10 tasks), and in it rnn_hnet (its LSTM emits the target's
        # chunks one after another, for every earlier task too: hours of one core per seed)
        "methods": BASELINES + ["vcl", "protocl", "ibcl", "seqbayes", "binary_field", "hnet", "hyperinterval",
                                "rnn_hnet"],
        "cells": [("split-mnist", "task"), ("split-mnist", "class"), ("mnist-fashion-animal", "class"),
                  ("permuted-mnist", "task")],
        # the task-aware matrix only (the task-IL protocol's; identical, tests/test_eval_task_agnostic.py): a
        # hypernetwork's task-agnostic prediction generates and runs every learned task's network at every
        # test batch, 10 of them on Permuted MNIST (docs/continual-evaluation.md). For the family's own methods:
        # the baselines' runs of that cell are the isolation grid's (both matrices measured, the same numbers)
        "cell_sets": {("permuted-mnist", "task"): ["eval.task_agnostic=false"]},
        # the papers' claims "A > B" (A's paper): VCL and HNET over EWC and SI (their papers' task-IL tables),
        # the RNN hypernetwork over the task-conditioned one, ProtoCL against the Bayesian methods (class-IL)
        "claims": [("vcl", "ewc"), ("vcl", "si"), ("hnet", "ewc"), ("hnet", "si"), ("rnn_hnet", "hnet"),
                   ("protocl", "vcl"), ("protocl", "binary_field"), ("protocl", "seqbayes")],
    },
}
BENCHMARK_SETS = {"permuted-mnist": ["benchmark.n_experiences=10"]}
#: per-method settings (each documented in the method's docs page)
METHOD_SETS = {"vcl": ["strategy.vcl_samples=10", "strategy.vcl_train_samples=2"],
               # CLR reprograms a CNN's convolutions: the small CNN (32, 64 channels, fc 256), trained on
               # the first experience and frozen (docs/isolation.md); every other method runs the MLP
               "clr": ["model.name=cnn", "model.hidden=[256]"],
               # HMC needs a small network: MLP 784-10 and 1000 samples a task (docs/bayesian.md)
               "seqbayes": ["model.hidden=[10]", "strategy.seqbayes_max_params=10000", "strategy.seqbayes_max_data=1000",
                            "strategy.seqbayes_samples=50", "strategy.seqbayes_burn_in=50",
                            "strategy.seqbayes_leapfrog=10"],
               "binary_field": ["train.lr=0.01"],  # fields need a larger step than real weights (docs/bayesian.md)
               # HyperInterval's hypernetwork is not chunked: its output layer maps 50 units to every generated
               # weight, 24 M parameters for the 784-400-400 target and 1.8 s a step on this CPU (task-IL Split
               # MNIST took 4,440 s a seed). The 784-100 target of docs/hyperinterval.md: 4 M, about 5x faster
               "hyperinterval": ["model.hidden=[100]"]}


def supports(method: str, scenario: str) -> bool:
    from lifelong.strategies import STRATEGIES  # noqa: PLC0415

    cls = STRATEGIES.get(method)
    return cls is None or scenario in getattr(cls, "scenarios", ("class", "task", "domain"))


def run_cell(out: Path, bench: str, scenario: str, method: str, seeds: str, iterations: int,
             cell_sets: tuple[str, ...] = ()) -> int:
    sets = BENCHMARK_SETS.get(bench, []) + list(cell_sets) + METHOD_SETS.get(method, [])
    cmd = [sys.executable, "-m", "lifelong.cli", "run", "--config", str(BASE), "--benchmark", bench,
           "--scenario", scenario, "--strategy", method, "--seeds", seeds, "--iterations", str(iterations),
           "--quiet", "--out", str(out / f"{bench}-{scenario}" / method)]
    for s in sets:
        cmd += ["--set", s]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, stdout=subprocess.DEVNULL)


def _mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    m = statistics.fmean(values) * scale
    s = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def collect(folder: Path) -> dict[tuple[str, str, str], list[dict]]:
    rows: dict[tuple[str, str, str], list[dict]] = {}
    for path in sorted(folder.rglob("results.json")):
        r = json.loads(path.read_text())
        if r.get("status") == "complete":
            c = r["config"]
            rows.setdefault((c["benchmark"]["name"], c["benchmark"]["scenario"], c["strategy"]["name"]), []).append(r)
    return rows


def _params(rs: list[dict]) -> str:
    """Mean nonzero parameters of the model; for a method that trains parameters of its own (a
    hypernetwork and its embeddings: ``parameters.trainable``), those in brackets."""
    out = f"{statistics.fmean(r['parameters']['nonzero'] for r in rs):,.0f}"
    if all("trainable" in r["parameters"] for r in rs):
        out += f" ({statistics.fmean(r['parameters']['trainable'] for r in rs):,.0f} trained)"
    return out


def table(folder: Path, cells: list[tuple[str, str]], methods: list[str]) -> str:
    rows = collect(folder)
    lines = ["| benchmark | scenario | method | seeds | accuracy (%) | BWT (%) | nonzero params | training GFLOPs "
             "| wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for bench, scenario in cells:
        for m in methods:
            rs = rows.get((bench, scenario, m))
            if rs:
                lines.append("| " + " | ".join([
                    bench, scenario, m, str(len(rs)), _mean_std([r["average_accuracy"] for r in rs], 100),
                    _mean_std([r["bwt"] for r in rs], 100),
                    _params(rs),
                    f"{statistics.fmean(r['flops']['training'] for r in rs) / 1e9:,.0f}",
                    f"{statistics.fmean(r['wall_time_s'] for r in rs):.0f}"]) + " |")
    return "\n".join(lines)


def claims(folder: Path, cells: list[tuple[str, str]], pairs: list[tuple[str, str]]) -> str:
    """Each claim "A > B" per (benchmark, scenario) cell, on the seeds both have (``claim_row``)."""
    from lifelong.strategies import STRATEGIES

    rows = collect(folder)
    lines = [CLAIM_HEADER[0].format(cell="scenario"), CLAIM_HEADER[1]]
    for a, b in pairs:
        claim = f"{a} > {b} ({paper_source(STRATEGIES[a].paper)})"
        for bench, scenario in cells:
            ra, rb = ({r["seed"]: r["average_accuracy"] for r in rows.get((bench, scenario, m), [])} for m in (a, b))
            row = claim_row(claim, bench, scenario, ra, rb)
            if row:
                lines.append(row)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=sorted(FAMILIES), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--methods", help="comma-separated subset (default: the family's methods and baselines)")
    ap.add_argument("--cells", help="comma-separated benchmark:scenario subset, e.g. split-mnist:task")
    ap.add_argument("--seeds", default="0-2")
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--update-doc", type=Path, metavar="FILE",
                    help="replace the table between <!-- grid:FAMILY --> and <!-- /grid --> in FILE")
    args = ap.parse_args(argv)
    fam = FAMILIES[args.family]
    methods = args.methods.split(",") if args.methods else fam["methods"]
    cells = [tuple(c.split(":")) for c in args.cells.split(",")] if args.cells else fam["cells"]
    unknown = [m for m in methods if m not in fam["methods"] and m not in METHOD_SETS]
    if args.update_doc:  # a doc that cannot take the table is refused before hours of runs
        grid_block(args.update_doc, args.family)
    status, skipped = 0, []
    if not args.table_only:
        for bench, scenario in cells:
            for m in methods:
                if supports(m, scenario):
                    status |= run_cell(args.out, bench, scenario, m, args.seeds, args.iterations,
                                       () if m in BASELINES else tuple(fam.get("cell_sets", {}).get((bench, scenario), ())))
                else:
                    skipped.append(f"{m} ({scenario})")
    text = table(args.out, cells, methods)
    if fam.get("claims"):
        text += "\n\nThe papers' claims, seed by seed:\n\n" + claims(args.out, cells, fam["claims"])
    print(text)
    if args.update_doc:
        update_doc(args.update_doc, args.family, text)
    if skipped:
        print("not run (scenario not supported): " + ", ".join(dict.fromkeys(skipped)))
    if unknown:
        print("methods outside the family's list: " + ", ".join(unknown))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
