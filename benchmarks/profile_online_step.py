"""Where the time of one MIR or OnPro step goes at batch 10 (issue 14): a phase profile.

The setting is ``benchmarks/small_batch.py``'s (split digits, MLP 400-400, SGD lr 0.05, batch
10, the strategies as ``small_batch.make_strategy`` builds them). Each strategy first trains the
whole stream (100 iterations per experience, untimed) so that its memory is full and all ten
classes are active; then ``--steps`` steps on the last experience's data are run by a loop that
calls the hooks exactly as ``lifelong.training.train`` does (augment, forward, loss, penalty,
zero_grad, backward, before_step, optimizer step, after_step).

Two measurements, in one process so that their ratios share the machine's load:

- per-step CPU time (``time.process_time``) of ``--steps`` uninstrumented steps, ``--reps``
  repetitions interleaved over the strategies, median; besides ``er``, ``mir`` and ``onpro`` it
  times ``er-equal``: ER replaying as many rows per step as OnPro pushes through the backbone
  (counted, not assumed), the "equal-work" reference: how much of OnPro's cost is its own FLOPs;
- a phase table: the wrapped functions below (each labelled with what it does) are timed,
  exclusive of the wrapped functions they call, and reported per step under the path of
  wrapped callers ("MIR scoring > forward" is a model forward inside MIR's scoring). What no
  wrapper covers is the remainder: hook glue, loss arithmetic, Python;
- MIR's scoring (``interference_scores``) in its current form against the alternatives
  considered (the virtual weights in two foreach ops, one forward for incoming and candidate
  rows, swapping ``Parameter.data`` instead of ``functional_call``): ms per call and the
  largest difference in the scores;
- OnPro: whole runs of small_batch.py's OnPro (100 iterations x 5 experiences, evaluation
  included) with the current code and with the former computation (kept as the reference in
  tests/test_online_step_speed.py), alternating.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/profile_online_step.py --steps 300 --reps 5
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (sets the import path for lifelong)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.func import functional_call  # noqa: E402

import small_batch as S  # noqa: E402
from lifelong import augment as aug_mod  # noqa: E402
from lifelong.models import build_model  # noqa: E402
from lifelong.strategies import mir as mir_mod  # noqa: E402
from lifelong.strategies import onpro as onpro_mod  # noqa: E402
from lifelong.strategies.base import Batch  # noqa: E402
from lifelong.strategies.er import ER  # noqa: E402
from lifelong.training import train  # noqa: E402


class Phases:
    """Exclusive time of wrapped callables, keyed by the path of wrapped callers."""

    def __init__(self):
        self.time = defaultdict(float)
        self.calls = defaultdict(int)
        self.stack: list[list] = []  # [path, start, time spent in wrapped children]
        self.on = False
        self.undo: list[tuple] = []

    def restore(self) -> None:
        """Put every wrapped callable back (in reverse order)."""
        for owner, attr, fn in reversed(self.undo):
            setattr(owner, attr, fn)
        self.undo = []

    def wrap(self, owner, attr: str, label: str):
        fn = getattr(owner, attr, None)
        if fn is None:  # not in this version of the code
            return None
        self.undo.append((owner, attr, fn))

        def wrapped(*a, **k):
            if not self.on:
                return fn(*a, **k)
            path = (self.stack[-1][0] + " > " if self.stack else "") + label
            frame = [path, time.perf_counter(), 0.0]
            self.stack.append(frame)
            try:
                return fn(*a, **k)
            finally:
                self.stack.pop()
                spent = time.perf_counter() - frame[1]
                self.time[path] += spent - frame[2]
                self.calls[path] += 1
                if self.stack:
                    self.stack[-1][2] += spent

        setattr(owner, attr, wrapped)
        return fn


def build(name: str, P: dict, iterations: int, rows: int | None = None):
    """A strategy trained on the whole stream (untimed), its optimizer and the last experience."""
    stream, device = P["stream"], P["device"]
    model = build_model("mlp", stream.input_shape, stream.n_classes, "class", hidden=list(S.HIDDEN))
    model.load_state_dict(P["init"])
    model.to(device)
    strategy = (ER(mem_size=S.MEM_SIZE, replay_batch_size=rows) if name == "er-equal" else S.make_strategy(name))
    strategy.setup(model, device, P["seed"])
    train(stream, strategy, lambda p: torch.optim.SGD(p, lr=S.LR), batch_size=10, iterations=iterations,
          seed=P["seed"], eval_batch_size=1000)
    model.train()
    opt = torch.optim.SGD(strategy.param_groups(), lr=S.LR)
    strategy.context.optimizer = opt
    return strategy, opt, stream.experiences[-1].train


def steps(strategy, opt, data, n: int, batch_size: int, seed: int) -> None:
    """``n`` training steps as lifelong.training.train takes them (fp32, no clipping)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        idx = torch.randperm(len(data), generator=g)[:batch_size]
        STEP.fn(strategy, opt, Batch(data.x[idx], data.y[idx], torch.zeros(len(idx), dtype=torch.long), index=idx))


