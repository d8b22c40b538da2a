"""Per-step overhead at small batch (issue 14): lifelong against the same algorithm by hand.

Both sides train a class-incremental split (5 experiences of 2 digits, classes seen so far
active) of scikit-learn ``digits`` (8x8) or MNIST (28x28) with an MLP (400-400, same initial
weights), SGD at a constant lr, batch 10, the same minibatches in the same order, and evaluate
every test set at the end of each experience (``--test-per-exp`` images each). Methods:
finetune, er (reservoir, 500), er_ace, derpp (alpha 1, beta 0.5, 500 samples, the MSE on the
head's unmasked outputs, one forward over the incoming and both replayed minibatches) and mir
(50 candidates, 500 samples), each in its paper's online form (replayed batch = incoming batch).

The plain side (``plain_run``) is a loop over index batches with each method written inline
on plain tensors, drawing from the same generators in the same order; a check run before the
timing records every step's loss on both sides and reports the largest difference (0 when the
computation is the same).

Timing: ``--pairs`` pairs, alternating which side goes first; ratio = lifelong / plain time of
one pair, in wall time and in process CPU time; we report the median (and the wall ratios' min,
max). On a shared machine the CPU-time ratio is the one to read: wall time also counts the
time other processes hold the core. The time per step of derpp, mir (and, with
``--lifelong-only onpro``, OnPro, which has no plain counterpart here) relative to er is the
ratio of their lifelong CPU-time medians.

    PYTHONPATH=src python benchmarks/small_batch.py --data digits --iterations 100 --pairs 7 \
        --out benchmarks/results/small_batch_digits.json
    PYTHONPATH=src python benchmarks/small_batch.py --data mnist --iterations 50 --pairs 5 \
        --out benchmarks/results/small_batch_mnist.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (sets the import path for lifelong)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.func import functional_call  # noqa: E402

import overhead as O  # noqa: E402  (plain_evaluate, _LossRecorder)
from lifelong.data import digits, mnist  # noqa: E402
from lifelong.models import build_model  # noqa: E402
from lifelong.strategies import der, er, er_ace, finetune, mir  # noqa: E402
from lifelong.training import train  # noqa: E402

STRATEGIES = ("finetune", "er", "er_ace", "derpp", "mir")
N_EXP, N_CLASSES, HIDDEN = 5, 10, (400, 400)
LR = 0.05
MEM_SIZE = 500
DER_ALPHA, DERPP_BETA = 1.0, 0.5
MIR_CANDIDATES = 50
REPLAY = {"er", "er_ace", "derpp", "mir"}


def make_strategy(name: str):
    if name == "onpro":  # lifelong side only (--lifelong-only); the paper's defaults
        from lifelong.strategies.onpro import OnPro
        return OnPro()
    return {"finetune": lambda: finetune.FineTune(),
            "er": lambda: er.ER(mem_size=MEM_SIZE, mem_policy="reservoir"),
            "er_ace": lambda: er_ace.ERACE(mem_size=MEM_SIZE),
            "derpp": lambda: der.DERPP(mem_size=MEM_SIZE, der_alpha=DER_ALPHA, derpp_beta=DERPP_BETA),
            "mir": lambda: mir.MIR(mem_size=MEM_SIZE, mir_candidates=MIR_CANDIDATES)}[name]()


def prepare(data_name: str, device: torch.device, seed: int, test_per_exp: int | None) -> dict:
    """overhead.py's data for both sides, on digits or MNIST."""
    return O.prepare(device, seed, test_per_exp, data={"digits": digits, "mnist": mnist}[data_name]())


# -- lifelong side -------------------------------------------------------------------------------
def lifelong_run(name: str, P: dict, iterations: int, batch_size: int, record: list | None = None):
    stream, device = P["stream"], P["device"]
    model = build_model("mlp", stream.input_shape, stream.n_classes, "class", hidden=list(HIDDEN))
    model.load_state_dict(P["init"])
    model.to(device)
    strategy = make_strategy(name).setup(model, device, P["seed"])
    monitor = O._LossRecorder() if record is not None else None

    def go():
        res = train(stream, strategy, lambda p: torch.optim.SGD(p, lr=LR), batch_size=batch_size,
                    iterations=iterations, seed=P["seed"], eval_batch_size=O.EVAL_BS, eval_every=None,
                    monitor=monitor)
        if record is not None:
            record.extend(monitor.losses)
        return res.task_agnostic_matrix

    return go


# -- plain side ----------------------------------------------------------------------------------
plain_state, plain_mlp = O.plain_state, O.plain_mlp  # the same network and weights as overhead.py's


