"""Every registered strategy resumes bit for bit: interrupted at a checkpoint (an experience
boundary or inside an experience), restored into a fresh model and strategy, it ends with
exactly the numbers of a run never interrupted (the conformance suite of checkpointing)."""
import io

import numpy as np
import pytest
import torch

from lifelong.data import digits
from lifelong.models import build_model
from lifelong.strategies import STRATEGIES
from lifelong.streams import split_stream
from lifelong.training import train


class InMemory:
    """A checkpointer that keeps every snapshot, serialised and loaded as from disk."""

    def __init__(self, every):
        self.every, self.snaps = every, []
        self.saves, self.time_s = 0, 0.0  # what lifelong.runner.run reports of a checkpointer

    def due(self, step):
        return step % self.every == 0

    def save(self, snap):
        buf = io.BytesIO()
        torch.save(snap, buf)
        buf.seek(0)
        self.snaps.append(torch.load(buf, weights_only=True))
        self.saves += 1


def _small(s):
    for attr, value in (("mem_size", 40), ("mem_per_class", None), ("ewc_fisher_samples", 64),
                        ("acil_buffer_size", 256), ("gacil_buffer_size", 256)):
        if hasattr(s, attr):
            setattr(s, attr, value)
    return s


def _fit(name, scenario, checkpointer=None, resume=None, reset=True, precision="fp32"):
    stream = split_stream(digits(), scenario=scenario, n_experiences=5, seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", stream.input_shape, stream.n_classes, scenario, hidden=[32])
    strategy = _small(STRATEGIES[name]()).setup(model, "cpu", 0)
    return train(stream, strategy, lambda p: torch.optim.Adam(p, lr=1e-2), batch_size=16, iterations=8, seed=0,
                 eval_every=3, eval_subsample=50, checkpointer=checkpointer, resume=resume, reset_optimizer=reset,
                 precision=precision)


def _same(a, b):
    return (a.task_agnostic_matrix == b.task_agnostic_matrix and a.task_aware_matrix == b.task_aware_matrix
            and a.losses == b.losses and a.boundaries == b.boundaries and a.initial_agnostic == b.initial_agnostic
            and np.array_equal(a.curve[0], b.curve[0]) and np.array_equal(a.curve[1], b.curve[1], equal_nan=True))


def _cases():
    for name in sorted(STRATEGIES):
        for scenario in STRATEGIES[name].scenarios:
            yield name, scenario


@pytest.mark.parametrize("name, scenario", list(_cases()))
def test_every_strategy_resumes_bit_for_bit(name, scenario):
    ck = InMemory(5)
    ref = _fit(name, scenario, ck, reset=scenario != "domain")  # domain-IL: one optimizer over the stream
    assert ck.snaps, "no checkpoint was taken"
    boundary = [s for s in ck.snaps if s["next"][1] == 0]
    inside = [s for s in ck.snaps if s["next"][1] > 0]
    for snap in (boundary[:1] + inside[:1] + inside[-1:] + boundary[-1:]):
        res = _fit(name, scenario, resume=snap, reset=scenario != "domain")
        assert _same(res, ref), f"resumed at {snap['next']} differs"


def test_fp16_scaler_state_resumes():
    ck = InMemory(7)
    ref = _fit("er", "class", ck, precision="fp16")
    snap = [s for s in ck.snaps if s["next"][1] > 0][2]
    assert snap["current"]["scaler"] is not None
    assert _same(_fit("er", "class", resume=snap, precision="fp16"), ref)


def test_a_resumed_run_counts_the_training_time_before_its_interruption(monkeypatch):
    """``train_time_s`` of a run resumed inside an experience includes the time that experience had
    run before the interruption (the snapshot carries it): only the work done after the last
    snapshot, lost with the interruption, goes uncounted. A clock that moves only when a checkpoint is saved (100 s a save) makes it
    exact: resumed from a snapshot, with nothing saved after, the run has trained for 100 s per
    save made inside an experience before that snapshot."""
    import lifelong.training as training

    clock = [0.0]
    monkeypatch.setattr(training.time, "perf_counter", lambda: clock[0])

    class Ticking(InMemory):
        def save(self, snap):
            super().save(snap)
            clock[0] += 100.0

    ck = Ticking(3)
    _fit("finetune", "class", ck)
    inside = [i for i, s in enumerate(ck.snaps) if s["current"] is not None]
    # the second save inside an experience: 100 s of it had passed in the experience before it
    i = next(i for a, i in zip(inside, inside[1:]) if ck.snaps[a]["next"][0] == ck.snaps[i]["next"][0])
    assert ck.snaps[i]["current"]["elapsed_s"] == 100.0
    res = _fit("finetune", "class", resume=ck.snaps[i])
    assert res.train_time_s == 100.0 * sum(1 for j in inside if j < i)
