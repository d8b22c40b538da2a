"""Run the benchmark suite: overhead, long stream, evaluation cost.

Writes ``<results-dir>/overhead.json``, ``long_stream.json``, ``eval_cost.json`` and a combined
``README.md`` with the three tables. ``--quick`` runs smaller settings (a first look, or a GPU
check); ``--device cuda`` runs everything on the GPU (data, buffers and models on the device).

    PYTHONPATH=src python benchmarks/run_all.py                      # CPU, default settings
    PYTHONPATH=src python benchmarks/run_all.py --device cuda --quick
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import eval_cost  # noqa: E402
import long_stream  # noqa: E402
import overhead  # noqa: E402

ONLY = "overhead,long_stream,eval_cost"
QUICK = {
    "overhead": ["--iterations", "30", "--pairs", "3"],
    "long_stream": ["--experiences", "30", "--iterations", "5"],
    "eval_cost": ["--iterations", "20"],
}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="smaller settings (see QUICK in this file)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    ap.add_argument("--results-dir", default=str(C.ROOT / "benchmarks" / "results"))
    ap.add_argument("--only", default=ONLY, help="comma-separated subset")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME:ARGS",
                    help="more arguments for one benchmark, e.g. 'overhead:--iterations 300' (repeatable)")
    a = ap.parse_args(argv)
    out_dir = Path(a.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mods = {"overhead": overhead, "long_stream": long_stream, "eval_cost": eval_cost}
    extra = {}
    for e in a.extra:
        name, _, args = e.partition(":")
        extra.setdefault(name, []).extend(args.split())
    results, times = {}, {}
    for name in a.only.split(","):
        args = ["--device", a.device, "--threads", str(a.threads), "--out", str(out_dir / f"{name}.json")]
        args += (QUICK[name] if a.quick else []) + extra.get(name, [])
        print(f"\n### {name}: {' '.join(args)}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        results[name] = mods[name].main(args)
        times[name] = time.perf_counter() - t0
        print(flush=True)
    write_readme(out_dir / "README.md", results, times, a)
    return results


def write_readme(path: Path, results: dict, times: dict, a) -> None:
    env = next(iter(results.values()))["environment"] if results else {}
    cmd = " ".join(["benchmarks/run_all.py", "--device", a.device] + (["--quick"] if a.quick else [])
                   + [f"--extra '{e}'" for e in a.extra] + ([f"--only {a.only}"] if a.only != ONLY else []))
    lines = ["# Benchmark results", "",
             f"Written by `{cmd}` on "
             f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}: torch {env.get('torch')}, "
             f"{env.get('gpu', 'CPU')}, {env.get('threads')} torch thread(s), {env.get('cpu_count')} cores. "
             "See `benchmarks/README.md` for what is measured and `docs/performance.md` for the findings.", ""]
    if "overhead" in results:
        r = results["overhead"]
        s = r["settings"]
        lines += ["## Framework overhead: lifelong / plain PyTorch", "",
                  f"Wall-time ratio per alternating pair (median, min, max of {s['pairs']} pairs), Split MNIST "
                  f"class-IL, {s['iterations']} iterations x {s['experiences']} experiences, target <= "
                  f"{r['target_ratio']}. The loss and accuracy columns compare the two sides' numbers "
                  "(0: the same computation).", "", r["table"], ""]
    if "long_stream" in results:
        r = results["long_stream"]
        s = r["settings"]
        lines += [f"## Long stream: {s['experiences']} experiences, ER with {s['mem_size']} samples", "",
                  f"{s['train_per_exp']} training / {s['test_per_exp']} test images per experience, "
                  f"{s['iterations']} iterations each.", "", r["table"], "", r["notes"], ""]
    if "eval_cost" in results:
        r = results["eval_cost"]
        lines += ["## Evaluation cost", "", f"Split MNIST class-IL, {r['settings']['iterations']} iterations x 5 "
                  "experiences; shares of the run's time (training + evaluations).", "", r["table"], ""]
    lines += ["Suite time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()), ""]
    path.write_text("\n".join(lines))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
