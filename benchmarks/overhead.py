"""Framework overhead: a lifelong run against the same algorithm written by hand in plain PyTorch.

Both sides train the same Split MNIST class-incremental stream (5 experiences of 2 digits,
classes seen so far active in the output layer) with the same MLP 784-400-400-10 (same initial
weights), the same minibatches in the same order (``torch.randperm`` from one generator, as
``lifelong.training.index_batches`` draws them), Adam (lr 1e-3, a fresh one per experience),
batch 128, ``--iterations`` steps per experience, and both evaluate every test set (the whole
accuracy matrix, as lifelong does, plus the initial row) at the end of each experience.
Continual evaluation is off.

- lifelong side: ``lifelong.training.train`` with the library's strategy classes: FineTune, ER
  (reservoir, 500 samples), EWC (empirical Fisher, ``ewc_fisher_labels="true"``, on 256 samples
  per experience) and LwF (T = 2, alpha = 1).
- plain side (``plain_run`` below): a loop over index batches with the methods written inline
  on plain tensors: a reservoir buffer (algorithm R, vectorised), the EWC penalty and Fisher,
  LwF distillation toward a frozen copy. It draws its random numbers from the same generators
  in the same order, so it performs the same computation, and a check run before the timing
  compares both sides' per-step losses and accuracy matrices.

Timing: ``--pairs`` pairs of runs, alternating which side goes first; the ratio of each pair is
lifelong time / plain time; we report the median, min and max. Data preparation and model
construction are outside the timed region on both sides.

    PYTHONPATH=src python benchmarks/overhead.py --iterations 300 --pairs 5 --out benchmarks/results/overhead.json
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (sets the import path for lifelong)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from lifelong.data import mnist  # noqa: E402
from lifelong.models import build_model  # noqa: E402
from lifelong.strategies.er import ER  # noqa: E402
from lifelong.strategies.ewc import EWC  # noqa: E402
from lifelong.strategies.finetune import FineTune  # noqa: E402
from lifelong.strategies.lwf import LwF  # noqa: E402
from lifelong.streams import Split, split_stream  # noqa: E402
from lifelong.training import train  # noqa: E402

STRATEGIES = ("finetune", "er", "ewc", "lwf")
N_EXP, N_CLASSES, HIDDEN = 5, 10, (400, 400)
LR = 1e-3
MEM_SIZE = 500
EWC_LAMBDA, EWC_SAMPLES = 1e5, 256
LWF_T, LWF_ALPHA = 2.0, 1.0
EVAL_BS = 1000


def make_strategy(name: str):
    return {"finetune": lambda: FineTune(),
            "er": lambda: ER(mem_size=MEM_SIZE, mem_policy="reservoir"),
            "ewc": lambda: EWC(ewc_lambda=EWC_LAMBDA, ewc_fisher_samples=EWC_SAMPLES, ewc_fisher_labels="true"),
            "lwf": lambda: LwF(lwf_temperature=LWF_T, lwf_alpha=LWF_ALPHA)}[name]()


# -- the data and initial weights, shared by both sides -------------------------------------------
def prepare(device: torch.device, seed: int = 0, test_per_exp: int | None = None, data=None) -> dict:
    """Both sides' data (``test_per_exp``: keep only the first test images of each experience);
    ``data``: the dataset (default MNIST; benchmarks/small_batch.py also uses digits)."""
    data = mnist() if data is None else data
    stream = split_stream(data, scenario="class", n_experiences=N_EXP, seed=seed)
    if test_per_exp is not None:
        for e in stream:
            e.test = Split(e.test.x[:test_per_exp], e.test.y[:test_per_exp])
    stream = stream.to(device)
    # The plain side cuts its own experiences from the raw tensors (digits 2k and 2k+1).
    xtr, xte = data.train.x.float().div_(255.0), data.test.x.float().div_(255.0)
    plain = []
    for k in range(N_EXP):
        cls = torch.tensor([2 * k, 2 * k + 1])
        mtr, mte = torch.isin(data.train.y, cls), torch.isin(data.test.y, cls)
        xt, yt = xte[mte][:test_per_exp], data.test.y[mte][:test_per_exp]
        plain.append({"classes": cls.to(device), "x": xtr[mtr].to(device), "y": data.train.y[mtr].to(device),
                      "xt": xt.to(device), "yt": yt.to(device)})
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.n_classes, "class", hidden=list(HIDDEN))
    init = {k: v.clone() for k, v in model.state_dict().items()}
    return {"stream": stream, "plain": plain, "init": init, "device": device, "seed": seed,
            "in_features": int(torch.tensor(stream.input_shape).prod())}


# -- lifelong side -------------------------------------------------------------------------------
class _LossRecorder:
    """A monitor that keeps every step's loss (check runs only: it syncs every step)."""

    def __init__(self):
        self.losses: list[float] = []

    def start(self, exp, n_iters):
        pass

    def step(self, it, loss, continual_acc=None):
        self.losses.append(loss.item())

    def end(self, exp, result):
        pass


