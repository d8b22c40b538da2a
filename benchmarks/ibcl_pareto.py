"""IBCL's zero-shot preference models on task-IL Split MNIST: a Pareto front of task accuracies,
with the training cost counted.

IBCL (``lifelong.strategies.ibcl``) is trained once on the stream (``ibcl_models`` posteriors a
task). Then, with no further training, a model is generated for each preference
w = (a, 1 - a) over the last two tasks (zero weight elsewhere), a = 0, 1/(k-1), ..., 1, and
scored on those two tasks' test sets: the HDR's centre, and ``--hdr-samples`` models drawn from
the 1 - alpha HDR (their mean and peak accuracy, the paper's measures). Non-dominated
accuracy pairs are marked as the Pareto front. Fine-tuning on the same stream is one point for
reference (one model; a model per preference would need a training run per preference).

    PYTHONPATH=src nice -n 10 python benchmarks/ibcl_pareto.py --out benchmarks/results/ibcl_pareto.json
    PYTHONPATH=src python benchmarks/ibcl_pareto.py --dataset digits --iterations 100 --hidden 100,100 --lr 1e-2
"""
from __future__ import annotations

import argparse
import time

from _common import environment, markdown_table, parse_common, write_json

import torch  # noqa: E402

from lifelong.data import digits, mnist  # noqa: E402
from lifelong.models import build_model  # noqa: E402
from lifelong.strategies import Strategy  # noqa: E402
from lifelong.strategies.ibcl import IBCL  # noqa: E402
from lifelong.streams import split_stream  # noqa: E402
from lifelong.training import train  # noqa: E402


@torch.no_grad()
def accuracy(model, split, task: int) -> float:
    model.eval()
    t = torch.full((len(split.y),), task, dtype=torch.long, device=split.y.device)
    hits = 0
    for i in range(0, len(split.y), 1000):
        hits += int((model(split.x[i:i + 1000], t[i:i + 1000]).argmax(1) == split.y[i:i + 1000]).sum())
    return hits / len(split.y)


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """True for each point no other point dominates (at least as good on both, better on one)."""
    return [not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points) for p in points]


def _fit(strategy, stream, a, seed):
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "task", hidden=a.hidden)
    strategy.setup(model, "cpu", seed)
    t0 = time.perf_counter()
    res = train(stream, strategy, lambda p: torch.optim.Adam(p, lr=a.lr), batch_size=a.batch_size,
                iterations=a.iterations, seed=seed)
    return res, time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=["mnist", "digits"], default="mnist")
    ap.add_argument("--experiences", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=300, help="training steps a task")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--hidden", default="256,256", type=lambda s: [int(v) for v in s.split(",")])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--prefs", type=int, default=11, help="preference points a = 0 .. 1")
    ap.add_argument("--hdr-samples", type=int, default=10, help="models drawn from each preference's HDR")
    ap.add_argument("--init-logvar", type=float, default=-4.5,
                    help="IBCL's ibcl_init_logvar (default -4.5: the value of the documented runs, made before the "
                         "library's default became -6)")
    ap.add_argument("--no-finetune", action="store_true")
    a, log, _ = parse_common(ap, argv)
    if a.init_logvar > 0:
        ap.error(f"--init-logvar is a log-variance at most 0 (the weights' initial sigma at most 1), got {a.init_logvar}")
    data = mnist() if a.dataset == "mnist" else digits()
    stream = split_stream(data, scenario="task", n_experiences=a.experiences, seed=a.seed)

    ibcl = IBCL(ibcl_init_logvar=a.init_logvar)
    res, train_s = _fit(ibcl, stream, a, a.seed)
    cost = ibcl.training_cost()
    log(f"IBCL trained in {train_s:.1f} s: {cost['models_trained']} models, {cost['batch_updates']} batch updates, "
        f"knowledge base {cost['knowledge_base_growth']}")
    n = len(stream)
    i, j = n - 2, n - 1
    rows, points, gen_s = [], [], 0.0
    g = torch.Generator().manual_seed(a.seed)
    for k in range(a.prefs):
        w_a = k / (a.prefs - 1)
        w = [0.0] * n
        w[i], w[j] = w_a, 1.0 - w_a
        t0 = time.perf_counter()
        centre = ibcl.preference_model(w)
        gen_s += time.perf_counter() - t0
        acc = (accuracy(centre, stream[i].test, i), accuracy(centre, stream[j].test, j))
        drawn = []
        for _ in range(a.hdr_samples):
            m = ibcl.preference_model(w, sample=True, generator=g)
            drawn.append((accuracy(m, stream[i].test, i), accuracy(m, stream[j].test, j)))
        points.append(acc)
        rows.append({"a": w_a, "acc": acc,
                     "hdr_mean": [sum(d[c] for d in drawn) / len(drawn) for c in (0, 1)] if drawn else None,
                     "hdr_peak": [max(d[c] for d in drawn) for c in (0, 1)] if drawn else None})
    for r, on in zip(rows, pareto(points)):
        r["pareto"] = on
    out = {"benchmark": "ibcl_pareto", "args": {k: v for k, v in vars(a).items() if k not in ("out", "quiet")},
           "environment": environment(torch.device("cpu")), "tasks": [i, j],
           "ibcl": {"train_s": train_s, "cost": cost, "accuracy_matrix": res.accuracy_matrix,
                    "average_accuracy": res.metrics()["average_accuracy"], "bwt": res.metrics()["bwt"],
                    "generate_s_per_preference": gen_s / a.prefs, "preferences": rows}}
    if not a.no_finetune:
        ft, ft_s = _fit(Strategy(), stream, a, a.seed)
        out["finetune"] = {"train_s": ft_s, "accuracy_matrix": ft.accuracy_matrix,
                           "average_accuracy": ft.metrics()["average_accuracy"], "bwt": ft.metrics()["bwt"],
                           "last_two": [ft.accuracy_matrix[-1][i], ft.accuracy_matrix[-1][j]],
                           "models_trained": 1, "batch_updates": a.iterations * n}
    table = [[f"{r['a']:.2f}", r["acc"][0], r["acc"][1], "*" if r["pareto"] else "",
              "" if r["hdr_mean"] is None else f"{r['hdr_mean'][0]:.3f} / {r['hdr_mean'][1]:.3f}",
              "" if r["hdr_peak"] is None else f"{r['hdr_peak'][0]:.3f} / {r['hdr_peak'][1]:.3f}"] for r in rows]
    print(f"IBCL on task-IL split {a.dataset}: w = (a, 1 - a) over tasks {i} and {j}")
    print(markdown_table(["a", f"acc task {i}", f"acc task {j}", "Pareto", "HDR mean", "HDR peak"], table))
    ib = out["ibcl"]
    print(f"\nIBCL: {cost['models_trained']} models trained, {cost['batch_updates']} batch updates, "
          f"{cost['flops']:.3g} training FLOPs, {train_s:.1f} s; knowledge base {cost['knowledge_base_growth']}; "
          f"{ib['generate_s_per_preference'] * 1e3:.1f} ms per zero-shot model; own-task average "
          f"{ib['average_accuracy']:.3f}, BWT {ib['bwt']:.3f}")
    if "finetune" in out:
        f = out["finetune"]
        print(f"fine-tuning: 1 model, {f['batch_updates']} batch updates, {f['train_s']:.1f} s; average "
              f"{f['average_accuracy']:.3f}, BWT {f['bwt']:.3f}; tasks {i}, {j}: "
              f"{f['last_two'][0]:.3f} / {f['last_two'][1]:.3f}")
    write_json(a.out, out)
    return out


if __name__ == "__main__":
    main()
