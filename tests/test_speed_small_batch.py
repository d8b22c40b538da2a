"""Small-batch speed work (issue 14): the fast paths compute exactly what the general ones do,
and the small-batch benchmark's hand-written loop is the same computation as lifelong's."""
import random
import sys
from pathlib import Path

import pytest
import torch

from lifelong import buffers
from lifelong.buffers import ReservoirBuffer, reservoir_slots

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))


def _slots(monkeypatch, small: int, n_seen: int, n: int, capacity: int, seed: int):
    monkeypatch.setattr(buffers, "_SMALL", small)
    g = torch.Generator().manual_seed(seed)
    out = reservoir_slots(n_seen, n, capacity, g)
    return out, g.get_state()


def test_reservoir_small_batch_path_equals_the_tensor_path(monkeypatch):
    rng = random.Random(0)
    cases = [(0, 10, 500), (495, 10, 500), (10_000, 10, 500), (3, 64, 5), (2**40 + 7, 33, 50), (0, 1, 1)]
    cases += [(rng.choice([0, rng.randint(0, 40), rng.randint(0, 10**7)]), rng.randint(1, 64),
               rng.choice([1, 2, 5, 10, 50, 500])) for _ in range(300)]
    for n_seen, n, cap in cases:
        seed = rng.randint(0, 10**9)
        (s_py, r_py), g_py = _slots(monkeypatch, 64, n_seen, n, cap, seed)
        (s_t, r_t), g_t = _slots(monkeypatch, 0, n_seen, n, cap, seed)
        assert torch.equal(s_py, s_t) and torch.equal(r_py, r_t), (n_seen, n, cap)
        assert s_py.dtype == s_t.dtype == r_py.dtype == r_t.dtype == torch.long
        assert torch.equal(g_py, g_t)  # the same draws: later insertions and replays are unchanged


def test_reservoir_small_batch_keeps_the_latest_of_two_rows_on_one_slot(monkeypatch):
    # a full buffer of 1 slot: every row whose draw lands in slot 0 replaces it, the last one stays
    monkeypatch.setattr(buffers, "_SMALL", 64)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hits = [k for k in range(8) if int(u[k] * (100 + k + 1)) < 1]
    slots, rows = reservoir_slots(100, 8, 1, g)
    assert slots.tolist() == ([0] if hits else []) and rows.tolist() == hits[-1:]


def test_buffer_fill_is_the_same_whether_inserted_in_small_or_large_batches(monkeypatch):
    x, y = torch.randn(300, 3), torch.randint(0, 5, (300,))
    stored = []
    for small in (64, 0):
        monkeypatch.setattr(buffers, "_SMALL", small)
        b = ReservoirBuffer(40, seed=3)
        for s in range(0, 300, 10):
            b.add(x[s:s + 10], y[s:s + 10])
        stored.append(b.get())
    assert all(torch.equal(stored[0][k], stored[1][k]) for k in ("x", "y", "t"))


@pytest.mark.parametrize("name", ["finetune", "er", "er_ace", "derpp", "mir"])
def test_small_batch_benchmark_plain_loop_computes_the_same_numbers(name, tmp_path):
    small_batch = pytest.importorskip("small_batch")
    out = small_batch.main(["--iterations", "4", "--pairs", "1", "--test-per-exp", "20", "--strategies", name,
                            "--out", str(tmp_path / "s.json"), "--quiet"])
    chk = out["strategies"][name]["check"]
    assert chk["steps"] == 20
    assert chk["losses_identical"] and chk["accuracy_identical"], chk
