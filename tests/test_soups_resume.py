"""``lifelong soup`` resumes an interrupted soup (lifelong.soups: soup_spec.json, pieces = a .pt
and its .json): finished pieces are reused, half-written ones computed again, and the result
is identical to an uninterrupted soup's; a folder of another soup is refused, untouched."""
import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lifelong.soups as soups_module
from lifelong.errors import ConfigError, DivergenceError
from lifelong.runfolder import RunFolderError
from lifelong.soups import _locked, _train_and_save, sparse_model_soups

from test_soups import TINY, load

SOUP = {"sparsities": [0.5, 0.8], "retrains": 2}  # runs: dense, 2 retrains, then 2 retrains + IMP
PIECES = ["dense.pt", "cycle1/mask.pt", "cycle1/retrain0.pt", "cycle1/retrain1.pt", "cycle1/soup.pt",
          "cycle2/mask.pt", "cycle2/imp_mask.pt", "cycle2/retrain0.pt", "cycle2/retrain1.pt", "cycle2/imp.pt",
          "cycle2/soup.pt"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "soup"
    sparse_model_soups(copy.deepcopy(TINY), out, **SOUP)
    return out


def counting(monkeypatch, out, fail_at=None):
    """Replace the executor's entry by one that records each run's state file (and raises at the
    ``fail_at``-th call, as a crash would)."""
    calls = []

    def train_and_save(item):
        calls.append(Path(item["state_path"]).relative_to(out.resolve()).as_posix())
        if len(calls) == fail_at:
            raise RuntimeError("simulated crash")
        return _train_and_save(item)

    monkeypatch.setattr(soups_module, "_train_and_save", train_and_save)
    return calls


def same_states(a, b):
    for name in PIECES:
        sa, sb = load(a / name), load(b / name)
        assert sa.keys() == sb.keys(), name
        assert all(torch.equal(sa[k], sb[k]) if torch.is_tensor(sa[k]) else sa[k] == sb[k] for k in sa), name


def snapshot(folder):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_soup_crashed_after_the_first_retrain_resumes_identically_without_rerunning(tmp_path, monkeypatch,
                                                                                    reference):
    out = tmp_path / "soup"
    calls = counting(monkeypatch, out, fail_at=3)  # dense, cycle 1's retrain 0, then cycle 1's retrain 1 crashes
    with pytest.raises(RuntimeError, match="simulated crash"):
        sparse_model_soups(copy.deepcopy(TINY), out, **SOUP)
    assert not (out / "soups.json").exists() and (out / "cycle1" / "retrain0.json").exists()
    calls = counting(monkeypatch, out)
    res = sparse_model_soups(copy.deepcopy(TINY), out, **SOUP)  # the same soup into the same folder
    assert calls == ["cycle1/retrain1.pt", "cycle2/retrain0.pt", "cycle2/retrain1.pt", "cycle2/imp.pt"]
    assert (out / "soups.json").read_bytes() == (reference / "soups.json").read_bytes()
    assert (out / "soups.md").read_bytes() == (reference / "soups.md").read_bytes()
    assert res == json.loads((reference / "soups.json").read_text())
    same_states(out, reference)

    calls.clear()
    before = {name: (out / name).stat().st_mtime_ns for name in PIECES}
    sparse_model_soups(copy.deepcopy(TINY), out, **SOUP)  # finished: every piece reused, none rewritten
    assert calls == [] and before == {name: (out / name).stat().st_mtime_ns for name in PIECES}
    assert (out / "soups.json").read_bytes() == (reference / "soups.json").read_bytes()


@pytest.mark.parametrize("change, differs", [
    ({"retrains": 3}, "retrains, values"),
    ({"sparsities": [0.5, 0.9]}, "schedule"),
    ({"config": {"train": {"iterations": 9}}}, "config.train.iterations"),
])
def test_another_soup_into_the_folder_is_refused_untouched(reference, change, differs):
    before = snapshot(reference)
    config = copy.deepcopy(TINY)
    kwargs = dict(SOUP)
    for key, value in change.items():
        if key == "config":
            config["train"].update(value["train"])
        else:
            kwargs[key] = value
    with pytest.raises(ConfigError) as err:
        sparse_model_soups(config, reference, **kwargs)
    assert str(err.value) == (f"soup folder {reference} holds another soup (its soup_spec.json differs in {differs}); "
                              "nothing was overwritten. Choose another --out, remove it yourself, or resume it "
                              "with the settings that made it")
    assert snapshot(reference) == before


def test_half_written_pieces_are_computed_again_not_loaded(tmp_path, monkeypatch, reference):
    out = tmp_path / "soup"
    shutil.copytree(reference, out)
    (out / "cycle1" / "retrain1.json").unlink()  # a .pt without its .json: its run was cut before the .json
    data = (out / "cycle2" / "imp.pt").read_bytes()
    (out / "cycle2" / "imp.pt").write_bytes(data[: len(data) // 2])  # a truncated .pt (its .json is there)
    data = (out / "cycle1" / "soup.pt").read_bytes()
    (out / "cycle1" / "soup.pt").write_bytes(data[:100])
    (out / "cycle2" / "mask.json").unlink()
    (out / "soups.json").unlink()
    calls = counting(monkeypatch, out)
    averaged = []
    real_average = soups_module.average_states
    monkeypatch.setattr(soups_module, "average_states", lambda states: averaged.append(1) or real_average(states))
    sparse_model_soups(copy.deepcopy(TINY), out, **SOUP)
    assert calls == ["cycle1/retrain1.pt", "cycle2/imp.pt"]  # exactly the two broken runs
    assert averaged == [1]  # cycle 1's soup computed again; cycle 2's (finished) loaded
    assert (out / "soups.json").read_bytes() == (reference / "soups.json").read_bytes()
    same_states(out, reference)
    assert (out / "cycle2" / "mask.json").read_bytes() == (reference / "cycle2" / "mask.json").read_bytes()


def test_killed_halfway_through_writing_a_retrain_resumes_identically(tmp_path, reference):
    """A real ``kill -9`` (failpoint ``atomic-write``) in the middle of writing cycle 1's second
    retrain (atomic writes: the spec, dense .pt and .json, mask .pt and .json, retrain 0's .pt
    and .json, then retrain 1's .pt): the rerun removes the half-written temporary file and
    finishes with the uninterrupted soup's numbers."""
    out = tmp_path / "soup"
    script = ("import json, sys; from lifelong.soups import sparse_model_soups; "
              "sparse_model_soups(json.loads(sys.argv[1]), sys.argv[2], sparsities=[0.5, 0.8], retrains=2)")
    env = dict(os.environ, LIFELONG_FAILPOINT="atomic-write:8", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(TINY), str(out)], env=env, capture_output=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert [p.name for p in (out / "cycle1").glob(".*.tmp-*")] and (out / "cycle1" / "retrain0.json").exists()
    assert not (out / "cycle1" / "retrain1.pt").exists()
    sparse_model_soups(copy.deepcopy(TINY), out, **SOUP)
    assert not list(out.rglob(".*.tmp-*"))
    assert (out / "soups.json").read_bytes() == (reference / "soups.json").read_bytes()
    same_states(out, reference)


def test_a_soup_that_diverges_before_anything_is_computed_leaves_the_folder_free(tmp_path):
    bad = copy.deepcopy(TINY)
    bad["train"]["lr"] = 1e30
    with pytest.raises(DivergenceError, match="train.lr"):
        sparse_model_soups(bad, tmp_path / "new", sparsities=[0.5], retrains=1)
    assert not (tmp_path / "new").exists()  # the corrected soup may use the folder
    (tmp_path / "empty").mkdir()
    with pytest.raises(DivergenceError):
        sparse_model_soups(bad, tmp_path / "empty", sparsities=[0.5], retrains=1)
    assert (tmp_path / "empty").is_dir() and not list((tmp_path / "empty").iterdir())


def test_a_second_process_on_the_folder_is_refused(reference):
    before = snapshot(reference)
    with _locked(reference):  # another process working in it (flock: a second open file conflicts too)
        with pytest.raises(RunFolderError, match=f"soup folder {reference} is being written by another process"):
            sparse_model_soups(copy.deepcopy(TINY), reference, **SOUP)
    assert snapshot(reference) == before


def test_a_soup_resumes_with_other_execution_settings(monkeypatch, reference):
    # as run folders do, device and threads do not make it another soup
    config = copy.deepcopy(TINY)
    config["threads"], config["device"] = 2, "cpu"
    calls = counting(monkeypatch, reference)
    sparse_model_soups(config, reference, **SOUP)
    assert calls == []
