"""SparCL against DER++, its base: accuracy and training FLOPs, and each part's effect.

Wang et al. (NeurIPS 2022), "SparCL: Sparse Continual Learning on the Edge", claims that its
three parts (TDM: a sparse mask kept over the whole stream and updated task-aware; DDR: the
least informative training samples removed; DGM: only the largest gradients applied) cut
DER++'s training FLOPs by up to 23x while keeping (even raising) its accuracy.

Class-IL Split MNIST (or Fashion-MNIST), 5 experiences of 2 classes, ``--train-per-class``
training samples per class (the whole test set), an MLP, plain SGD (no momentum, as the
reference code's continual runs), ``--iterations`` per experience of batch 32 (several epochs:
DDR counts forgetting events over repeated presentations), DER++ with a 500-sample buffer.
Rows (``lifelong.strategies.sparcl`` switches; every SparCL row at ``--sparsity``):

- DER++: ``sparcl`` with every part off, which is DER++ bit for bit (checked here on the first
  seed against ``derpp`` itself, and in tests/test_sparcl.py);
- DER++ + current-task CE: the reference script's ``--use_cl_mask`` alone (dense);
- static mask: a random sparse mask that never changes (+ current-task CE);
- TDM, TDM + DDR, TDM + DGM, SparCL (all three), SparCL without the current-task CE.

Reports the final average accuracy (mean ± sd over seeds, and the difference to DER++ paired by
seed), the training FLOPs the strategy counts step by step (``training_flops``: at the masks
in force at each step; with DER++'s two replayed minibatches per step; with DGM's masked weight
gradients or the full backward), the samples trained, and the training wall time (dense
hardware: sparse weights are multiplied as dense matrices, so sparsity shows no speed-up;
DDR's fewer samples do).

    PYTHONPATH=src python benchmarks/sparcl_flops.py --out benchmarks/results/sparcl_flops.json

Defaults: about 10 minutes of one idle core (MNIST, MLP 784-256-256, 1000 samples per class,
400 iterations of 32 per experience = 6.4 epochs, lr 0.1, 3 seeds, 75 % sparsity).
"""
from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (import path)

import torch  # noqa: E402

from _common import environment, markdown_table, parse_common, write_json  # noqa: E402
from lifelong.data import DatasetSplits, load_dataset  # noqa: E402
from lifelong.models import build_model  # noqa: E402
from lifelong.stats import mean_std  # noqa: E402
from lifelong.strategies import STRATEGIES  # noqa: E402
from lifelong.streams import split_stream  # noqa: E402
from lifelong.training import train  # noqa: E402

OFF = dict(sparcl_sparsity=0.0, sparcl_tdm=False, sparcl_ddr=False, sparcl_dgm=False, sparcl_current_task_ce=False)


def configs(sparsity: float, gradient_sparsity: float | None = None) -> dict[str, dict]:
    """The rows. ``gradient_sparsity`` (DGM): by default 80 % of the active weights' gradients
    are kept, as the reference's 0.8 at 0.75 (``1 - 0.8 (1 - sparsity)``)."""
    g = 1 - 0.8 * (1 - sparsity) if gradient_sparsity is None else gradient_sparsity
    sparse = dict(OFF, sparcl_sparsity=sparsity, sparcl_current_task_ce=True, sparcl_gradient_sparsity=g)
    return {
        "DER++": dict(OFF),
        "DER++ + current-task CE": dict(OFF, sparcl_current_task_ce=True),
        "static mask": dict(sparse),
        "TDM": dict(sparse, sparcl_tdm=True),
        "TDM + DDR": dict(sparse, sparcl_tdm=True, sparcl_ddr=True),
        "TDM + DGM": dict(sparse, sparcl_tdm=True, sparcl_dgm=True),
        "SparCL": dict(sparse, sparcl_tdm=True, sparcl_ddr=True, sparcl_dgm=True),
        "SparCL without current-task CE": dict(sparse, sparcl_tdm=True, sparcl_ddr=True, sparcl_dgm=True,
                                               sparcl_current_task_ce=False),
    }


