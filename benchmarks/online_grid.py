"""Issue 14's evidence grid: online class-IL, every online replay method next to ER and
fine-tuning, on Split MNIST, Split Fashion-MNIST and the 30-class MNIST -> Fashion-MNIST ->
Animal-MNIST stream (class-IL: ``benchmark.scenario=class``, 30 outputs; the preset's default is
domain-IL), with memories of 200, 500 and 1000 samples, 5 seeds.

Setting (docs/methods-online.md): one pass over each experience in minibatches of 10
(``online.batch_size=10``; the online accuracy of each incoming minibatch is recorded before the
model trains on it), SGD lr 0.1, MLP 784-400-400, each method's other defaults, no continual
evaluation, one torch thread. Fine-tuning and SHARP take no ``mem_size`` (SHARP stores hidden
activations, ``sharp_per_class``): they run once per benchmark, in the memory column "-".
GDumb, which never trains on the stream, makes the paper's 128 passes over its memory
(``METHOD_SETTINGS``); it has no online accuracy (it never predicts the incoming batches).

Every (benchmark, memory, method, seed) is one ``lifelong run`` in ``OUT/<benchmark>/m<memory>/
<method>[-<own settings>]/seed-<s>``; rerunning the command reuses finished runs and resumes interrupted ones.
``--also FOLDER`` adds runs made elsewhere with the same settings (earlier sweeps): a seed found
there is not run again. The table is read back from the runs' ``results.json``::

    PYTHONPATH=src python benchmarks/online_grid.py --out runs/online-grid --also runs
    PYTHONPATH=src python benchmarks/online_grid.py --out runs/online-grid --also runs --table-only \\
        --update-doc docs/methods-online.md
    PYTHONPATH=src python benchmarks/online_grid.py --out runs/online-grid --benchmarks split-mnist --mems 200 \\
        --methods er,derpp --seeds 0-1

With ``--data-dir FOLDER`` holding CIFAR-10 (its ``cifar-10-batches-py`` python version) the
same command runs ``--benchmarks split-cifar10`` (the folder goes to the benchmarks read from a
folder only; the shipped ones refuse it), with the preset's own model::

    PYTHONPATH=src python benchmarks/online_grid.py --out runs/online-cifar10 --benchmarks split-cifar10 \\
        --data-dir /path/to/folder
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

METHODS = ["finetune", "er", "er_ace", "der", "derpp", "mir", "gdumb", "scr", "pcr", "uer", "hpcr", "onpro", "sharp"]
NO_MEMORY = {"finetune", "sharp"}  # they take no mem_size: one run per benchmark
BENCHMARKS = ["split-mnist", "split-fashion-mnist", "mnist-fashion-animal"]
MEMS = [200, 500, 1000]
#: the settings every run of the grid shares (and a run found with --also must have)
SETTINGS = {"online.batch_size": 10, "train.optimizer": "sgd", "train.lr": 0.1, "eval.every": None}
#: a method's own settings beyond its defaults. GDumb trains a fresh model on its memory only, never on the
#: stream: the paper's 128 passes over the memory on MNIST (its scripts/replicate.sh), not the run's one pass
#: over each experience (20 steps at memory 200 left it at 42 %, docs/methods-online.md)
METHOD_SETTINGS = {"gdumb": {"passes": 128}}
#: a benchmark's own settings: the 30-class stream is mnist-fashion-animal in class-IL (its default scenario is
#: domain-IL, 10 outputs shared by the three datasets)
BENCHMARK_SETTINGS = {"mnist-fashion-animal": {"benchmark.scenario": "class"}}


def _mems(text: str) -> list[int]:
    """``--mems``: memory sizes, comma-separated positive integers."""
    try:
        mems = [int(m) for m in text.split(",")]
    except ValueError:
        mems = []
    if not mems or min(mems) < 1 or len(set(mems)) != len(mems):
        raise ValueError(f"--mems must list distinct positive memory sizes like '200,500,1000', got '{text}'")
    return mems


def _get(cfg: dict, dotted: str):
    for k in dotted.split("."):
        cfg = cfg.get(k) if isinstance(cfg, dict) else None
    return cfg


def key_of(r: dict) -> tuple[str, int | None, str] | None:
    """(benchmark, memory or None, method) of a finished run with the grid's settings, else None."""
    c = r.get("config", {})
    bench = _get(c, "benchmark.name")
    settings = {**SETTINGS, **BENCHMARK_SETTINGS.get(bench, {})}
    if r.get("status") != "complete" or any(_get(c, k) != v for k, v in settings.items()):
        return None
    if _get(c, "benchmark.scenario") not in (None, "class") or _get(c, "model.name") != "mlp" \
            or _get(c, "model.hidden") not in (None, [400, 400]):
        return None
    name = c["strategy"]["name"]
    own = {k: v for k, v in c["strategy"].items() if k not in ("name", "mem_size")}
    if own != METHOD_SETTINGS.get(name, {}):  # another setting of the method: not this grid's
        return None
    mem = None if name in NO_MEMORY else c["strategy"].get("mem_size")
    if mem is None and name not in NO_MEMORY:
        return None
    return c["benchmark"]["name"], mem, name


