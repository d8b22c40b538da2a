"""Evaluation cost: what end-of-experience and continual evaluation add to a run's time.

Split MNIST class-incremental (5 experiences), MLP 784-400-400, Adam (lr 1e-3), batch 128,
``--iterations`` steps per experience, with FineTune and ER (reservoir, 500 samples). Each
strategy runs once with end-of-experience evaluation only (``eval_every=None``: every test set,
10,000 images, after each experience and once before training) and once per continual
evaluation setting (``eval_every`` 1 and 10, ``eval_subsample`` 1000 and 500 per seen
experience, De Lange et al. 2023), which comes on top of the end-of-experience evaluation.

The times are the loop's own, measured within each run: ``train_time_s`` (continual
evaluation excluded), ``eval_time_s`` (end-of-experience, initial evaluation included) and
``continual_eval_time_s``. A share is that evaluation's time over the run's total
(training + both evaluations); "x without continual" is the run's total over its training
plus end-of-experience evaluation, i.e. how much longer continual evaluation makes the run.
Shares and factors are ratios within one run, so they hold up on a loaded machine better
than times compared across runs.

    PYTHONPATH=src python benchmarks/eval_cost.py --out benchmarks/results/eval_cost.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (sets the import path for lifelong)

import torch  # noqa: E402

from lifelong.data import mnist  # noqa: E402
from lifelong.models import build_model  # noqa: E402
from lifelong.strategies.er import ER  # noqa: E402
from lifelong.strategies.finetune import FineTune  # noqa: E402
from lifelong.streams import Stream, split_stream  # noqa: E402
from lifelong.training import train  # noqa: E402

HIDDEN = (400, 400)
LR = 1e-3
MEM_SIZE = 500
STRATEGIES = {"finetune": lambda: FineTune(), "er": lambda: ER(mem_size=MEM_SIZE, mem_policy="reservoir")}
SETTINGS = [(None, None), (10, 500), (10, 1000), (1, 500), (1, 1000)]  # (eval_every, eval_subsample)


def run_one(stream, name: str, device, iterations: int, batch_size: int, every, subsample, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.n_classes, stream.scenario, hidden=list(HIDDEN)).to(device)
    strategy = STRATEGIES[name]().setup(model, device, seed)
    with C.Timer(device) as tm:
        res = train(stream, strategy, lambda p: torch.optim.Adam(p, lr=LR), batch_size=batch_size,
                    iterations=iterations, seed=seed, eval_every=every, eval_subsample=subsample or 1000)
    n_cont = 0 if res.curve is None else len(res.curve[0])
    total = res.train_time_s + res.eval_time_s + res.continual_eval_time_s
    return {"strategy": name, "eval_every": every, "eval_subsample": subsample, "wall_s": tm.s,
            "train_s": res.train_time_s, "end_eval_s": res.eval_time_s, "continual_eval_s": res.continual_eval_time_s,
            "continual_evaluations": n_cont,
            "ms_per_continual_evaluation": 1000 * res.continual_eval_time_s / n_cont if n_cont else None,
            "end_eval_share": res.eval_time_s / total, "continual_eval_share": res.continual_eval_time_s / total,
            "eval_share": (res.eval_time_s + res.continual_eval_time_s) / total,
            "x_without_continual": total / (res.train_time_s + res.eval_time_s)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=50, help="training iterations per experience")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--settings", default=",".join(f"{e}/{s}" if e else "none" for e, s in SETTINGS),
                    help="comma-separated eval_every/subsample pairs, 'none' for end-of-experience only")
    a, log, device = C.parse_common(ap, argv)
    settings = [(None, None) if s == "none" else tuple(int(v) for v in s.split("/")) for s in a.settings.split(",")]
    stream = split_stream(mnist(), scenario="class", n_experiences=5, seed=a.seed).to(device)
    warm = Stream("warm-up", "class", stream.experiences[:1], stream.n_classes, stream.input_shape)
    run_one(warm, "finetune", device, 5, a.batch_size, 1, 100, a.seed)  # warm-up (one-time costs), not reported
    runs = []
    for name in a.strategies.split(","):
        for every, sub in settings:
            r = run_one(stream, name, device, a.iterations, a.batch_size, every, sub, a.seed)
            runs.append(r)
            log(f"  {name} eval_every={every} subsample={sub}: train {r['train_s']:.2f}s end-eval "
                f"{r['end_eval_s']:.2f}s continual {r['continual_eval_s']:.2f}s")
    rows = [[r["strategy"], r["eval_every"] or "-", r["eval_subsample"] or "-", r["train_s"], r["end_eval_s"],
             r["continual_eval_s"], f"{100 * r['end_eval_share']:.1f} %", f"{100 * r['continual_eval_share']:.1f} %",
             f"{100 * r['eval_share']:.1f} %", f"{r['x_without_continual']:.2f}"] for r in runs]
    table = C.markdown_table(["strategy", "eval_every", "subsample", "train s", "end-of-exp eval s",
                              "continual eval s", "end-of-exp share", "continual share", "eval share",
                              "x without continual"], rows)
    out = {"benchmark": "eval_cost",
           "settings": {"iterations": a.iterations, "batch_size": a.batch_size, "experiences": 5,
                        "hidden": list(HIDDEN), "lr": LR, "mem_size": MEM_SIZE, "seed": a.seed,
                        "eval_settings": [list(s) for s in settings]},
           "environment": C.environment(device), "runs": runs, "table": table}
    print(f"## Evaluation cost (Split MNIST class-IL, {a.iterations} iterations x 5 experiences, {device})\n")
    print(table)
    C.write_json(a.out, out)
    return out


if __name__ == "__main__":
    main()