def lifelong_run(name: str, P: dict, iterations: int, batch_size: int, record: list | None = None):
    """Set up (untimed) and return a closure that trains; the closure returns the accuracy matrix."""
    stream, device = P["stream"], P["device"]
    model = build_model("mlp", stream.input_shape, stream.n_classes, "class", hidden=list(HIDDEN))
    model.load_state_dict(P["init"])
    model.to(device)
    strategy = make_strategy(name).setup(model, device, P["seed"])
    monitor = _LossRecorder() if record is not None else None

    def go():
        res = train(stream, strategy, lambda p: torch.optim.Adam(p, lr=LR), batch_size=batch_size,
                    iterations=iterations, seed=P["seed"], eval_batch_size=EVAL_BS, eval_every=None,
                    monitor=monitor)
        if record is not None:
            record.extend(monitor.losses)
        return {"agnostic": res.task_agnostic_matrix, "aware": res.task_aware_matrix,
                "initial": [res.initial_agnostic, res.initial_aware], "losses": res.losses}

    return go


# -- plain side: the same algorithm, by hand -----------------------------------------------------
def plain_mlp(d: int = 28 * 28) -> nn.Sequential:
    """The MLP of lifelong's ``build_model("mlp", ...)`` as a plain Sequential (``d`` inputs)."""
    layers = [nn.Flatten()]
    for h in HIDDEN:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    return nn.Sequential(*layers, nn.Linear(d, N_CLASSES))


@torch.no_grad()
def plain_evaluate(model, inactive, exps) -> tuple[list[float], list[float]]:
    """Task-agnostic and task-aware accuracy on every experience's test set."""
    model.eval()
    hits = []
    for e in exps:
        cls, h_any, h_task = e["classes"], 0, 0
        for s in range(0, len(e["yt"]), EVAL_BS):
            scores = model(e["xt"][s:s + EVAL_BS]).masked_fill(inactive, float("-inf"))
            y = e["yt"][s:s + EVAL_BS]
            h_any = h_any + (scores.argmax(1) == y).sum()
            h_task = h_task + (cls[scores[:, cls].argmax(1)] == y).sum()
        hits.append(torch.stack([h_any, h_task]))
    model.train()
    counts = torch.stack(hits).tolist()
    return ([a / len(e["yt"]) for (a, _), e in zip(counts, exps)],
            [t / len(e["yt"]) for (_, t), e in zip(counts, exps)])


def plain_fisher(model, inactive, e, n, generator, device):
    """Empirical Fisher (true labels): mean over samples of squared per-sample log-likelihood
    gradients. For a linear layer z = a W^T + b the per-sample gradient is g_b a_b^T (g: the
    gradient at z), so the sum over samples of its square is (g^2)^T a^2: one backward pass for
    all samples (lifelong's EWC uses the same identity for models made of nn.Linear layers)."""
    idx = torch.randperm(len(e["y"]), generator=generator)[:n].to(device)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    fisher = [torch.zeros_like(p) for m in linears for p in (m.weight, m.bias)]
    model.eval()
    a, inputs, outputs = e["x"][idx], [], []
    for m in model:  # the forward pass, keeping every linear layer's input and output
        if isinstance(m, nn.Linear):
            inputs.append(a.detach())
            a = m(a)
            outputs.append(a)
        else:
            a = m(a)
    logp = F.log_softmax(a.masked_fill(inactive, float("-inf")), dim=1)
    ll = logp.gather(1, e["y"][idx][:, None]).squeeze(1)
    grads = torch.autograd.grad(ll.sum(), outputs)
    for k, (a, g) in enumerate(zip(inputs, grads)):
        g2 = g * g
        fisher[2 * k] += g2.T @ (a * a)
        fisher[2 * k + 1] += g2.sum(0)
    model.train()
    return [f / n for f in fisher]