def subsample(data: DatasetSplits, per_class: int, seed: int) -> DatasetSplits:
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(data.train.y).tolist():
        idx = torch.nonzero(data.train.y == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return DatasetSplits(data.train.subset(torch.sort(torch.cat(keep)).values), data.test)


def fit(data, name: str, params: dict, seed: int, a):
    stream = split_stream(data, scenario="class", n_experiences=5, seed=seed)
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "class",
                        hidden=[int(h) for h in a.hidden.split(",")])
    strategy = STRATEGIES[name](mem_size=a.mem_size, **params).setup(model, "cpu", seed)
    t0 = time.process_time()
    res = train(stream, strategy, lambda p: torch.optim.SGD(p, lr=a.lr), batch_size=a.batch_size,
                iterations=a.iterations, seed=seed)
    return strategy, res, time.process_time() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "fashion_mnist"])
    ap.add_argument("--hidden", default="256,256")
    ap.add_argument("--train-per-class", type=int, default=1000)
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--mem-size", type=int, default=500)
    ap.add_argument("--sparsity", type=float, default=0.75)
    ap.add_argument("--gradient-sparsity", type=float, default=None,
                    help="DGM's overall gradient sparsity (default: 80 %% of the active weights' gradients kept)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rows", default=None, help="comma-separated row names (default: all)")
    a, log, device = parse_common(ap, argv)
    t_start = time.perf_counter()
    rows_cfg = configs(a.sparsity, a.gradient_sparsity)
    names = a.rows.split(",") if a.rows else list(rows_cfg)
    full = load_dataset(a.dataset)
    out_rows = {n: {k: [] for k in ("accuracy", "flops", "samples", "cpu_s", "train_s", "removed")} for n in names}
    derpp_check = None
    for seed in range(a.seed, a.seed + a.seeds):
        data = subsample(full, a.train_per_class, seed)
        if seed == a.seed and "DER++" in names:  # the 'DER++' row is sparcl with every part off: check once
            _, ref, _ = fit(data, "derpp", {}, seed, a)
            derpp_check = ref.accuracy_matrix
        for n in names:
            strategy, res, cpu = fit(data, "sparcl", rows_cfg[n], seed, a)
            if n == "DER++" and derpp_check is not None:
                assert res.accuracy_matrix == derpp_check, "sparcl with every part off differs from derpp"
                derpp_check = None
            acc = res.metrics()["average_accuracy"]
            r = out_rows[n]
            r["accuracy"].append(acc)
            r["flops"].append(strategy.training_flops())
            r["samples"].append(res.samples_trained)
            r["cpu_s"].append(cpu)
            r["train_s"].append(res.train_time_s)
            r["removed"].append(list(strategy.ddr_removed_))
            log(f"seed {seed} {n}: accuracy {acc:.4f}, samples {res.samples_trained}, "
                f"FLOPs with replay {strategy.training_flops()['training_with_replay']:.3g}, "
                f"train {res.train_time_s:.1f}s")
    base = out_rows.get("DER++")
    table = []
    for n in names:
        r = out_rows[n]
        mu, sd = mean_std(r["accuracy"])
        row = [n, f"{mu:.4f} ± {sd:.4f}"]
        if base is not None and n != "DER++":
            d = [x - b for x, b in zip(r["accuracy"], base["accuracy"])]
            dm, dsd = mean_std(d)
            row.append(f"{dm:+.4f} ± {dsd:.4f} ({sum(v >= 0 for v in d)}/{len(d)})")
        else:
            row.append("")
        f = {k: sum(x[k] for x in r["flops"]) / len(r["flops"]) for k in r["flops"][0]}
        row += [f"{f['training_with_replay']:.3g}", f"{f['training_gradient_masked_with_replay']:.3g}"]
        if base is not None:
            fb = sum(x["training_with_replay"] for x in base["flops"]) / len(base["flops"])
            row.append(f"{fb / f['training_gradient_masked_with_replay']:.2f}x")
        else:
            row.append("")
        row += [f"{sum(r['samples']) / len(r['samples']):,.0f}", f"{sum(r['train_s']) / len(r['train_s']):.1f}"]
        table.append(row)
    header = ["row", "average accuracy", "minus DER++ (k/n >= 0)", "training FLOPs (dense backward)",
              "training FLOPs (DGM-masked weight gradients)", "DER++ / this (masked)", "samples trained",
              "train time s"]
    md = (f"class-IL split {a.dataset}, {a.train_per_class} training samples per class, MLP {a.hidden}, "
          f"{a.iterations} iterations of {a.batch_size} per experience, SGD lr {a.lr}, DER++ memory {a.mem_size}, "
          f"sparsity {a.sparsity}; mean ± sd over {a.seeds} seeds; FLOPs include DER++'s two replayed minibatches\n\n"
          + markdown_table(header, table))
    print(md)
    out = {"benchmark": "sparcl_flops", "args": vars(a), "rows": out_rows, "table_md": md,
           "wall_s": time.perf_counter() - t_start, "environment": environment(device)}
    write_json(a.out, out)
    return out


if __name__ == "__main__":
    main()
