"""Evidence for the seed claim of Ibrahim et al. 2024 ("Simple and Scalable Strategies to
Continually Pre-train Large Language Models"; for masked autoencoders, Singh et al. 2025,
"Beyond Cosine Decay"): in continual pre-training, the infinite schedule (warm up once, cool
down to a constant, anneal briefly at the end of each stage) beats cosine decay repeated per
stage (re-warmed each time).

Small on purpose: a masked autoencoder (an MLP on 28x28 images cut in 4x4 patches, 75 % of the
patches masked, reconstruction loss on the masked pixels) trained stage by stage on MNIST ->
Fashion-MNIST -> Animal-MNIST, the same number of steps per stage under each schedule. After
each stage, a linear probe (standardised frozen encoder features -> logistic regression, fixed
train / test subsets) is fitted on every dataset, and the masked-reconstruction loss is measured
on each test subset. Both schedules come from :mod:`lifelong.schedules`; constant is a third,
reference arm. The training loop is ours (the library's loop is supervised): the streams are
plain datasets, usable with any loop.

    PYTHONPATH=src python benchmarks/continual_pretraining.py --out benchmarks/results/continual_pretraining.json

Defaults (510 s of CPU time measured: under 9 minutes of one core): 3 seeds, 1000 steps per
stage, batch 128, AdamW (peak lr 1e-3, weight decay 0.05), warm-up 50 steps; infinite: cooldown
100 steps to 0.55, anneal over the last 10 % of each stage to 0.1 (the paper's ratios); cosine:
down to 0 each stage.
"""
from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (import path)
import numpy as np
import torch
from torch import nn

from _common import environment, markdown_table, parse_common, write_json
from lifelong.data import animal_mnist, fashion_mnist, mnist
from lifelong.schedules import build_schedule
from lifelong.stats import mean_std

DATASETS = {"mnist": mnist, "fashion_mnist": fashion_mnist, "animal_mnist": animal_mnist}
PATCH = 4  # 28 / 4 = 7 x 7 patches


def schedules(warmup: int) -> dict[str, dict]:
    return {
        "cosine (repeated)": {"name": "cosine", "over": "experience", "warmup": warmup},
        "infinite": {"name": "infinite", "over": "experience", "warmup": warmup, "cooldown": 2 * warmup,
                     "decay_fraction": 0.1},
        "constant": {"name": "constant", "warmup": warmup},
    }


