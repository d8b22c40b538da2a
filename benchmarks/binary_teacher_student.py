"""Continual learning of a binary perceptron in a teacher-student setting, in field space.

Li, Huang, Zou & Huang (Phys. Rev. E 2023, arXiv:2212.02846), the perceptron part: N binary
weights, one binary teacher per task (each teacher a copy of the previous one with every weight
flipped with probability (1 - rho) / 2, so consecutive teachers overlap rho; rho = 0:
independent teachers), P = alpha N Gaussian examples per task labelled y = sign(w* . x),
tasks learnt one after the other. The student is the mean-field distribution of binary
weights with fields h (m = tanh h); its loss on a task is the variational free energy per
example

    (1/P) sum_mu -log Phi(y_mu mean_mu / std_mu) + lam KL(q_h || q_{h_prev}) / P

(mean, variance: the Gaussian pre-activation moments of ``lifelong.strategies.binary_field``;
Phi(y mean / std) is the probability that a binary student drawn from q classifies the example
correctly). ``lam = 1`` uses the previous task's fields as the prior; ``lam = 0`` learns each
task from the previous fields without it (fine-tuning). After every task the script prints the
overlap R_j = sign(h) . w*_j / N with every teacher j and the generalisation error
eps_j = arccos(R_j) / pi.

    python benchmarks/binary_teacher_student.py --n 1000 --alpha 2 --tasks 3 --rho 0.5 --seeds 0-2
"""
from __future__ import annotations

import argparse
import math
import sys

import _common  # noqa: F401  (puts src/ on the path when lifelong is not installed)
import torch

from lifelong.strategies.binary_field import binary_weights, field_kl, preactivation_moments


def teachers(n: int, tasks: int, rho: float, g: torch.Generator) -> torch.Tensor:
    """(tasks, n) binary teachers; teacher k+1 is teacher k with each weight flipped with
    probability (1 - rho) / 2 (expected overlap rho between consecutive teachers)."""
    w = [torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)]
    for _ in range(tasks - 1):
        flip = torch.rand(n, generator=g) < (1 - rho) / 2
        w.append(torch.where(flip, -w[-1], w[-1]))
    return torch.stack(w)


def task_data(teacher: torch.Tensor, p: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(p, len(teacher), generator=g)
    y = torch.where(x @ teacher >= 0, 1.0, -1.0)
    return x, y


def free_energy(h, x, y, h_prior, lam):
    mean, var = preactivation_moments(x, h.unsqueeze(0))
    z = y * mean.squeeze(1) / var.squeeze(1).clamp_min(1e-12).sqrt()
    nll = -torch.special.log_ndtr(z).mean()
    if h_prior is None or lam == 0:
        return nll
    return nll + lam * field_kl(h, h_prior) / len(y)


def learn(h0, x, y, h_prior, lam, steps, lr):
    """Adam on the fields, full batch, from h0."""
    h = h0.clone().requires_grad_(True)
    opt = torch.optim.Adam([h], lr=lr)
    for _ in range(steps):
        loss = free_energy(h, x, y, h_prior, lam)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return h.detach()


def overlaps(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """R_j = sign(h) . w_j / N for every teacher j."""
    return (w @ binary_weights(h)) / len(h)


def gen_error(r: torch.Tensor) -> torch.Tensor:
    return torch.arccos(r.clamp(-1, 1)) / math.pi


def sequence(n: int, alpha: float, tasks: int, rho: float, lam: float, seed: int, steps: int = 100,
             lr: float = 0.05) -> torch.Tensor:
    """Learn the tasks in order; (tasks, tasks) overlaps: row k = after task k, column j = teacher j.
    The same teachers and examples for every ``lam`` at one seed."""
    g = torch.Generator().manual_seed(seed)
    w = teachers(n, tasks, rho, g)
    data = [task_data(w[k], int(alpha * n), g) for k in range(tasks)]
    h = 0.01 * torch.randn(n, generator=g)
    prior, rows = None, []
    for x, y in data:
        h = learn(h, x, y, prior, lam, steps, lr)
        prior = h.clone()
        rows.append(overlaps(h, w))
    return torch.stack(rows)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="inputs (binary weights)")
    ap.add_argument("--alpha", type=float, default=2.0, help="examples per task / N")
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--rho", type=float, default=0.5, help="overlap of consecutive teachers (0: independent)")
    ap.add_argument("--lam", type=float, default=1.0, help="weight of the KL to the previous fields")
    ap.add_argument("--steps", type=int, default=100, help="full-batch Adam steps per task")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seeds", default="0", help="e.g. 0-2")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    lo, _, hi = a.seeds.partition("-")
    seeds = list(range(int(lo), int(hi or lo) + 1))
    out = {}
    for name, lam in (("prior", a.lam), ("no prior", 0.0)):
        r = torch.stack([sequence(a.n, a.alpha, a.tasks, a.rho, lam, s, a.steps, a.lr) for s in seeds]).mean(0)
        out[name] = r
        print(f"\n{name} (lam={lam}): N={a.n} alpha={a.alpha} rho={a.rho} seeds={a.seeds}; "
              "generalisation error on teacher j (overlap R in brackets) after each task")
        print("after task | " + " | ".join(f"teacher {j + 1}" for j in range(a.tasks)))
        for k in range(a.tasks):
            print(f"{k + 1:10d} | " + " | ".join(
                f"{gen_error(r[k, j]).item():.3f} ({r[k, j].item():+.2f})" for j in range(a.tasks)))
    print("\nfinal error, average over tasks: prior %.3f, no prior %.3f" % (
        gen_error(out["prior"][-1]).mean().item(), gen_error(out["no prior"][-1]).mean().item()))
    return {k: v.tolist() for k, v in out.items()}


if __name__ == "__main__":
    main(sys.argv[1:])