def plain_run(name: str, P: dict, iterations: int, batch_size: int, record: list | None = None):
    device, exps, seed = P["device"], P["plain"], P["seed"]
    model = plain_mlp()
    model.load_state_dict(plain_state(P["init"]))
    model.to(device)

    def go():
        g = torch.Generator().manual_seed(seed)             # minibatch order (as lifelong's loop)
        g_mem = torch.Generator().manual_seed(seed + 2)     # ER: reservoir and replay draws
        g_fisher = torch.Generator().manual_seed(seed + 1)  # EWC: Fisher samples
        params = list(model.parameters())
        active = torch.zeros(N_CLASSES, dtype=torch.bool, device=device)
        mem_x = mem_y = None
        mem_n = n_seen = 0
        terms = []            # EWC: (fisher, anchor) per past experience
        old = old_cols = None  # LwF: frozen copy and its active outputs
        out = {"agnostic": [], "aware": [], "losses": []}
        out["initial"] = list(plain_evaluate(model, ~active, exps))
        for e in exps:
            active[e["classes"]] = True
            inactive = ~active
            opt = torch.optim.Adam(model.parameters(), lr=LR)
            x, y, n = e["x"], e["y"], len(e["y"])
            loss_sum = torch.zeros((), device=device)
            done = 0
            while done < iterations:
                perm = torch.randperm(n, generator=g)
                for s in range(0, n, batch_size):
                    if done == iterations:
                        break
                    idx = perm[s:s + batch_size].to(device)
                    xb, yb = x[idx], y[idx]
                    if name == "er" and mem_n:
                        j = torch.randperm(mem_n, generator=g_mem)[:len(idx)].to(device)
                        xb, yb = torch.cat([xb, mem_x[j]]), torch.cat([yb, mem_y[j]])
                    logits = model(xb).masked_fill(inactive, float("-inf"))
                    loss = F.cross_entropy(logits, yb)
                    if name == "ewc" and terms:
                        pen = 0.0
                        for fisher, anchor in terms:
                            for p, f, a in zip(params, fisher, anchor):
                                pen = pen + (f * (p - a) ** 2).sum()
                        loss = loss + EWC_LAMBDA / 2 * pen
                    elif name == "lwf" and old is not None:
                        with torch.no_grad():
                            target = F.softmax(old(xb)[:, old_cols] / LWF_T, dim=1)
                        kd = -(target * F.log_softmax(logits[:, old_cols] / LWF_T, dim=1)).sum(1).mean()
                        loss = loss + LWF_ALPHA * (kd * LWF_T ** 2)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if name == "er":  # reservoir sampling (algorithm R) of the stream samples
                        m = len(idx)
                        if mem_x is None:
                            mem_x = x.new_empty((MEM_SIZE, *x.shape[1:]))
                            mem_y = y.new_empty((MEM_SIZE,))
                        i = n_seen + torch.arange(m, dtype=torch.float64)
                        r = torch.floor(torch.rand(m, generator=g_mem, dtype=torch.float64) * (i + 1)).long()
                        slot = torch.where(i < MEM_SIZE, i.long(), r)
                        rows = torch.nonzero(slot < MEM_SIZE).flatten()
                        # the later of two samples that pick one slot wins (as if inserted one by one)
                        last = torch.full((MEM_SIZE,), -1, dtype=torch.long).scatter_reduce_(
                            0, slot[rows], rows, "amax")
                        slots = torch.nonzero(last >= 0).flatten()
                        src = last[slots].to(device)
                        slots = slots.to(device)
                        mem_x[slots] = xb[src]
                        mem_y[slots] = yb[src]
                        n_seen += m
                        mem_n = min(MEM_SIZE, n_seen)
                    loss_sum += loss.detach()
                    if record is not None:
                        record.append(loss.item())
                    done += 1
            if name == "ewc":
                fisher = plain_fisher(model, inactive, e, min(EWC_SAMPLES, n), g_fisher, device)
                terms.append((fisher, [p.detach().clone() for p in params]))
            elif name == "lwf":
                old = copy.deepcopy(model).eval()
                for p in old.parameters():
                    p.requires_grad_(False)
                old_cols = active.clone()
            out["losses"].append(loss_sum.item() / max(iterations, 1))
            agn, awr = plain_evaluate(model, inactive, exps)
            out["agnostic"].append(agn)
            out["aware"].append(awr)
        return out

    return go


def plain_state(init: dict) -> dict:
    """lifelong's ContinualModel state -> the plain Sequential's (same tensors, other names)."""
    out = {}
    for k, v in init.items():
        mod, _, attr = k.rpartition(".")
        if mod.startswith("backbone.net."):
            out[f"{mod.rpartition('.')[2]}.{attr}"] = v.clone()
        elif mod == "head.linear":
            out[f"{2 * len(HIDDEN) + 1}.{attr}"] = v.clone()
    return out


RUNNERS = {"lifelong": lifelong_run, "plain": plain_run}