def collect(folders: list[Path]) -> dict[tuple, dict[int, dict]]:
    """Finished runs of the grid's settings under ``folders``, by (benchmark, memory, method) and seed."""
    found: dict[tuple, dict[int, dict]] = {}
    for folder in folders:
        for path in sorted(folder.rglob("results.json")):
            try:
                r = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            k = key_of(r)
            if k is not None:
                found.setdefault(k, {}).setdefault(int(r["seed"]), r)
    return found


def run_one(out: Path, bench: str, mem: int | None, method: str, seed: int, data_dir: str | None) -> int:
    own = METHOD_SETTINGS.get(method, {})
    folder = out / bench / ("m-" if mem is None else f"m{mem}") / label(method, "-") / f"seed-{seed}"
    cmd = [sys.executable, "-m", "lifelong.cli", "run", "--benchmark", bench, "--strategy", method,
           "--seed", str(seed), "--quiet", "--out", str(folder), "--set", "threads=1"]
    settings = {**SETTINGS, **BENCHMARK_SETTINGS.get(bench, {})}
    cmd += [a for k, v in settings.items() for a in ("--set", f"{k}={'null' if v is None else v}")]
    cmd += [a for k, v in own.items() for a in ("--set", f"strategy.{k}={v}")]
    if mem is not None:
        cmd += ["--set", f"strategy.mem_size={mem}"]
    if data_dir and takes_folder(bench):
        cmd += ["--data-dir", data_dir]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, stdout=subprocess.DEVNULL)


def takes_folder(bench: str) -> bool:
    """A benchmark whose data are read from a user-given folder (``benchmark.data_dir``): only such
    runs get ``--data-dir`` (the shipped datasets refuse the key)."""
    from lifelong.streams.presets import presets

    return "data_dir" in presets()[bench].keys


def label(method: str, sep: str = " ") -> str:
    """The method with its own settings: ``gdumb passes128`` (a folder name with ``sep='-'``)."""
    return sep.join([method] + [f"{k}{v}" for k, v in METHOD_SETTINGS.get(method, {}).items()])


def _ms(values: list[float]) -> str:
    m = statistics.fmean(values) * 100
    s = statistics.stdev(values) * 100 if len(values) > 1 else 0.0
    return f"{m:.2f} ± {s:.2f}"


def table(found: dict, benchmarks: list[str], mems: list[int], methods: list[str]) -> str:
    lines = ["| benchmark | memory | method | seeds | final avg acc (%) | avg online acc (%) | forgetting (%) | "
             "run s |", "|---|---|---|---|---|---|---|---|"]
    for bench in benchmarks:
        for mem in [None] + mems:
            for m in methods:
                if (mem is None) != (m in NO_MEMORY):
                    continue
                rs = list(found.get((bench, mem, m), {}).values())
                if not rs:
                    continue
                online = [r["online_accuracy"] for r in rs if r.get("online_accuracy") is not None]
                lines.append(f"| {bench} | {'-' if mem is None else mem} | {label(m)} | {len(rs)} | "
                             f"{_ms([r['average_accuracy'] for r in rs])} | {_ms(online) if online else '-'} | "
                             f"{_ms([r['forgetting'] for r in rs])} | "
                             f"{statistics.fmean(r['wall_time_s'] for r in rs):.0f} |")
    return "\n".join(lines)


def per_experience(found: dict, bench: str, mems: list[int], methods: list[str]) -> str:
    """Where each method wins or loses on ``bench``: per experience, the accuracy right after it was
    learnt (the matrix's diagonal) and at the end of the stream (its last row), mean over seeds."""
    lines = []
    for mem in [None] + mems:
        for m in methods:
            rs = list(found.get((bench, mem, m), {}).values())
            if (mem is None) != (m in NO_MEMORY) or not rs:
                continue
            mats = [r["accuracy_matrix"] for r in rs]
            if not lines:
                n = len(mats[0])
                lines = ["| memory | method | seeds | " + " | ".join(f"exp {i} learnt" for i in range(n)) + " | " +
                         " | ".join(f"exp {i} final" for i in range(n)) + " |", "|---" * (3 + 2 * n) + "|"]
            diag = [statistics.fmean(a[i][i] for a in mats) * 100 for i in range(len(mats[0]))]
            last = [statistics.fmean(a[-1][i] for a in mats) * 100 for i in range(len(mats[0]))]
            lines.append(f"| {'-' if mem is None else mem} | {label(m)} | {len(rs)} | " +
                         " | ".join(f"{v:.1f}" for v in diag + last) + " |")
    return "\n".join(lines)