def plain_run(name: str, P: dict, iterations: int, batch_size: int, record: list | None = None):
    device, exps, seed = P["device"], P["plain"], P["seed"]
    model = plain_mlp(P["in_features"])
    model.load_state_dict(plain_state(P["init"]))
    model.to(device)
    names, params = zip(*model.named_parameters())

    def go():
        g = torch.Generator().manual_seed(seed)          # minibatch order
        g_mem = torch.Generator().manual_seed(seed + 2)  # the memory: reservoir and replay draws
        active = torch.zeros(N_CLASSES, dtype=torch.bool, device=device)
        mem = None  # preallocated x, y (and logits for derpp)
        mem_n = n_seen = 0
        matrix = []
        O.plain_evaluate(model, ~active, exps)
        opt = None
        for e in exps:
            active[e["classes"]] = True
            inactive = ~active

            def f(x):
                return model(x).masked_fill(inactive, float("-inf"))

            opt = torch.optim.SGD(model.parameters(), lr=LR)
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
                    m = len(idx)
                    if name in ("er", "er_ace") and mem_n:
                        j = torch.randperm(mem_n, generator=g_mem)[:m].to(device)
                        xa, ya = torch.cat([xb, mem["x"][j]]), torch.cat([yb, mem["y"][j]])
                    elif name == "mir" and mem_n:
                        j = torch.randperm(mem_n, generator=g_mem)[:max(MIR_CANDIDATES, m)].to(device)
                        cx, cy = mem["x"][j], mem["y"][j]
                        grads = torch.autograd.grad(F.cross_entropy(f(xb), yb), params)
                        virtual = {k: p.detach() - LR * gr for k, p, gr in zip(names, params, grads)}
                        with torch.no_grad():
                            before = F.cross_entropy(f(cx), cy, reduction="none")
                            after = F.cross_entropy(functional_call(model, virtual, (cx,)).masked_fill(
                                inactive, float("-inf")), cy, reduction="none")
                        top = torch.sort(after - before, descending=True, stable=True).indices[:m]
                        xa, ya = torch.cat([xb, cx[top]]), torch.cat([yb, cy[top]])
                    else:
                        xa, ya = xb, yb
                    if name == "derpp" and mem_n:  # one forward over the incoming and both replayed batches
                        j1 = torch.randperm(mem_n, generator=g_mem)[:m].to(device)
                        j2 = torch.randperm(mem_n, generator=g_mem)[:m].to(device)
                        raw, r1, r2 = model(torch.cat([xa, mem["x"][j1], mem["x"][j2]])).split([m, len(j1), len(j2)])
                    else:
                        raw = model(xa)  # derpp stores the head's unmasked outputs (as lifelong's DER)
                    logits = raw.masked_fill(inactive, float("-inf"))
                    if name == "er_ace":
                        present = torch.zeros(N_CLASSES, dtype=torch.bool, device=device)
                        present[yb] = True
                        loss = F.cross_entropy(logits[:m].masked_fill(~present, float("-inf")), yb)
                        if len(ya) > m:
                            loss = loss + F.cross_entropy(logits[m:], ya[m:])
                    else:
                        loss = F.cross_entropy(logits, ya)
                    if name == "derpp" and mem_n:
                        mse = F.mse_loss(r1, mem["logits"][j1])
                        ce = F.cross_entropy(r2.masked_fill(inactive, float("-inf")), mem["y"][j2])
                        loss = loss + (DER_ALPHA * mse + DERPP_BETA * ce)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if name in REPLAY:  # reservoir sampling (algorithm R) of the stream samples
                        if mem is None:
                            mem = {"x": x.new_empty((MEM_SIZE, *x.shape[1:])), "y": y.new_empty((MEM_SIZE,))}
                            if name == "derpp":
                                mem["logits"] = logits.new_empty((MEM_SIZE, N_CLASSES))
                        i = n_seen + torch.arange(m, dtype=torch.float64)
                        r = torch.floor(torch.rand(m, generator=g_mem, dtype=torch.float64) * (i + 1)).long()
                        slot = torch.where(i < MEM_SIZE, i.long(), r)
                        rows = torch.nonzero(slot < MEM_SIZE).flatten()
                        last = torch.full((MEM_SIZE,), -1, dtype=torch.long).scatter_reduce_(
                            0, slot[rows], rows, "amax")
                        slots = torch.nonzero(last >= 0).flatten()
                        src = last[slots].to(device)
                        slots = slots.to(device)
                        mem["x"][slots] = xb[src]
                        mem["y"][slots] = yb[src]
                        if name == "derpp":
                            mem["logits"][slots] = raw.detach()[src]
                        n_seen += m
                        mem_n = min(MEM_SIZE, n_seen)
                    loss_sum += loss.detach()
                    if record is not None:
                        record.append(loss.item())
                    done += 1
            loss_sum.item()
            matrix.append(O.plain_evaluate(model, inactive, exps)[0])
        return matrix

    return go


RUNNERS = {"lifelong": lifelong_run, "plain": plain_run}


def check(name: str, P: dict, iterations: int, batch_size: int) -> dict:
    rec_l, rec_p = [], []
    acc_l = lifelong_run(name, P, iterations, batch_size, rec_l)()
    acc_p = plain_run(name, P, iterations, batch_size, rec_p)()
    diff = [abs(a - b) for a, b in zip(rec_l, rec_p)]
    return {"steps": len(rec_l), "losses_max_abs_diff": max(diff) if diff else 0.0,
            "losses_identical": rec_l == rec_p, "accuracy_identical": acc_l == acc_p}