# -- check and timing ----------------------------------------------------------------------------
def check(name: str, P: dict, iterations: int, batch_size: int) -> dict:
    """Run both sides once, recording every step's loss: the same computation gives the same numbers."""
    rec_l, rec_p = [], []
    out_l = lifelong_run(name, P, iterations, batch_size, rec_l)()
    out_p = plain_run(name, P, iterations, batch_size, rec_p)()
    diff = [abs(a - b) for a, b in zip(rec_l, rec_p)]

    def maxdiff(a, b):
        return max(abs(u - v) for ra, rb in zip(a, b) for u, v in zip(ra, rb))

    first = min(10, len(diff))
    return {
        "steps": len(rec_l),
        "first_losses_max_abs_diff": max(diff[:first]) if diff else 0.0,
        "losses_max_abs_diff": max(diff) if diff else 0.0,
        "losses_identical": rec_l == rec_p,
        "accuracy_max_abs_diff": max(maxdiff(out_l["agnostic"], out_p["agnostic"]),
                                     maxdiff(out_l["aware"], out_p["aware"])),
        "accuracy_identical": out_l["agnostic"] == out_p["agnostic"] and out_l["aware"] == out_p["aware"],
        "final_accuracy_lifelong": sum(out_l["agnostic"][-1]) / N_EXP,
        "final_accuracy_plain": sum(out_p["agnostic"][-1]) / N_EXP,
    }


def time_pairs(name: str, P: dict, iterations: int, batch_size: int, pairs: int, log=print) -> dict:
    t = {"lifelong": [], "plain": []}
    cpu = {"lifelong": [], "plain": []}
    for k in range(pairs):
        order = ("lifelong", "plain") if k % 2 == 0 else ("plain", "lifelong")
        for side in order:
            go = RUNNERS[side](name, P, iterations, batch_size)
            with C.Timer(P["device"]) as tm:
                go()
            t[side].append(tm.s)
            cpu[side].append(tm.cpu_s)
        log(f"  {name} pair {k + 1}/{pairs}: lifelong {t['lifelong'][-1]:.2f}s plain {t['plain'][-1]:.2f}s "
            f"ratio {t['lifelong'][-1] / t['plain'][-1]:.3f} (cpu time ratio "
            f"{cpu['lifelong'][-1] / cpu['plain'][-1]:.3f})")
    ratios = [a / b for a, b in zip(t["lifelong"], t["plain"])]
    cpu_ratios = [a / b for a, b in zip(cpu["lifelong"], cpu["plain"])]
    return {"ratio": C.stats(ratios), "ratios": ratios, "lifelong_s": t["lifelong"], "plain_s": t["plain"],
            "cpu_ratio": C.stats(cpu_ratios), "cpu_ratios": cpu_ratios,
            "lifelong_cpu_s": cpu["lifelong"], "plain_cpu_s": cpu["plain"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=50, help="training iterations per experience")
    ap.add_argument("--pairs", type=int, default=5, help="alternating (lifelong, plain) timing pairs")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--test-per-exp", type=int, help="evaluate on the first N test images of each experience "
                    "(default: all, about 2,000)")
    a, log, device = C.parse_common(ap, argv)
    P = prepare(device, a.seed, a.test_per_exp)
    results = {}
    for name in a.strategies.split(","):
        log(f"{name}: check run")
        chk = check(name, P, a.iterations, a.batch_size)  # doubles as warm-up for both sides
        res = time_pairs(name, P, a.iterations, a.batch_size, a.pairs, log)
        res["check"] = chk
        results[name] = res
    rows = [[n, r["ratio"]["median"], r["ratio"]["min"], r["ratio"]["max"], C.stats(r["lifelong_s"])["median"],
             C.stats(r["plain_s"])["median"], f"{r['check']['first_losses_max_abs_diff']:.1e}",
             f"{r['check']['losses_max_abs_diff']:.1e}", f"{r['check']['accuracy_max_abs_diff']:.4f}"]
            for n, r in results.items()]
    table = C.markdown_table(["strategy", "ratio median", "min", "max", "lifelong s", "plain s",
                              "loss diff (first 10 steps)", "loss diff (all steps)", "accuracy diff"], rows)
    out = {"benchmark": "overhead", "target_ratio": 1.05,
           "settings": {"iterations": a.iterations, "pairs": a.pairs, "batch_size": a.batch_size,
                        "experiences": N_EXP, "hidden": list(HIDDEN), "lr": LR, "mem_size": MEM_SIZE,
                        "ewc_lambda": EWC_LAMBDA, "ewc_fisher_samples": EWC_SAMPLES, "ewc_fisher_labels": "true",
                        "lwf_temperature": LWF_T, "lwf_alpha": LWF_ALPHA, "eval_every": None,
                        "test_per_exp": a.test_per_exp, "seed": a.seed},
           "environment": C.environment(device), "strategies": results, "table": table}
    print(f"## Framework overhead (lifelong / plain PyTorch wall time, {a.pairs} alternating pairs, "
          f"{a.iterations} iterations x {N_EXP} experiences, {device})\n")
    print(table)
    C.write_json(a.out, out)
    return out


if __name__ == "__main__":
    main()
