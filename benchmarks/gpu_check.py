"""Check the GPU path and time it: ready for when a GPU is lent.

For a few strategies (fine-tuning, ER, EWC, LwF, iCaRL and a task-IL run with per-task heads),
one short Split MNIST run per precision (fp32, bf16, fp16 with a gradient scaler) and, with
``--compile``, one with ``torch.compile`` (inductor). After each run every parameter and buffer of
the model, and every tensor of the strategy's state (buffers, Fisher, old models, exemplars),
must lie on the GPU; the script fails (exit 1) naming the first tensor that does not. It
prints a table (accuracy, wall time, time relative to fp32) and writes JSON with ``--out``.

    python benchmarks/gpu_check.py --device cuda --out benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --device cpu --quick       # the same checks on the CPU

On a machine without CUDA, ``--device cuda`` exits with a message (status 0 with
``--skip-without-gpu``, for scripts that run everywhere).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from _common import ROOT, parse_common  # noqa: F401  (sets the import path)

import torch  # noqa: E402

from lifelong.runner import build_strategy, make_optimizer_factory  # noqa: E402
from lifelong.config import parse_config  # noqa: E402
from lifelong.models import build_model  # noqa: E402
from lifelong.streams.presets import build_benchmark  # noqa: E402
from lifelong.training import train  # noqa: E402

CASES = [("finetune", "class"), ("er", "class"), ("ewc", "class"), ("lwf", "class"), ("icarl", "class"),
         ("er", "task"), ("lwf", "task")]


def tensors(obj, path="state"):
    """Every tensor inside nested dicts / lists / modules, with a readable path."""
    if torch.is_tensor(obj):
        yield path, obj
    elif isinstance(obj, torch.nn.Module):
        for k, v in obj.state_dict().items():
            yield f"{path}.{k}", v
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from tensors(v, f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors(v, f"{path}[{i}]")


def misplaced(model, strategy, device: torch.device) -> list[str]:
    bad = [f"model.{n}" for n, t in list(model.named_parameters()) + list(model.named_buffers())
           if t.device.type != device.type]
    bad += [p for p, t in tensors(strategy.extra_state(), "strategy") if t.device.type != device.type]
    return bad


def one(name: str, scenario: str, precision: str, compile_backend, device, iterations: int, benchmark: str):
    cfg = parse_config({"benchmark": {"name": benchmark, "scenario": scenario},
                        "strategy": {"name": name, **({"mem_size": 500} if name in ("er", "icarl") else {})},
                        "train": {"iterations": iterations, "precision": precision},
                        "eval": {"every": 10}, "device": str(device)})
    strategy = build_strategy(cfg)
    stream = build_benchmark(cfg.benchmark, 0).to(device)
    torch.manual_seed(0)
    model = build_model("mlp", stream.input_shape, stream.n_classes, stream.scenario).to(device)
    if compile_backend:
        model.backbone.compile(backend=compile_backend)
    strategy.setup(model, device, 0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = train(stream, strategy, make_optimizer_factory(cfg.train), iterations=iterations, batch_size=128,
                eval_every=10, eval_subsample=500, precision=precision)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return {"strategy": name, "scenario": scenario, "precision": precision, "compile": compile_backend or "-",
            "average_accuracy": res.metrics()["average_accuracy"], "wall_s": wall,
            "misplaced": misplaced(model, strategy, device)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations (a smoke test)")
    ap.add_argument("--compile", action="store_true", help="also one run per strategy with torch.compile (inductor)")
    ap.add_argument("--skip-without-gpu", action="store_true", help="exit 0 when --device cuda has no GPU")
    ap.add_argument("--benchmark", default="split-mnist")
    argv = sys.argv[1:] if argv is None else argv
    if "--skip-without-gpu" in argv and not torch.cuda.is_available() and "cuda" in " ".join(argv):
        print("no CUDA device here: GPU check skipped")
        return 0
    a, log, device = parse_common(ap, argv)
    iterations = 20 if a.quick else 300
    rows = []
    for name, scenario in CASES:
        variants = [("fp32", None), ("bf16", None), ("fp16", None)] + ([("fp32", "inductor")] if a.compile else [])
        for precision, backend in variants:
            row = one(name, scenario, precision, backend, device, iterations, a.benchmark)
            log(f"{name:9s} {scenario:5s} {precision} {row['compile']:8s} acc {100 * row['average_accuracy']:.2f} "
                f"{row['wall_s']:.2f} s" + (f"  MISPLACED: {row['misplaced'][:3]}" if row["misplaced"] else ""))
            rows.append(row)
    base = {(r["strategy"], r["scenario"]): r["wall_s"] for r in rows if r["precision"] == "fp32" and r["compile"] == "-"}
    print(f"| strategy | scenario | precision | compile | avg acc (%) | wall (s) | time / fp32 |\n|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["wall_s"] / base[(r["strategy"], r["scenario"])]
        print(f"| {r['strategy']} | {r['scenario']} | {r['precision']} | {r['compile']} | "
              f"{100 * r['average_accuracy']:.2f} | {r['wall_s']:.2f} | {ratio:.2f} |")
    bad = [(r["strategy"], r["scenario"], r["precision"], r["misplaced"][0]) for r in rows if r["misplaced"]]
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"device": str(device), "torch": torch.__version__, "gpu": torch.cuda.get_device_name()
                       if device.type == "cuda" else None, "iterations": iterations, "rows": rows}, f, indent=1)
    if bad:
        print(f"FAIL: tensors off the device, first: {bad[0]}")
        return 1
    print(f"OK: every model and strategy tensor on {device} in all {len(rows)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
