"""HyperInterval on task-IL Split MNIST: per-task embeddings against the universal embedding,
next to fine-tuning, over seeds (accuracy, BWT, parameters, time). CPU-sized: a 784-100 target
network and a (50,) hypernetwork, ``--iterations`` per task (the reference: 784-400-400, (100,),
2000 iterations, which on a CPU takes hours). Usage::

    OMP_NUM_THREADS=1 python benchmarks/hyperinterval_mnist.py --seeds 0 1 2 --iterations 300
    OMP_NUM_THREADS=1 python benchmarks/hyperinterval_mnist.py --stream permuted --tasks 3 --seeds 0
    OMP_NUM_THREADS=1 python benchmarks/hyperinterval_mnist.py --stream permuted --tasks 3 --seeds 0 \
        --nesting none --eps 1 --beta 0.01
"""
import argparse
import json
import time

import torch

from lifelong.data import mnist
from lifelong.evaluation import evaluate
from lifelong.models import build_model
from lifelong.strategies import get_strategy_class
from lifelong.streams import permuted_stream, split_stream
from lifelong.training import train


def make_stream(kind, tasks, seed):
    if kind == "permuted":  # task-IL: every task has the same ten labels, so one output block is shared
        return permuted_stream(mnist(), n_experiences=tasks, scenario="task", seed=seed)
    return split_stream(mnist(), scenario="task", n_experiences=tasks, seed=seed)


def run(name, seed, iterations, hidden, lr, stream_kind="split", tasks=5, **kw):
    stream = make_stream(stream_kind, tasks, seed)
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "task", hidden=hidden)
    s = get_strategy_class(name)(**kw).setup(model, "cpu", seed)
    t0 = time.perf_counter()
    res = train(stream, s, lambda p: torch.optim.Adam(p, lr=lr), batch_size=64, iterations=iterations, seed=seed)
    out = {"method": name, "stream": f"{stream_kind}-{tasks}", "seed": seed,
           "time_s": round(time.perf_counter() - t0, 1),
           **{k: round(v, 4) for k, v in res.metrics().items() if k in ("average_accuracy", "bwt")}}
    groups = s.param_groups()
    out["trained_params"] = sum(p.numel() for g in groups for p in g["params"])
    if name == "hyperinterval":
        out["target_params"] = s.n_target
        out["per_task"] = [round(a, 4) for a in res.accuracy_matrix[-1]]
        if s.universal() is None:  # without nesting the intervals need not intersect
            out["universal_accuracy"] = None
            return out
        s.hyperinterval_predict = "universal"
        uni = evaluate(s, stream.experiences, 1000, task_aware_predict=True)[1]
        out["universal_accuracy"] = round(sum(uni) / len(uni), 4)
        out["universal_per_task"] = [round(a, 4) for a in uni]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eps", type=float, default=10.0)
    ap.add_argument("--beta", type=float, default=0.001)
    ap.add_argument("--stream", choices=["split", "permuted"], default="split")
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--nesting", choices=["cos", "none"], default="cos",
                    help="none: the reference's per-task setting (M = 72, eps = 1, beta = 0.01 unless given)")
    a = ap.parse_args()
    for seed in a.seeds:
        hi = dict(hyperinterval_hidden=[50], hyperinterval_eps=a.eps, hyperinterval_beta=a.beta)
        if a.nesting == "none":
            hi.update(hyperinterval_nesting="none", hyperinterval_emb_dim=72)
        for name, kw in (("hyperinterval", hi), ("finetune", {})):
            print(json.dumps(run(name, seed, a.iterations, [100], a.lr, a.stream, a.tasks, **kw)), flush=True)


if __name__ == "__main__":
    main()