def one_step(strategy, opt, batch) -> None:
    batch = strategy.augment(batch)
    logits = strategy.forward(batch)
    loss = strategy.loss(logits, batch)
    penalty = strategy.penalty(logits, batch)
    if not (isinstance(penalty, float) and penalty == 0.0):
        loss = loss + penalty
    opt.zero_grad(set_to_none=True)
    loss.backward()
    strategy.before_step(batch)
    opt.step()
    strategy.after_step(batch, logits.detach())
    strategy.context.step += 1


STEP = SimpleNamespace(fn=one_step)  # the profile wraps it: its exclusive time is the loop's own remainder


def instrument(ph: Phases, strategy, opt) -> dict:
    """Wrap the pieces of a step; returns a counter of the rows that go through the backbone."""
    model, rows = strategy.model, {"n": 0}
    backbone_forward = model.backbone.forward

    def counted(x):
        rows["n"] += len(x)
        return backbone_forward(x)

    model.backbone.forward = counted
    ph.wrap(STEP, "fn", "step")  # its exclusive time: the loop's own remainder
    ph.wrap(model.backbone, "forward", "backbone forward")
    ph.wrap(model.head, "forward", "head forward")
    ph.wrap(torch.Tensor, "backward", "backward")
    ph.wrap(torch.autograd, "grad", "virtual backward")
    ph.wrap(opt, "step", "optimizer step")
    ph.wrap(opt, "zero_grad", "zero_grad")
    ph.wrap(strategy, "augment", "augment hook")
    ph.wrap(strategy, "forward", "forward hook")
    ph.wrap(strategy, "loss", "loss hook")
    ph.wrap(strategy, "after_step", "insertion (after_step)")
    ph.wrap(strategy.buffer_, "sample", "memory sampling")
    if strategy.name == "mir":
        ph.wrap(mir_mod, "interference_scores", "MIR scoring")
        ph.wrap(mir_mod, "functional_call", "virtual forward (functional_call)")
    if strategy.name == "onpro":
        ph.wrap(aug_mod.Augment, "__call__", "augmentation")
        ph.wrap(aug_mod.Augment, "draw", "augmentation (draws)")
        ph.wrap(aug_mod.Augment, "apply", "augmentation")
        ph.wrap(strategy, "_lam", "mixup weights")
        ph.wrap(onpro_mod, "supcon_loss", "instance contrastive loss")
        ph.wrap(onpro_mod, "ope_loss", "OPE loss")
        ph.wrap(strategy, "feedback", "APF feedback")
        ph.wrap(strategy.proj_, "forward", "projection head")
    return rows


