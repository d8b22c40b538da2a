"""Full-length Permuted MNIST reference runs of the issue-16 methods, several at once, under a deadline.

The issue asks for one full seed of every method at the reference length
(``benchmarks/permuted_reference.yaml``: 10 permutations, MLP 1024-1000-1000, task-IL, 5000
iterations per permutation), on a GPU when one is lent. A lent GPU machine comes for minutes, so
this runs every method at once, each in its own process (the GPU is shared; one torch thread
each), with the per-method settings of ``permuted_reference_cost`` (the evidence grid's, on the
reference's own MLP), and stops at a deadline:

- a run that finishes writes ``METHOD.json`` (its accuracy matrix, average accuracy, BWT,
  parameters, wall, train and evaluation times);
- every run appends a line to ``METHOD.progress.jsonl`` after each permutation (its wall time and
  its steps so far), so a run stopped at the deadline still says how far it got and what a full
  run costs (its wall time per permutation so far x 10: a projection, marked so);
- ``summary.json`` holds every method's outcome (finished, stopped at the deadline, refused, failed).

    PYTHONPATH=src python benchmarks/permuted_reference_runs.py --device cuda --jobs 3 \\
        --deadline-s 520 --out-dir runs/permuted-reference-gpu
    PYTHONPATH=src python benchmarks/permuted_reference_runs.py --from-dir runs/permuted-reference-gpu \\
        --update-doc docs/bayesian.md

Full runs made with the command line instead (one folder per method, resumable, so a run on a
CPU can span days; ``benchmarks/permuted_reference.yaml`` says how) are gathered the same way:
``--collect`` reads each ``RUNS/METHOD/results.json`` (a run still going: its checkpoint's step),
checks that the run is the reference setting, and writes the same ``METHOD.json`` and
``summary.json``:

    PYTHONPATH=src python benchmarks/permuted_reference_runs.py --collect runs/permuted-reference \
        --out-dir benchmarks/results/permuted-reference-cpu
    PYTHONPATH=src python benchmarks/permuted_reference_runs.py --from-dir benchmarks/results/permuted-reference-cpu \
        --update-doc docs/bayesian.md --block reference-runs-cpu

On 2026-11-30 twelve runs shared one H200 (``--jobs 12``) and none finished in 530 s: time-slicing
among twelve processes kept the GPU 99 % busy at about a CPU core's speed per run
(``benchmarks/results/permuted-reference-gpu``). A lease of minutes should run a few at once.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (sets the import path for lifelong)

from _gridtools import grid_block, update_doc  # noqa: E402
from permuted_reference_cost import FULL, METHODS, config_for  # noqa: E402

KEEP = ("average_accuracy", "bwt", "forgetting", "accuracy_matrix", "parameters", "wall_time_s",
        "train_time_s", "eval_time_s", "device", "versions", "seed")


class Progress:
    """A loop monitor: one JSON line per finished permutation (wall time since the first one
    started, setting up left out; steps so far)."""

    def __init__(self, path: Path):
        self.path, self.t0, self.steps = path, None, 0

    def start(self, exp, n_iters):
        if self.t0 is None:
            self.t0 = time.perf_counter()

    def step(self, it, loss, latest):
        self.steps += 1

    def end(self, exp, result):
        with open(self.path, "a") as f:
            f.write(json.dumps({"experience": exp.index, "wall_s": time.perf_counter() - self.t0,
                                "steps": self.steps}) + "\n")


def worker(method: str, iterations: int, seed: int, device: str, out: Path) -> int:
    """One method's full run in this process; its outcome is written to ``out/METHOD.json``."""
    from lifelong.errors import ConfigError
    from lifelong.runner import run

    cfg = config_for(method, iterations, seed)
    cfg["device"] = device
    (out / f"{method}.progress.jsonl").unlink(missing_ok=True)
    try:
        res = run(cfg, monitor=Progress(out / f"{method}.progress.jsonl"))
    except ConfigError as e:
        C.write_json(out / f"{method}.json", {"method": method, "refused": str(e)})
        return 0
    C.write_json(out / f"{method}.json", {"method": method, "iterations": iterations,
                                          **{k: res[k] for k in KEEP if k in res}})
    return 0


def outcome(method: str, out: Path, status: str) -> dict:
    done = out / f"{method}.json"
    if done.is_file():
        return json.loads(done.read_text())
    lines = (out / f"{method}.progress.jsonl").read_text().splitlines() \
        if (out / f"{method}.progress.jsonl").is_file() else []
    rows = [json.loads(x) for x in lines]
    row = {"method": method, status: True, "permutations_done": len(rows)}
    if rows:
        row["wall_s_so_far"] = rows[-1]["wall_s"]
        row["projected_wall_s"] = rows[-1]["wall_s"] / len(rows) * 10
    log = out / f"{method}.log"
    if status == "failed" and log.is_file():
        row["error"] = log.read_text()[-2000:]
    return row


