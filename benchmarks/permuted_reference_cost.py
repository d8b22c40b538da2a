"""Time per run of every issue-16 method at the Permuted MNIST reference length, from short runs.

A run of ``benchmarks/permuted_reference.yaml`` (10 permutations padded to 32x32, MLP 1024-1000-1000,
task-IL, Adam 1e-4, batch 128, 5000 iterations per permutation, the task-aware matrix only) is
hours of one core for fine-tuning and far more for the Bayesian and hypernetwork methods. This
runs each method on the same stream with ``--iterations N`` per permutation (default 25) and
projects the full run:

- training steps: the CPU time from each experience's first step to its last, measured through
  the loop's monitor, x 5000 / N;
- the rest, measured and counted once: evaluation (the same 11 evaluations of the same test
  sets as the full run) and each experience's own work outside its steps (EWC's Fisher, a
  posterior's refit, a hypernetwork's targets), which does not grow with N.

Times are process CPU seconds of one torch thread (the machine is shared: wall time would count
the other processes' turns). The rest is the run's CPU time times the share of its wall time
spent training or evaluating, less the steps' CPU time; setting up (loading the data, building
the model) is in neither. Each method runs in-process with the settings the evidence grid gives it
(``method_grid.METHOD_SETS``); sequential HMC (seqbayes) is refused at this size and is listed so.

    PYTHONPATH=src python benchmarks/permuted_reference_cost.py --iterations 25 \\
        --out benchmarks/results/permuted_reference_cost.json
    PYTHONPATH=src python benchmarks/permuted_reference_cost.py \\
        --from-json benchmarks/results/permuted_reference_cost.json --update-doc docs/bayesian.md
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (sets the import path for lifelong)

from _gridtools import grid_block, update_doc  # noqa: E402
from method_grid import METHOD_SETS  # noqa: E402

REFERENCE = Path(__file__).with_name("permuted_reference.yaml")
FULL = 5000
METHODS = ["finetune", "ewc", "si", "er", "vcl", "protocl", "ibcl", "seqbayes", "binary_field", "hnet",
           "hyperinterval", "rnn_hnet"]


def config_for(method: str, iterations: int, seed: int) -> dict:
    from lifelong.cli.sweep import apply_flags
    from lifelong.config import load_config_file

    data = copy.deepcopy(load_config_file(REFERENCE))
    data["strategy"] = {"name": method}
    data["seed"] = seed
    sets = [s for s in METHOD_SETS.get(method, []) if not s.startswith("model.")]  # the reference's own MLP
    return apply_flags(data, [("train.iterations", iterations)], sets)


class StepClock:
    """A loop monitor: the process CPU time from each experience's start to its last step."""

    def __init__(self):
        self.cpu_s, self.n = 0.0, 0
        self._t = self._last = None

    def start(self, exp, n_iters):
        self._t = time.process_time()

    def step(self, it, loss, latest):
        self.n += 1
        self._last = time.process_time()

    def end(self, exp, result):
        if self._t is not None and self._last is not None:  # an experience without steps adds nothing
            self.cpu_s += self._last - self._t
        self._t = self._last = None


def measure(method: str, iterations: int, seed: int) -> dict:
    from lifelong.errors import ConfigError
    from lifelong.runner import run

    cfg = config_for(method, iterations, seed)
    steps = StepClock()
    c0, w0 = time.process_time(), time.perf_counter()
    try:
        res = run(cfg, monitor=steps)
    except ConfigError as e:
        return {"method": method, "refused": str(e)}
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    run_cpu = cpu * (res["train_time_s"] + res["eval_time_s"]) / wall  # setting up is in neither
    rest = max(run_cpu - steps.cpu_s, 0.0)
    return {"method": method, "iterations": iterations, "cpu_s": cpu, "steps_cpu_s": steps.cpu_s,
            "rest_cpu_s": rest, "eval_cpu_s": cpu * res["eval_time_s"] / wall,
            "cpu_per_step_s": steps.cpu_s / steps.n, "projected_steps_cpu_s": steps.cpu_s * FULL / iterations,
            "projected_cpu_s": steps.cpu_s * FULL / iterations + rest,
            "average_accuracy": res["average_accuracy"], "parameters": res["parameters"],
            "sets": [s for s in METHOD_SETS.get(method, []) if not s.startswith("model.")]}


def table(rows: list[dict]) -> str:
    ok = [r for r in rows if "refused" not in r]
    out = C.markdown_table(
        ["method", "CPU s per step", "evaluation CPU s", "other CPU s (once per run)",
         "projected CPU h per run (10 x 5000)", f"accuracy after {ok[0]['iterations'] if ok else '?'} it. (%)"],
        [[r["method"], f"{r['cpu_per_step_s']:.3f}", f"{r['eval_cpu_s']:.0f}",
          f"{max(r['rest_cpu_s'] - r['eval_cpu_s'], 0):.0f}", f"{r['projected_cpu_s'] / 3600:.1f}",
          f"{100 * r['average_accuracy']:.1f}"] for r in ok])
    refused = [f"- {r['method']}: refused ({r['refused']})" for r in rows if "refused" in r]
    return out + ("\n\n" + "\n".join(refused) if refused else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=25, help="iterations per permutation of the short runs")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--from-json", type=Path, metavar="FILE", help="no runs: the table of an earlier --out")
    ap.add_argument("--update-doc", type=Path, metavar="FILE",
                    help="replace the table between <!-- grid:reference-cost --> and <!-- /grid --> in FILE")
    a, log, dev = C.parse_common(ap, argv)
    if a.update_doc:  # checked before any run
        grid_block(a.update_doc, "reference-cost")
    if a.from_json:
        try:
            rows = json.loads(a.from_json.read_text())["runs"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            ap.error(f"--from-json {a.from_json}: not a results file of this script ({e})")
        return show(rows, a.update_doc)
    methods = a.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        ap.error(f"methods outside issue 16's list: {', '.join(unknown)} (the list: {', '.join(METHODS)})")
    if not 1 <= a.iterations <= FULL:
        ap.error(f"--iterations must be between 1 and {FULL}, got {a.iterations}")
    rows = []
    if a.out and Path(a.out).is_file():  # an earlier --out: its other methods are kept (a sweep in pieces)
        try:
            rows = [r for r in json.loads(Path(a.out).read_text())["runs"] if r.get("method") not in methods]
        except (OSError, ValueError, KeyError, TypeError) as e:
            ap.error(f"--out {a.out} exists and is not a results file of this script ({e}); choose another --out")
    for m in methods:
        log(f"{m} ...")
        rows.append(measure(m, a.iterations, a.seed))
        log(str({k: v for k, v in rows[-1].items() if k != "parameters"}))
        if a.out:  # after every method: a long sweep keeps what it measured
            C.write_json(a.out, {"benchmark": "permuted_reference_cost", "full_iterations": FULL,
                                 "environment": C.environment(dev), "runs": rows})
    return show(rows, a.update_doc)


def show(rows: list[dict], doc: Path | None) -> int:
    text = table(rows)
    print(text)
    if doc:
        update_doc(doc, "reference-cost", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