# -- MIR's scoring: the alternatives measured (docs/performance.md) ------------------------------------
def _scores_foreach(model, x, y, cx, cy, lr):
    """The virtual weights ``p - lr * g`` in two foreach ops instead of two ops per tensor."""
    names, params = zip(*model.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    with torch.no_grad():
        virtual = dict(zip(names, torch._foreach_sub([p.detach() for p in params], torch._foreach_mul(grads, lr))))
        before = F.cross_entropy(model(cx), cy, reduction="none")
        return F.cross_entropy(functional_call(model, virtual, (cx,)), cy, reduction="none") - before


def _scores_one_forward(model, x, y, cx, cy, lr):
    """Incoming and candidate rows in one forward (the candidates' "before" from it), the
    virtual gradient from the incoming rows' loss only: the backward then spans all rows."""
    names, params = zip(*model.named_parameters())
    out = model(torch.cat([x, cx]))
    grads = torch.autograd.grad(F.cross_entropy(out[:len(y)], y), params)
    with torch.no_grad():
        virtual = dict(zip(names, torch._foreach_sub([p.detach() for p in params], torch._foreach_mul(grads, lr))))
        before = F.cross_entropy(out[len(y):], cy, reduction="none")
        return F.cross_entropy(functional_call(model, virtual, (cx,)), cy, reduction="none") - before


def _scores_swap_data(model, x, y, cx, cy, lr):
    """The virtual weights swapped in through ``Parameter.data`` instead of ``functional_call``."""
    params = list(model.parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    with torch.no_grad():
        virtual = torch._foreach_sub([p.detach() for p in params], torch._foreach_mul(grads, lr))
        before = F.cross_entropy(model(cx), cy, reduction="none")
        orig = [p.data for p in params]
        try:
            for p, v in zip(params, virtual):
                p.data = v
            out = model(cx)
        finally:
            for p, o in zip(params, orig):
                p.data = o
        return F.cross_entropy(out, cy, reduction="none") - before


def mir_variants(P: dict, iterations: int, calls: int, log) -> dict:
    """ms per call of MIR's scoring in its current form and the alternatives, on MIR's trained
    model and memory; the largest score difference from the current form."""
    strategy, _, data = build("mir", P, iterations)
    model, g = strategy.model, torch.Generator().manual_seed(0)
    x, y = data.x[:10], data.y[:10]
    cx, cy, _ = strategy.buffer_.sample(S.MIR_CANDIDATES, g)
    t = torch.zeros(len(cy), dtype=torch.long)
    forms = {"current (lifelong.strategies.mir)":
             lambda: mir_mod.interference_scores(model, x, y, t[:10], cx, cy, t, S.LR),
             "virtual weights in two foreach ops": lambda: _scores_foreach(model, x, y, cx, cy, S.LR),
             "one forward for incoming + candidates": lambda: _scores_one_forward(model, x, y, cx, cy, S.LR),
             "Parameter.data swap, no functional_call": lambda: _scores_swap_data(model, x, y, cx, cy, S.LR)}
    ref = forms["current (lifelong.strategies.mir)"]()
    times = {name: [] for name in forms}
    for rep in range(6):  # interleaved rounds; the first warms up and is dropped
        for name, f in forms.items():
            c0 = time.process_time()
            for _ in range(calls):
                f()
            times[name].append(1e3 * (time.process_time() - c0) / calls)
    out = {name: {"ms_per_call": statistics.median(v[1:]), "ms_per_call_rounds": v[1:],
                  "max_abs_diff": float((forms[name]() - ref).abs().max())} for name, v in times.items()}
    log("MIR scoring variants: " + ", ".join(f"{k} {v['ms_per_call']:.3f} ms" for k, v in out.items()))
    return out


# -- OnPro: the former computation against the current one, whole runs ------------------------------
def onpro_ab(P: dict, iterations: int, runs: int, log) -> dict:
    """CPU seconds of small_batch.py's lifelong OnPro run (5 experiences x ``iterations``, with
    evaluation) with the current OnPro and with the former computation that
    tests/test_online_step_speed.py keeps as its reference (one augmentation call, backbone
    forward and projection per view, APF's per-pick loop); alternating, first round dropped."""
    sys.path.insert(0, str(C.ROOT / "tests"))
    from test_online_step_speed import _ReferenceOnPro
    from lifelong.strategies.onpro import OnPro
    forms, times = {"former": _ReferenceOnPro, "current": OnPro}, {"former": [], "current": []}
    make = S.make_strategy
    try:
        for r in range(runs + 1):
            for name in (("former", "current") if r % 2 else ("current", "former")):
                S.make_strategy = lambda _n, cls=forms[name]: cls()
                go = S.lifelong_run("onpro", P, iterations, 10)
                c0 = time.process_time()
                go()
                times[name].append(time.process_time() - c0)
            log(f"OnPro A/B round {r + 1}/{runs + 1}: former {times['former'][-1]:.3f}s, "
                f"current {times['current'][-1]:.3f}s")
    finally:
        S.make_strategy = make
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    return {"cpu_s": times, "median_cpu_s": med, "current_over_former": med["current"] / med["former"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--strategies", default="er,mir,onpro")
    ap.add_argument("--steps", type=int, default=300, help="timed steps per repetition")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=100, help="untimed training per experience first")
    ap.add_argument("--mir-calls", type=int, default=500, help="calls per form of MIR's scoring (0: skip)")
    ap.add_argument("--onpro-ab", type=int, default=5, help="whole OnPro runs per form, former vs current (0: skip)")
    a, log, device = C.parse_common(ap, argv)
    P = S.prepare("digits", device, a.seed, 200)
    names = a.strategies.split(",")
    profiles, rows_per_step = {}, {}
    for name in names:  # the phase profiles (instrumented; their totals are inflated by the wrappers)
        strategy, opt, data = build(name, P, a.iterations)
        ph = Phases()
        rows = instrument(ph, strategy, opt)
        steps(strategy, opt, data, 20, 10, a.seed)  # warm-up
        rows["n"], ph.on = 0, True
        steps(strategy, opt, data, a.steps, 10, a.seed + 1)
        ph.on = False
        ph.restore()
        rows_per_step[name] = rows["n"] / a.steps
        profiles[name] = {k.removeprefix("step > "): {"ms_per_step": 1e3 * v / a.steps,
                                                      "calls_per_step": ph.calls[k] / a.steps}
                          for k, v in sorted(ph.time.items(), key=lambda kv: -kv[1])}
        log(f"{name}: profiled, {rows_per_step[name]:.1f} backbone rows per step")
    if "onpro" in names and "er" in names:
        names.append("er-equal")
    equal_rows = round(rows_per_step.get("onpro", 20)) - 10
    built = {n: build(n, P, a.iterations, equal_rows if n == "er-equal" else None) for n in names}
    cpu = {n: [] for n in names}
    for r in range(a.reps):  # uninstrumented, interleaved
        for n in names:
            strategy, opt, data = built[n]
            c0 = time.process_time()
            steps(strategy, opt, data, a.steps, 10, a.seed + 2 + r)
            cpu[n].append(time.process_time() - c0)
        log(f"rep {r + 1}/{a.reps}: " + ", ".join(f"{n} {1e3 * cpu[n][-1] / a.steps:.3f} ms" for n in names))
    ms = {n: 1e3 * statistics.median(v) / a.steps for n, v in cpu.items()}
    out = {"benchmark": "profile_online_step",
           "settings": {"data": "digits", "hidden": list(S.HIDDEN), "lr": S.LR, "batch_size": 10,
                        "steps": a.steps, "reps": a.reps, "mem_size": S.MEM_SIZE, "seed": a.seed,
                        "er_equal_replay_rows": equal_rows},
           "environment": C.environment(device),
           "cpu_ms_per_step": ms, "vs_er": {n: ms[n] / ms["er"] for n in names} if "er" in ms else {},
           "cpu_s": cpu, "backbone_rows_per_step": rows_per_step, "phases": profiles}
    print("## CPU time per step (median), relative to er\n")
    print(C.markdown_table(["strategy", "ms/step", "/ er", "backbone rows/step"],
                           [[n, ms[n], out["vs_er"].get(n, "-"), rows_per_step.get(n, 10 + equal_rows)]
                            for n in names]))
    for name, prof in profiles.items():
        total = sum(v["ms_per_step"] for v in prof.values())
        print(f"\n## {name}: phases (exclusive ms per step, instrumented total {total:.3f} ms)\n")
        print(C.markdown_table(["phase", "ms/step", "calls/step", "share"],
                               [[k, v["ms_per_step"], v["calls_per_step"], f"{v['ms_per_step'] / total:.0%}"]
                                for k, v in prof.items()]))
    if "mir" in names and a.mir_calls:
        out["mir_scoring_variants"] = mir_variants(P, a.iterations, a.mir_calls, log)
        print("\n## MIR's scoring (50 candidates, 10 incoming): forms measured\n")
        print(C.markdown_table(["form", "ms/call", "max |score - current|"],
                               [[k, v["ms_per_call"], f"{v['max_abs_diff']:.1e}"]
                                for k, v in out["mir_scoring_variants"].items()]))
    if "onpro" in names and a.onpro_ab:
        out["onpro_former_vs_current"] = ab = onpro_ab(P, a.iterations, a.onpro_ab, log)
        print(f"\n## OnPro, whole small_batch.py runs: former {ab['median_cpu_s']['former']:.3f} s, current "
              f"{ab['median_cpu_s']['current']:.3f} s of CPU (current / former {ab['current_over_former']:.3f})")
    C.write_json(a.out, out)
    return out


if __name__ == "__main__":
    main()