def drive(methods: list[str], iterations: int, jobs: int, deadline_s: float, seed: int, device: str, out: Path,
          log) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    t0, queue, running, rows = time.perf_counter(), list(methods), {}, {}
    while queue or running:
        while queue and len(running) < jobs:
            m = queue.pop(0)
            cmd = [sys.executable, __file__, "--worker", m, "--iterations", str(iterations), "--seed", str(seed),
                   "--device", device, "--out-dir", str(out)]
            running[m] = subprocess.Popen(cmd, stdout=open(out / f"{m}.log", "w"), stderr=subprocess.STDOUT,
                                          start_new_session=True)
            log(f"started {m}")
        for m, p in list(running.items()):
            if p.poll() is not None:
                rows[m] = outcome(m, out, "failed" if p.returncode else "finished")
                log(f"{m}: rc {p.returncode} after {time.perf_counter() - t0:.0f} s")
                del running[m]
        if time.perf_counter() - t0 > deadline_s:
            for m, p in running.items():
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                rows[m] = outcome(m, out, "stopped_at_deadline")
                log(f"{m}: stopped at the deadline")
            running, queue = {}, []
        time.sleep(1)
    result = [rows[m] for m in methods if m in rows]
    C.write_json(out / "summary.json", {"benchmark": "permuted_reference_runs", "deadline_s": deadline_s,
                                        "jobs": jobs, "environment": C.environment(C.setup_torch(1, device)),
                                        "runs": result})
    return result


def reference_mismatch(cfg: dict) -> str | None:
    """What makes a run's config other than the reference setting (``permuted_reference.yaml`` with a
    method's grid settings), or None."""
    ref = config_for(cfg.get("strategy", {}).get("name", "finetune"), FULL, cfg.get("seed", 0))
    for key in ("benchmark", "model", "train"):
        want, got = ref[key], cfg.get(key, {})
        for k, v in want.items():
            if got.get(k) != v:
                return f"{key}.{k} is {got.get(k)!r}, the reference's is {v!r}"
    for k, v in ref["strategy"].items():
        if cfg["strategy"].get(k) != v:
            return f"strategy.{k} is {cfg['strategy'].get(k)!r}, the grid's is {v!r}"
    return None


