"""The one places: atomic writes (lifelong.io) and summary statistics (lifelong.stats), as used by
reproduce, report and the feature cache."""
import json

import pytest

from lifelong import stats
from lifelong.io import atomic_open, atomic_write_json


def test_atomic_open_writes_in_pieces_and_replaces_the_target(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    with atomic_open(target) as f:
        f.write(b"abc")
        f.write(memoryview(b"def"))
        assert not target.exists()  # nothing visible until the block ends
    assert target.read_bytes() == b"abcdef"
    with atomic_open(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new" and [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_atomic_open_leaves_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "f.json"
    atomic_write_json(target, {"a": 1}, indent=1)
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write(b"half a fi")
            raise RuntimeError("crash while writing")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # the temporary sibling is gone
    assert target.read_text() == json.dumps({"a": 1}, indent=1)


def test_mean_and_mean_std_by_hand():
    assert stats.mean([0.5, 0.6, 0.7]) == pytest.approx(0.6)
    assert stats.mean([1, 2]) == 1.5
    m, s = stats.mean_std([0.5, 0.6, 0.7])
    assert (m, s) == (pytest.approx(0.6), pytest.approx(0.1))  # sample standard deviation (n - 1)
    assert stats.format_mean_std([0.5, 0.6, 0.7], scale=100) == "60.00 ± 10.00"
    assert stats.format_mean_std([0.5], scale=100, digits=1) == "50.0"
    with pytest.raises(ValueError):
        stats.mean([])