#: the papers' claims on final accuracy, "A > B", each judged per (benchmark, memory) cell; the paper is A's
CLAIMS = [("onpro", "pcr"), ("pcr", "scr"), ("scr", "er"), ("hpcr", "pcr"), ("uer", "er"), ("er_ace", "er"),
          ("mir", "er"), ("der", "er"), ("derpp", "er"), ("gdumb", "er"), ("sharp", "er")]


def claims(found: dict, benchmarks: list[str], mems: list[int]) -> str:
    """Each claim "A > B" per (benchmark, memory) cell, on the seeds both have (``claim_row``). A
    method without memory (SHARP) is compared with B at every memory."""
    from lifelong.strategies import STRATEGIES

    lines = [CLAIM_HEADER[0].format(cell="memory"), CLAIM_HEADER[1]]
    for a, b in CLAIMS:
        claim = f"{label(a)} > {label(b)} ({paper_source(STRATEGIES[a].paper)})"
        for bench in benchmarks:
            for mem in mems:
                ra, rb = (found.get((bench, None if m in NO_MEMORY else mem, m), {}) for m in (a, b))
                row = claim_row(claim, bench, str(mem), *({s: r["average_accuracy"] for s, r in x.items()}
                                                          for x in (ra, rb)))
                if row:
                    lines.append(row)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--also", type=Path, action="append", default=[],
                    help="a folder of earlier runs with the same settings (repeatable)")
    ap.add_argument("--benchmarks", default=",".join(BENCHMARKS))
    ap.add_argument("--mems", default=",".join(map(str, MEMS)))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0-4")
    ap.add_argument("--data-dir", help="a folder with a dataset that does not ship (e.g. CIFAR-10)")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--per-experience", metavar="BENCHMARK",
                    help="print, for one of --benchmarks, each experience's accuracy right after it was learnt and "
                         "at the end (no runs)")
    ap.add_argument("--update-doc", type=Path, metavar="FILE",
                    help="replace the table between <!-- grid:online --> and <!-- /grid --> in FILE")
    args = ap.parse_args(argv)
    benchmarks, methods = args.benchmarks.split(","), args.methods.split(",")
    from lifelong.cli import parse_seeds
    from lifelong.errors import ConfigError
    try:
        mems, seeds = _mems(args.mems), parse_seeds(args.seeds)
    except (ValueError, ConfigError) as e:
        ap.error(str(e))
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        ap.error(f"methods outside the grid: {', '.join(unknown)} (the grid's: {', '.join(METHODS)})")
    from lifelong.streams.presets import presets
    unknown = sorted(set(benchmarks) - set(presets()))
    if unknown:
        ap.error(f"unknown benchmarks: {', '.join(unknown)} (lifelong list benchmarks shows them)")
    folders = [args.out] + [f for f in args.also if f.resolve() != args.out.resolve()]
    if args.per_experience:
        if args.per_experience not in benchmarks:
            ap.error(f"--per-experience {args.per_experience}: not one of --benchmarks ({', '.join(benchmarks)})")
        text = per_experience(collect(folders), args.per_experience, mems, methods)
        if not text:
            ap.error(f"--per-experience {args.per_experience}: no finished run of the grid's settings under "
                     f"{', '.join(map(str, folders))}: run the grid first, or give the folder with --out/--also")
        print(text)
        return 0
    if args.data_dir and not any(takes_folder(b) for b in benchmarks):
        ap.error(f"--data-dir applies to a benchmark read from a folder (e.g. split-cifar10), and none of "
                 f"{', '.join(benchmarks)} is: add it to --benchmarks, or remove --data-dir")
    if args.update_doc:  # a doc that cannot take the table is refused before hours of runs
        grid_block(args.update_doc, "online")
    status = 0
    if not args.table_only:
        for mem in mems:  # the smallest memory first: every benchmark, then the next memory
            for bench in benchmarks:
                for m in methods:
                    if m in NO_MEMORY and mem != mems[0]:
                        continue
                    key = (bench, None if m in NO_MEMORY else mem, m)
                    done = collect(folders).get(key, {})
                    for s in seeds:
                        if s not in done:
                            status |= run_one(args.out, bench, key[1], m, s, args.data_dir)
    found = collect(folders)
    text = table(found, benchmarks, mems, methods) + "\n\nThe papers' claims, seed by seed:\n\n" + \
        claims(found, benchmarks, mems)
    print(text)
    if args.update_doc:
        update_doc(args.update_doc, "online", text)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