def collect(runs_dir: Path, methods: list[str], out: Path) -> list[dict]:
    """Each method's full run made with the command line (``RUNS_DIR/METHOD``): a finished run's
    results, a run still going with its steps so far, a folder that is not the reference setting
    refused with the reason. Methods with no folder are left out; the rows of an earlier
    ``out/summary.json`` for methods not gathered now are kept (runs made on other days, or on
    another machine, whose folders are gone). Writes ``out/METHOD.json`` and ``out/summary.json``."""
    import torch

    rows = []
    try:
        earlier = json.loads((out / "summary.json").read_text())["runs"]
    except (OSError, ValueError, KeyError, TypeError):
        earlier = []
    for m in methods:
        folder = runs_dir / m
        if (folder / "results.json").is_file():
            res = json.loads((folder / "results.json").read_text())
            bad = reference_mismatch(res["config"])
            if bad:
                raise SystemExit(f"{folder}: not the reference run ({bad}); run it with "
                                 f"benchmarks/permuted_reference.yaml and the grid's settings")
            row = {"method": m, "iterations": FULL, **{k: res[k] for k in KEEP if k in res}}
            if (res.get("checkpoints") or {}).get("resumed_from") is not None:
                row["resumed"] = True  # its wall time is its last part's: the table gives training + evaluation
        elif (folder / ".partial" / "resume.pt").is_file():
            if not (folder / ".partial" / "run.json").is_file():
                raise SystemExit(f"{folder}: a checkpoint with no .partial/run.json, so its config cannot be "
                                 f"checked; rerun the method's command into a new --out folder")
            bad = reference_mismatch(json.loads((folder / ".partial" / "run.json").read_text())["config"])
            if bad:
                raise SystemExit(f"{folder}: not the reference run ({bad})")
            step = torch.load(folder / ".partial" / "resume.pt", map_location="cpu", weights_only=False)["step"]
            row = {"method": m, "in_progress": True, "steps_done": int(step), "permutations_done": int(step) // FULL}
        else:
            continue
        C.write_json(out / f"{m}.json", row)
        rows.append(row)
    got = {r["method"] for r in rows}
    rows += [r for r in earlier if r.get("method") not in got]
    rows.sort(key=lambda r: METHODS.index(r["method"]) if r["method"] in METHODS else len(METHODS))
    C.write_json(out / "summary.json", {"benchmark": "permuted_reference_runs", "source": "command-line runs",
                                        "runs": rows})
    return rows


def run_seconds(r: dict) -> tuple[float, str]:
    """A finished run's seconds and how they were counted: its wall time; for a run resumed from a
    checkpoint (whose wall time is that of its last part) its training and evaluation time summed
    over its parts."""
    if r.get("resumed"):
        return r["train_time_s"] + r["eval_time_s"], " (resumed: training + evaluation)"
    return r["wall_time_s"], ""


def table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        if "refused" in r:
            out.append([r["method"], "refused", "", "", "", "", "", ""])
        elif "average_accuracy" in r:
            m = r.get("accuracy_matrix")
            diag = [m[i][i] for i in range(len(m))] if m else r.get("diagonal_range", [])
            secs, how = run_seconds(r)
            out.append([r["method"], "10/10", f"{secs / 10:.0f}", f"{secs:.0f}{how}",
                        f"{100 * r['average_accuracy']:.2f}",
                        f"{100 * r['bwt']:.2f}" if r.get("bwt") is not None else "",
                        f"{100 * min(diag):.1f} to {100 * max(diag):.1f}" if diag else "",
                        f"{r['parameters'].get('trainable', r['parameters'].get('total')):,}"])
        elif r.get("in_progress"):
            out.append([r["method"], f"{r['permutations_done']}/10 (running: step {r['steps_done']})",
                        "", "", "", "", "", ""])
        elif r.get("permutations_done"):
            state = "failed" if r.get("failed") else "stopped"
            out.append([r["method"], f"{r['permutations_done']}/10 ({state})",
                        f"{r['projected_wall_s'] / 10:.0f}", f"~{r['projected_wall_s']:.0f} (projected)", "", "", "", ""])
        else:
            out.append([r["method"], "0/10 (failed)" if r.get("failed") else "0/10 (stopped)", "", "", "", "", "",
                        ""])
    return C.markdown_table(["method", "permutations", "wall s per permutation", "wall s per run",
                             "average accuracy (%)", "BWT (points)", "each permutation right after learning it (%)",
                             "parameters"], out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--iterations", type=int, default=FULL, help="iterations per permutation (a check: fewer)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once")
    ap.add_argument("--deadline-s", type=float, default=float("inf"), help="stop the runs still going after this")
    ap.add_argument("--out-dir", type=Path, help="a folder for the runs' files and summary.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--from-dir", type=Path, metavar="DIR", help="no runs: the table of an earlier --out-dir")
    ap.add_argument("--collect", type=Path, metavar="RUNS",
                    help="no runs: gather the command-line runs RUNS/METHOD into --out-dir")
    ap.add_argument("--update-doc", type=Path, metavar="FILE",
                    help="replace the table between <!-- grid:BLOCK --> and <!-- /grid --> in FILE")
    ap.add_argument("--block", default="reference-runs", help="the doc's block to replace (default %(default)s)")
    a, log, dev = C.parse_common(ap, argv)
    if a.out:
        ap.error("--out does not apply here: the runs' files and summary.json go to --out-dir")
    if a.worker:
        return worker(a.worker, a.iterations, a.seed, a.device, a.out_dir)
    if a.update_doc:  # checked before any run
        grid_block(a.update_doc, a.block)
    methods = a.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        ap.error(f"methods outside issue 16's list: {', '.join(unknown)} (the list: {', '.join(METHODS)})")
    if a.from_dir and a.collect:
        ap.error("--from-dir and --collect are two sources: give one")
    if a.collect:
        if a.out_dir is None:
            ap.error("--collect needs --out-dir, where the gathered results go")
        if not a.collect.is_dir():
            ap.error(f"--collect {a.collect}: no such folder (the runs' parent folder, e.g. runs/permuted-reference)")
        rows = collect(a.collect, methods, a.out_dir)
    elif a.from_dir:
        try:
            rows = json.loads((a.from_dir / "summary.json").read_text())["runs"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            ap.error(f"--from-dir {a.from_dir}: no summary.json of this script there ({e})")
    else:
        if a.jobs < 1 or not a.deadline_s > 0 or not 1 <= a.iterations <= FULL:
            ap.error(f"--jobs must be >= 1, --deadline-s > 0 and --iterations in 1..{FULL}, "
                     f"got {a.jobs}, {a.deadline_s} and {a.iterations}")
        if a.out_dir is None:
            ap.error("--out-dir is required for runs")
        rows = drive(methods, a.iterations, a.jobs, a.deadline_s, a.seed, str(dev), a.out_dir, log)
    text = table(rows)
    print(text)
    if a.update_doc:
        update_doc(a.update_doc, a.block, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