def time_lifelong(name: str, P: dict, iterations: int, batch_size: int, runs: int, log=print) -> dict:
    """The lifelong side alone (a method without a plain counterpart here): ``runs`` timed runs."""
    lifelong_run(name, P, iterations, batch_size)()  # warm-up
    t, cpu = [], []
    for k in range(runs):
        go = lifelong_run(name, P, iterations, batch_size)
        with C.Timer(P["device"]) as tm:
            go()
        t.append(tm.s)
        cpu.append(tm.cpu_s)
        log(f"  {name} (lifelong only) run {k + 1}/{runs}: {t[-1]:.3f}s")
    return {"lifelong_s": t, "lifelong_cpu_s": cpu, "lifelong_only": True}


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
        log(f"  {name} pair {k + 1}/{pairs}: lifelong {t['lifelong'][-1]:.3f}s plain {t['plain'][-1]:.3f}s "
            f"ratio {t['lifelong'][-1] / t['plain'][-1]:.3f}")
    ratios = [a / b for a, b in zip(t["lifelong"], t["plain"])]
    cpu_ratios = [a / b for a, b in zip(cpu["lifelong"], cpu["plain"])]
    return {"ratio": C.stats(ratios), "ratios": ratios, "lifelong_s": t["lifelong"], "plain_s": t["plain"],
            "cpu_ratio": C.stats(cpu_ratios), "cpu_ratios": cpu_ratios,
            "lifelong_cpu_s": cpu["lifelong"], "plain_cpu_s": cpu["plain"]}


def summarise(results: dict, steps: int) -> str:
    """Per-step times and time relative to er from the medians of process CPU time (on a shared
    machine wall time swings with other load far more than CPU time); the table."""
    def med(v):
        return C.stats(v)["median"]

    er_med = med(results["er"]["lifelong_cpu_s"]) if "er" in results else None
    rows = []
    for n, r in results.items():
        m = med(r["lifelong_cpu_s"])
        r["cpu_ms_per_step_lifelong"] = 1e3 * m / steps
        r["time_vs_er"] = m / er_med if er_med else None
        vs_er = "-" if r["time_vs_er"] is None else r["time_vs_er"]
        if r.get("lifelong_only"):
            rows.append([n, "-", "-", "-", "-", r["cpu_ms_per_step_lifelong"], "-", vs_er, "-"])
            continue
        r["cpu_ms_per_step_plain"] = 1e3 * med(r["plain_cpu_s"]) / steps
        rows.append([n, r["ratio"]["median"], r["ratio"]["min"], r["ratio"]["max"], r["cpu_ratio"]["median"],
                     r["cpu_ms_per_step_lifelong"], r["cpu_ms_per_step_plain"], vs_er,
                     f"{r['check']['losses_max_abs_diff']:.1e}"])
    return C.markdown_table(["strategy", "wall ratio median", "min", "max", "CPU-time ratio median",
                             "lifelong CPU ms/step", "plain CPU ms/step", "lifelong CPU time / er",
                             "loss diff (all steps)"], rows)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=("digits", "mnist"), default="digits")
    ap.add_argument("--iterations", type=int, default=100, help="training iterations per experience")
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--test-per-exp", type=int, default=200)
    ap.add_argument("--lifelong-only", default="", help="methods timed on the lifelong side only, for "
                    "their time relative to er (e.g. onpro)")
    ap.add_argument("--retable", help="recompute the summary of this results JSON (in place) and stop")
    a, log, device = C.parse_common(ap, argv)
    if a.retable:
        out = json.loads(Path(a.retable).read_text())
        out["table"] = summarise(out["strategies"], N_EXP * out["settings"]["iterations"])
        print(out["table"])
        C.write_json(a.retable, out)
        return out
    P = prepare(a.data, device, a.seed, a.test_per_exp)
    results = {}
    for name in a.strategies.split(","):
        log(f"{name}: check run")
        chk = check(name, P, a.iterations, a.batch_size)  # doubles as warm-up
        results[name] = dict(time_pairs(name, P, a.iterations, a.batch_size, a.pairs, log), check=chk)
    for name in filter(None, a.lifelong_only.split(",")):
        results[name] = time_lifelong(name, P, a.iterations, a.batch_size, a.pairs, log)
    table = summarise(results, N_EXP * a.iterations)
    out = {"benchmark": "small_batch", "target_ratio": 1.10,
           "settings": {"data": a.data, "iterations": a.iterations, "pairs": a.pairs, "batch_size": a.batch_size,
                        "experiences": N_EXP, "hidden": list(HIDDEN), "optimizer": "SGD", "lr": LR,
                        "mem_size": MEM_SIZE, "der_alpha": DER_ALPHA, "derpp_beta": DERPP_BETA,
                        "mir_candidates": MIR_CANDIDATES, "test_per_exp": a.test_per_exp, "seed": a.seed},
           "environment": C.environment(device), "strategies": results, "table": table}
    print(f"## Small-batch overhead ({a.data}, batch {a.batch_size}, lifelong / plain wall time, "
          f"{a.pairs} alternating pairs, {a.iterations} iterations x {N_EXP} experiences, {device})\n")
    print(table)
    C.write_json(a.out, out)
    return out


if __name__ == "__main__":
    main()
