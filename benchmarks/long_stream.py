"""Long streams: 100 experiences with ER and a bounded buffer; training time and memory stay flat.

The stream: ``--experiences`` (100) small permuted-MNIST experiences (domain-incremental, the
10 digit outputs shared). Experience k holds ``--train-per-exp`` (600) training and
``--test-per-exp`` (100) test images, consecutive slices of one fixed shuffle of MNIST's
60,000 / 10,000 images (100 x 600 and 100 x 100 use every image exactly once), each with its
own fixed pixel permutation (experience 0 keeps the original images, as in
``lifelong.streams.permuted_stream``). ``permuted_stream(n_experiences=100)`` would hold 100
permuted copies of all of MNIST (about 22 GB as float32); this stream holds one copy (about
220 MB) and so measures the library, not the data.

The run: ``lifelong.training.train`` with ER (reservoir, ``--mem-size`` 1000 samples; every
step joins 128 stream and 128 replayed samples), an MLP 784-400-400-10, Adam (lr 1e-3),
``--iterations`` steps per experience. A monitor records, after every experience, the
training time of that experience (the loop's own ``train_time_s``), its end-of-experience
evaluation time, the process's resident memory (``/proc/self/statm``) and, on CUDA, the
allocator's memory. Targets: the mean training time of the last 10 experiences within 10 % of
the first 10, and memory bounded by the buffer (its size does not grow after it fills), not
by the stream length.

Evaluation is reported apart from training. lifelong evaluates the model on the test set of
every experience of the stream after each experience (the full accuracy matrix, future
experiences included, for forward transfer), so each evaluation costs the same within a run
but grows with the stream's length: O(T) per experience, O(T^2) for the run, by design.

    PYTHONPATH=src python benchmarks/long_stream.py --out benchmarks/results/long_stream.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (sets the import path for lifelong)

import torch  # noqa: E402

from lifelong.data import mnist  # noqa: E402
from lifelong.models import build_model  # noqa: E402
from lifelong.strategies.er import ER  # noqa: E402
from lifelong.streams import Experience, Split, Stream  # noqa: E402
from lifelong.training import train  # noqa: E402

HIDDEN = (400, 400)
LR = 1e-3


def light_permuted_stream(n_experiences: int, train_per_exp: int, test_per_exp: int, seed: int = 0) -> Stream:
    """``n_experiences`` small permuted-MNIST experiences, one copy of MNIST in memory (see the module doc)."""
    data = mnist()
    g = torch.Generator().manual_seed(seed)
    xtr, xte = data.train.to_float(), data.test.to_float()
    order_tr, order_te = torch.randperm(len(xtr), generator=g), torch.randperm(len(xte), generator=g)
    D = xtr[0].numel()
    exps = []
    for k in range(n_experiences):
        itr = order_tr[(k * train_per_exp + torch.arange(train_per_exp)) % len(xtr)]
        ite = order_te[(k * test_per_exp + torch.arange(test_per_exp)) % len(xte)]
        tr, te = Split(xtr[itr], data.train.y[itr]), Split(xte[ite], data.test.y[ite])
        if k > 0:
            p = torch.randperm(D, generator=g)
            tr = Split(tr.x.flatten(1)[:, p].reshape(tr.x.shape), tr.y)
            te = Split(te.x.flatten(1)[:, p].reshape(te.x.shape), te.y)
        empty = Split(tr.x[:0], tr.y[:0])
        exps.append(Experience(k, k, list(range(10)), tr, empty, te, name=f"permutation {k}"))
    del xtr, xte
    return Stream(f"light-permuted-mnist-{n_experiences}", "domain", exps, 10, tuple(data.train.input_shape))


def stream_bytes(stream: Stream) -> int:
    return sum(s.x.nbytes + s.y.nbytes for e in stream for s in (e.train, e.valid, e.test))


class _PerExperience:
    """Monitor: per-experience training time, evaluation time and memory."""

    def __init__(self, device: torch.device, strategy):
        self.device, self.strategy = device, strategy
        self.train_s, self.eval_s, self.rss, self.cuda_alloc, self.buffer_bytes = [], [], [], [], []
        self._train = self._eval = 0.0

    def start(self, exp, n_iters):
        pass

    def step(self, it, loss, continual_acc=None):
        pass

    def end(self, exp, result):
        self.train_s.append(result.train_time_s - self._train)
        self.eval_s.append(result.eval_time_s - self._eval)
        self._train, self._eval = result.train_time_s, result.eval_time_s
        self.rss.append(C.rss_bytes())
        if self.device.type == "cuda":
            self.cuda_alloc.append(torch.cuda.memory_allocated(self.device))
        b = self.strategy.buffer_
        self.buffer_bytes.append(sum(t.nbytes for t in (b.x, b.y, b.t) if t is not None))


def run(stream: Stream, device: torch.device, iterations: int, batch_size: int, mem_size: int, seed: int,
        monitor: bool = True):
    torch.manual_seed(seed)
    model = build_model("mlp", stream.input_shape, stream.n_classes, stream.scenario, hidden=list(HIDDEN)).to(device)
    strategy = ER(mem_size=mem_size, mem_policy="reservoir").setup(model, device, seed)
    mon = _PerExperience(device, strategy) if monitor else None
    res = train(stream, strategy, lambda p: torch.optim.Adam(p, lr=LR), batch_size=batch_size,
                iterations=iterations, seed=seed, monitor=mon)
    return res, mon, strategy


def _mean(v):
    return statistics.fmean(v) if v else 0.0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experiences", type=int, default=100)
    ap.add_argument("--train-per-exp", type=int, default=600)
    ap.add_argument("--test-per-exp", type=int, default=100)
    ap.add_argument("--iterations", type=int, default=10, help="training iterations per experience")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--mem-size", type=int, default=1000)
    ap.add_argument("--window", type=int, default=10, help="experiences averaged at each end of the stream")
    a, log, device = C.parse_common(ap, argv)
    stream = light_permuted_stream(a.experiences, a.train_per_exp, a.test_per_exp, a.seed).to(device)
    log(f"stream: {len(stream)} experiences, {stream_bytes(stream) / 2**20:.0f} MiB of tensors")
    # Warm-up (one-time costs: first optimizer, allocator), on a 2-experience stream, not measured.
    run(Stream("warm-up", "domain", stream.experiences[:2], 10, stream.input_shape), device, 5, a.batch_size,
        a.mem_size, a.seed, monitor=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = C.rss_bytes()
    res, mon, strategy = run(stream, device, a.iterations, a.batch_size, a.mem_size, a.seed)
    w = min(a.window, max(len(stream) // 2, 1))
    first, last = mon.train_s[:w], mon.train_s[-w:]
    summary = {
        "window": w,
        "train_s_first_mean": _mean(first), "train_s_last_mean": _mean(last),
        "train_last_over_first": _mean(last) / _mean(first),
        "train_s_first_median": statistics.median(first), "train_s_last_median": statistics.median(last),
        "eval_s_first_mean": _mean(mon.eval_s[:w]), "eval_s_last_mean": _mean(mon.eval_s[-w:]),
        "eval_share": res.eval_time_s / (res.train_time_s + res.eval_time_s),
        "rss_before_training_mib": rss0 / 2**20,
        "rss_first_mean_mib": _mean(mon.rss[:w]) / 2**20, "rss_last_mean_mib": _mean(mon.rss[-w:]) / 2**20,
        "rss_max_during_training_mib": max(mon.rss) / 2**20,
        "rss_growth_first_to_last_mib": (_mean(mon.rss[-w:]) - _mean(mon.rss[:w])) / 2**20,
        "buffer_mib": mon.buffer_bytes[-1] / 2**20,
        "buffer_size_constant": len(set(mon.buffer_bytes)) == 1,
        "buffer_samples_seen": strategy.buffer_.n_seen,
        "stream_tensors_mib": stream_bytes(stream) / 2**20,
        "peak_rss_process_mib": C.peak_rss_bytes() / 2**20,
        "final_average_accuracy": _mean(res.accuracy_matrix[-1]),
        "train_time_s": res.train_time_s, "eval_time_s": res.eval_time_s,
    }
    if device.type == "cuda":
        summary.update(cuda_alloc_first_mean_mib=_mean(mon.cuda_alloc[:w]) / 2**20,
                       cuda_alloc_last_mean_mib=_mean(mon.cuda_alloc[-w:]) / 2**20,
                       cuda_max_allocated_mib=torch.cuda.max_memory_allocated(device) / 2**20)
    s = summary
    rows = [
        ["training time per experience (s)", s["train_s_first_mean"], s["train_s_last_mean"],
         f"{s['train_last_over_first']:.3f} (target <= 1.10)"],
        ["evaluation time per experience (s)", s["eval_s_first_mean"], s["eval_s_last_mean"],
         f"{s['eval_s_last_mean'] / s['eval_s_first_mean']:.3f} (all {len(stream)} test sets every time)"],
        ["resident memory (MiB)", s["rss_first_mean_mib"], s["rss_last_mean_mib"],
         f"{s['rss_growth_first_to_last_mib']:+.1f} MiB"],
    ]
    if device.type == "cuda":
        rows.append(["CUDA allocated (MiB)", s["cuda_alloc_first_mean_mib"], s["cuda_alloc_last_mean_mib"],
                     f"{s['cuda_alloc_last_mean_mib'] - s['cuda_alloc_first_mean_mib']:+.1f} MiB"])
    table = C.markdown_table(["per experience (mean)", f"first {w}", f"last {w}", "last / first"], rows)
    notes = (f"Buffer: {s['buffer_mib']:.1f} MiB for {a.mem_size} samples, constant: {s['buffer_size_constant']}; "
             f"stream tensors {s['stream_tensors_mib']:.0f} MiB; RSS before training {s['rss_before_training_mib']:.0f} "
             f"MiB, max after an experience {s['rss_max_during_training_mib']:.0f} MiB. Evaluation share of the run: "
             f"{100 * s['eval_share']:.0f} %.")
    out = {"benchmark": "long_stream", "targets": {"train_last_over_first": 1.10},
           "settings": {k: getattr(a, k) for k in ("experiences", "train_per_exp", "test_per_exp", "iterations",
                                                   "batch_size", "mem_size", "seed")} | {"hidden": list(HIDDEN),
                                                                                         "lr": LR},
           "environment": C.environment(device), "summary": summary,
           "per_experience": {"train_s": mon.train_s, "eval_s": mon.eval_s, "rss_bytes": mon.rss,
                              "cuda_allocated_bytes": mon.cuda_alloc, "buffer_bytes": mon.buffer_bytes},
           "table": table, "notes": notes}
    print(f"## Long stream: {len(stream)} experiences, ER (reservoir, {a.mem_size} samples), "
          f"{a.iterations} iterations per experience, {device}\n")
    print(table + "\n\n" + notes)
    C.write_json(a.out, out)
    return out


if __name__ == "__main__":
    main()