class MAE(nn.Module):
    """An MLP masked autoencoder: masked image (masked patches zeroed, plus the mask itself)
    -> ``features`` -> the whole image."""

    def __init__(self, hidden: int = 512, features: int = 128):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(2 * 784, hidden), nn.GELU(), nn.Linear(hidden, features))
        self.decoder = nn.Sequential(nn.GELU(), nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, 784))

    def encode(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.encoder(torch.cat([x * keep, keep], dim=1))

    def forward(self, x, keep):
        return self.decoder(self.encode(x, keep))


def patch_mask(n: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """(n, 784) float: 1 where a pixel is kept, 0 in the masked patches (``ratio`` of the 49)."""
    n_patches = (28 // PATCH) ** 2
    n_masked = int(round(ratio * n_patches))
    order = torch.rand(n, n_patches, generator=generator).argsort(dim=1)
    keep = torch.ones(n, n_patches)
    keep.scatter_(1, order[:, :n_masked], 0.0)
    keep = keep.view(n, 28 // PATCH, 1, 28 // PATCH, 1).expand(n, 28 // PATCH, PATCH, 28 // PATCH, PATCH)
    return keep.reshape(n, 784)


def masked_loss(model: MAE, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    masked = 1.0 - keep
    return (((model(x, keep) - x) ** 2) * masked).sum() / masked.sum()


def flat(ds) -> torch.Tensor:
    return ds.x.reshape(len(ds.x), -1).float() / 255.0


@torch.no_grad()
def features(model: MAE, x: torch.Tensor) -> np.ndarray:
    """Features of the whole (unmasked) image."""
    return model.encode(x, torch.ones_like(x)).numpy()


def probe(model: MAE, data: dict) -> float:
    """Linear-probe test accuracy: logistic regression on standardised frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    model.eval()
    ftr, fte = features(model, data["probe_x"]), features(model, data["test_x"])
    scaler = StandardScaler().fit(ftr)
    clf = LogisticRegression(max_iter=500, C=1.0).fit(scaler.transform(ftr), data["probe_y"])
    return float(clf.score(scaler.transform(fte), data["test_y"]))


@torch.no_grad()
def test_loss(model: MAE, data: dict, ratio: float) -> float:
    model.eval()
    g = torch.Generator().manual_seed(1234)  # the same masks for every model
    return float(masked_loss(model, data["test_x"], patch_mask(len(data["test_x"]), ratio, g)))


def load(n_probe: int, n_test: int) -> dict[str, dict]:
    """Each dataset's training images and fixed probe-train / test subsets (seed 0)."""
    out = {}
    g = torch.Generator().manual_seed(0)
    for name, fn in DATASETS.items():
        splits = fn()
        xtr, ytr, xte, yte = flat(splits.train), splits.train.y, flat(splits.test), splits.test.y
        ptr = torch.randperm(len(xtr), generator=g)[:n_probe]
        pte = torch.randperm(len(xte), generator=g)[:n_test]
        out[name] = {"train_x": xtr, "probe_x": xtr[ptr], "probe_y": ytr[ptr].numpy(),
                     "test_x": xte[pte], "test_y": yte[pte].numpy()}
    return out


def run(data: dict, schedule_cfg: dict, seed: int, steps: int, batch_size: int, lr: float, ratio: float,
        log) -> dict:
    torch.manual_seed(seed)
    model = MAE()
    names = list(data)
    sched = build_schedule(schedule_cfg, [steps] * len(names))
    g = torch.Generator().manual_seed(seed)
    # one optimizer over the whole stream: the schedule, not a reset, decides the learning rate
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    probes = [[probe(model, data[n]) for n in names]]  # row 0: the random encoder
    losses = [[test_loss(model, data[n], ratio) for n in names]]
    lrs = []
    t0 = time.perf_counter()
    for stage, name in enumerate(names):
        x = data[name]["train_x"]
        model.train()
        for it in range(steps):
            f = sched.factor(stage, it)
            for group in opt.param_groups:
                group["lr"] = lr * f
            lrs.append(lr * f)
            idx = torch.randint(len(x), (batch_size,), generator=g)
            loss = masked_loss(model, x[idx], patch_mask(batch_size, ratio, g))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        probes.append([probe(model, data[n]) for n in names])
        losses.append([test_loss(model, data[n], ratio) for n in names])
        log(f"  seed {seed} stage {stage + 1} ({name}): probe " + " ".join(f"{a:.3f}" for a in probes[-1])
            + "  loss " + " ".join(f"{v:.4f}" for v in losses[-1]))
    return {"probe_matrix": probes, "loss_matrix": losses, "time_s": time.perf_counter() - t0,
            "lr_every_50": lrs[::50]}


def summarise(res: dict) -> dict:
    """Per run: final probe accuracy averaged over the three datasets; average over stages of the
    mean accuracy on the datasets seen so far; forgetting of the first two; final test losses."""
    p = np.asarray(res["probe_matrix"])[1:]  # rows: after stage 1..3
    k = p.shape[0]
    seen = [p[i, :i + 1].mean() for i in range(k)]
    forget = [p[j:k - 1, j].max() - p[k - 1, j] for j in range(k - 1)]
    return {"final_avg_probe": float(p[-1].mean()), "avg_seen_probe": float(np.mean(seen)),
            "forgetting": float(np.mean(forget)), "final_avg_loss": float(np.mean(res["loss_matrix"][-1]))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1000, help="training steps per stage")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    ap.add_argument("--n-probe", type=int, default=5000, help="probe training samples per dataset")
    ap.add_argument("--n-test", type=int, default=5000, help="probe / loss test samples per dataset")
    a, log, device = parse_common(ap, argv)
    if device.type != "cpu":
        raise SystemExit("this benchmark runs on CPU (--device cpu)")
    t0 = time.perf_counter()
    data = load(a.n_probe, a.n_test)
    arms = schedules(a.warmup)
    runs = {arm: [] for arm in arms}
    for seed in range(a.seed, a.seed + a.seeds):
        for arm, cfg in arms.items():
            log(f"{arm}, seed {seed}")
            res = run(data, cfg, seed, a.steps, a.batch_size, a.lr, a.mask_ratio, log)
            res.update(summarise(res), seed=seed)
            runs[arm].append(res)
    keys = ["final_avg_probe", "avg_seen_probe", "forgetting", "final_avg_loss"]
    rows, table = [], {}
    for arm, rs in runs.items():
        table[arm] = {k: mean_std([r[k] for r in rs]) for k in keys}
        rows.append([arm] + [f"{m:.4f} ± {s:.4f}" for m, s in table[arm].values()])
    names = list(DATASETS)
    final = [[arm] + [f"{np.mean([r['probe_matrix'][-1][j] for r in rs]):.3f}" for j in range(len(names))]
             for arm, rs in runs.items()]
    base = runs["cosine (repeated)"]
    diffs = {k: [r[k] - b[k] for r, b in zip(runs["infinite"], base)] for k in keys}
    md = ("Masked autoencoder, MNIST -> Fashion-MNIST -> Animal-MNIST, linear probe after each stage "
          f"(mean ± sd over {a.seeds} seeds; {a.steps} steps per stage)\n\n"
          + markdown_table(["schedule", "final avg probe acc", "avg seen probe acc", "forgetting",
                            "final avg masked loss"], rows)
          + "\n\nFinal probe accuracy per dataset\n\n" + markdown_table(["schedule"] + names, final)
          + "\n\ninfinite - cosine (repeated), per seed (paired):\n"
          + "\n".join(f"- {k}: " + ", ".join(f"{v:+.4f}" for v in d) for k, d in diffs.items()))
    print(md)
    out = {"benchmark": "continual_pretraining", "args": vars(a), "schedules": arms, "datasets": names,
           "summary": {arm: {k: {"mean": m, "sd": s} for k, (m, s) in t.items()} for arm, t in table.items()},
           "infinite_minus_cosine": diffs, "runs": runs, "table_md": md,
           "wall_s": time.perf_counter() - t0, "environment": environment(device)}
    write_json(a.out, out)
    return out


if __name__ == "__main__":
    main()
