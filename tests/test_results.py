"""lifelong results (studies, trials, runs, comparing tunes, CSV) and the tuning section of the HTML report,
on two real small tunes (current-task validation and tune-on-test) built once for the module."""
import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from _cli import run_cli
from lifelong import report
from lifelong.errors import ConfigError
from lifelong.results import compare_tunes, kendall_tau, load_tune, run_rows, study_rows, tune_study_rows

optuna = pytest.importorskip("optuna")

BASE = {"benchmark": {"name": "split-digits"}, "train": {"iterations": 8}, "eval": {"every": None},
        "strategy": {"mem_size": 40}, "threads": 1}
SPEC = {"base": BASE, "protocol": {"name": "current-task", "seeds": [0]},
        "study": {"sampler": "random", "pruner": "none", "seed": 0}, "budget": {"trials": 3},
        "space": {"train.lr": {"low": 1e-3, "high": 0.1, "log": True}},
        "strategies": {"ewc": {"strategy.ewc_lambda": {"low": 1.0, "high": 1.0e4, "log": True}}}}


def _tune(out: Path, protocol: str) -> Path:
    from lifelong.tuning import parse_spec, tune

    spec = parse_spec({**SPEC, "protocol": {"name": protocol, "seeds": [0]}})
    tune(spec, out, ["ewc", "er"], allow_tune_on_test=protocol == "test", log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def tunes(tmp_path_factory):
    base = tmp_path_factory.mktemp("tunes")
    return _tune(base / "valid", "current-task"), _tune(base / "test", "test")


def summary(folder: Path) -> dict:
    return json.loads((folder / "tune.json").read_text())


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def num(text: str):
    return None if text == "" else float(text)


# -- listing studies -----------------------------------------------------------------------------

def test_studies_of_a_tune_folder_equal_tune_json(tunes, tmp_path, capsys):
    valid, _ = tunes
    s = summary(valid)
    rows = tune_study_rows([load_tune(valid)])
    assert [r["study"] for r in rows] == [x["name"] for x in s["studies"]]
    for r, x in zip(rows, s["studies"]):
        assert (r["complete"], r["pruned"], r["failed"]) == (3, 0, 0) == tuple(x["trials"].values())
        assert r["best_value"] == x["best"]["value"] and r["best_trial"] == x["best"]["number"]
        assert r["strategy"] == x["strategy"] and r["protocol"] == "current-task" and r["mark"] == ""
        label = next(iter(x["phase2"]))
        assert r[f"phase2 {label} accuracy"] == x["phase2"][label]["average_accuracy"]["mean"]
        assert r[f"phase2 {label} rank"] == s["ranking"]["phase2"][label][x["strategy"]]
    code, out, err = run_cli(["results", str(valid), "--csv", str(tmp_path / "s.csv")], capsys)
    assert code == 0, err
    flat = " ".join(out.split())
    for x in s["studies"]:
        assert f"{100 * x['best']['value']:.2f}" in flat and x["strategy"] in flat
    got = read_csv(tmp_path / "s.csv")
    assert [g["study"] for g in got] == [x["name"] for x in s["studies"]]
    assert [float(g["best_value"]) for g in got] == [x["best"]["value"] for x in s["studies"]]  # exact round trip
    assert [int(g["complete"]) for g in got] == [3, 3]


def test_studies_of_a_storage_and_the_test_mark(tunes, capsys):
    valid, test = tunes
    code, out, _ = run_cli(["results", "--storage", str(test / "studies.db")], capsys)
    assert code == 0
    assert "TUNED ON TEST" in out
    rows = study_rows(load_tune(test).storage())
    assert {r["study"] for r in rows} == {x["name"] for x in summary(test)["studies"]}
    assert all(r["mark"] == "TUNED ON TEST" and r["protocol"] == "test" for r in rows)
    # the same rows whether read through the tune folder or the store alone (phase-2 columns aside)
    via_tune = {r["study"]: r for r in tune_study_rows([load_tune(valid)])}
    for r in study_rows(load_tune(valid).storage()):
        assert {k: via_tune[r["study"]][k] for k in r} == r


def test_trials_csv_equals_the_storage(tunes, tmp_path, capsys):
    valid, _ = tunes
    name = next(x["name"] for x in summary(valid)["studies"] if x["strategy"] == "ewc")
    f = tmp_path / "trials.csv"
    code, out, err = run_cli(["results", str(valid), "--study", name, "--csv", str(f)], capsys)
    assert code == 0, err
    st = optuna.load_study(study_name=name, storage=f"sqlite:///{valid / 'studies.db'}")
    trials = st.get_trials()
    rows = read_csv(f)
    assert len(rows) == len(trials) == 3
    for row, t in zip(rows, trials):
        assert int(row["number"]) == t.number and row["state"] == t.state.name
        assert num(row["value"]) == t.value
        assert {k[len("param:"):]: float(v) for k, v in row.items() if k.startswith("param:")} == t.params
        assert row["folder"] == t.user_attrs["folder"]
    # the same study through --storage alone
    code, out2, _ = run_cli(["results", "--storage", str(valid / "studies.db"), "--study", name], capsys)
    assert code == 0 and "strategy.ewc_lambda" in out2


def test_csv_is_not_overwritten_without_force(tunes, tmp_path, capsys):
    valid, _ = tunes
    f = tmp_path / "s.csv"
    f.write_text("mine\n")
    code, _, err = run_cli(["results", str(valid), "--csv", str(f)], capsys)
    assert code == 2 and "already exists" in " ".join(err.split()) and "--force" in err
    assert f.read_text() == "mine\n"
    code, _, _ = run_cli(["results", str(valid), "--csv", str(f), "--force"], capsys)
    assert code == 0 and len(read_csv(f)) == 2


# -- comparing tunes -----------------------------------------------------------------------------

def test_comparison_takes_the_ranks_of_both_tune_json(tunes, tmp_path, capsys):
    valid, test = tunes
    a, b = summary(valid), summary(test)
    rows, taus = compare_tunes([load_tune(valid), load_tune(test)])
    labels = list(a["ranking"]["phase2"])
    assert {r["benchmark"] for r in rows} == set(labels) and len(rows) == 2 * len(labels)
    ta, tb = load_tune(valid).label, load_tune(test).label
    assert "TUNED ON TEST" in tb and "TUNED ON TEST" not in ta
    for r in rows:
        ra = a["ranking"]["phase2"][r["benchmark"]][r["strategy"]]
        rb = b["ranking"]["phase2"][r["benchmark"]][r["strategy"]]
        assert (r[f"{ta} rank"], r[f"{tb} rank"], r[f"{tb} rank change"]) == (ra, rb, rb - ra)
    for t in taus:
        ra, rb = a["ranking"]["phase2"][t["benchmark"]], b["ranking"]["phase2"][t["benchmark"]]
        assert t["ranking_changed"] == (ra != rb)
        assert t["kendall_tau"] == (1.0 if ra == rb else -1.0)  # two strategies: same or swapped order
    f = tmp_path / "cmp.csv"
    code, out, err = run_cli(["results", str(valid), str(test), "--compare", "--csv", str(f)], capsys)
    assert code == 0, err
    flat = " ".join(out.split())
    assert "did the ranking change?" in flat and "Kendall" in flat and "TUNED ON TEST" in flat
    got = read_csv(f)
    assert [(g["benchmark"], g["strategy"], int(g[f"{ta} rank"]), int(g[f"{tb} rank"])) for g in got] == \
        [(r["benchmark"], r["strategy"], r[f"{ta} rank"], r[f"{tb} rank"]) for r in rows]


def test_kendall_tau_by_hand_and_against_scipy():
    a = {"ewc": 1, "si": 2, "er": 3, "lwf": 4}
    assert kendall_tau(a, a) == 1.0
    assert kendall_tau(a, {"ewc": 4, "si": 3, "er": 2, "lwf": 1}) == -1.0
    b = {"ewc": 2, "si": 1, "er": 3, "lwf": 4}  # one swapped pair of six: (5 - 1) / 6
    assert kendall_tau(a, b) == pytest.approx(4 / 6)
    assert kendall_tau(a, {"ewc": 1}) is None  # fewer than two shared strategies
    stats = pytest.importorskip("scipy.stats")
    c = {"ewc": 1, "si": 1, "er": 2, "lwf": 3}  # a tie: tau-b
    for x, y in ((a, b), (a, c), (b, c)):
        keys = list(x)
        assert kendall_tau(x, y) == pytest.approx(stats.kendalltau([x[k] for k in keys], [y[k] for k in keys])[0])


# -- runs ------------------------------------------------------------------------------------------

def test_run_and_sweep_folders_one_row_per_run(tunes, tmp_path, capsys):
    valid, _ = tunes
    phase2 = next(valid.glob("*/phase2"))
    one = next(phase2.glob("*/seed-0"))
    rows = run_rows([phase2, one])  # the run inside the sweep is listed once
    res = json.loads((one / "results.json").read_text())
    assert len(rows) == 1
    r = rows[0]
    assert (r["strategy"], r["benchmark"], r["seed"], r["average_accuracy"], r["forgetting"], r["wall_time_s"],
            r["evaluated_on"]) == (res["config"]["strategy"]["name"], res["benchmark"], 0, res["average_accuracy"],
                                   res["forgetting"], res["wall_time_s"], "test")
    trial = next(valid.glob("*/trials/trial-0000"))
    assert run_rows([trial])[0]["evaluated_on"] == "valid"
    f = tmp_path / "runs.csv"
    code, out, err = run_cli(["results", str(phase2), str(trial), "--csv", str(f)], capsys)
    assert code == 0, err
    got = read_csv(f)
    assert [g["evaluated_on"] for g in got] == ["test", "valid"]
    assert float(got[0]["average_accuracy"]) == res["average_accuracy"]


# -- bad input: one clear line each ------------------------------------------------------------

def test_bad_input_is_one_line(tunes, tmp_path, capsys):
    valid, _ = tunes
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken"
    shutil.copytree(valid, broken, ignore=shutil.ignore_patterns("trials", "phase2"))
    (broken / "tune.json").write_text("{not json")
    cases = [
        (["results", str(tmp_path / "empty")], "neither a tune folder"),
        (["results", str(tmp_path / "missing")], "does not exist"),
        (["results", str(broken)], "tune.json cannot be read"),
        (["results", "--storage", str(tmp_path / "nope.db")], "no such file"),
        (["results", "--storage", "postgres://u@h/db"], "not a study store"),
        (["results", str(valid), "--study", "tune-nothing"], "no study 'tune-nothing'"),
        (["results", "--storage", str(valid / "studies.db"), "--study", "tune-nothing"], "no study 'tune-nothing'"),
        (["results", str(valid), "--compare"], "two or more tune folders"),
        (["results", str(valid), str(next(valid.glob("*/phase2")))], "not both"),
        (["results"], "give tune, run or sweep folders"),
        (["results", str(valid), "--csv", str(tmp_path / "no" / "x.csv")], "does not exist"),
    ]
    (tmp_path / "text.db").write_text("this is not a database")
    cases.append((["results", "--storage", str(tmp_path / "text.db")], "cannot open it as a SQLite study store"))
    for argv, message in cases:
        code, _, err = run_cli(argv, capsys)
        flat = " ".join(err.split())
        assert code == 2 and message in flat and "Traceback" not in err, (argv, err)
    masked = tmp_path / "masked"
    shutil.copytree(valid, masked, ignore=shutil.ignore_patterns("trials", "phase2", "studies.db"))
    data = summary(masked)
    data["storage"] = "postgresql://team:***@db.example:5432/studies"
    (masked / "tune.json").write_text(json.dumps(data))
    code, _, err = run_cli(["results", str(masked)], capsys)
    flat = " ".join(err.split())
    assert code == 2 and "stored without its password" in flat and "--storage" in flat
    with pytest.raises(ConfigError, match="no tune.json yet"):
        (tmp_path / "running").mkdir()
        (tmp_path / "running" / "tune-spec.json").write_text("{}")
        load_tune(tmp_path / "running")
    assert not (tmp_path / "nope.db").exists()  # listing never creates a store


# -- the HTML report of tune folders -------------------------------------------------------------

def test_report_of_a_tune_folder(tunes, tmp_path):
    valid, _ = tunes
    s = summary(valid)
    path = report.write_report([valid], tmp_path / "rep")
    page = path.read_text()
    assert "Tuning: valid · protocol current-task" in page and "TUNED ON TEST" not in page
    # the runs of the report are the phase-2 runs, not the trials
    n_runs = sum(len(x["phase2"][lab]["seeds"]) for x in s["studies"] for lab in x["phase2"])
    assert page.count("<section class=\"run\"") == n_runs == 2
    assert "trial-0000" not in page
    # a trials table per study, with every trial's value
    tables = re.findall(r"<table class='trials'>(.*?)</table>", page, re.S)
    assert len(tables) == 2
    st = optuna.load_study(study_name=s["studies"][0]["name"], storage=f"sqlite:///{valid / 'studies.db'}")
    assert tables[0].count("<tr>") == 1 + 3 and "strategy.ewc_lambda" in tables[0]
    for t in st.get_trials():
        assert f"<td>{100 * t.value:.2f}</td>" in tables[0]
    # importance: EWC tunes two parameters, ER one (and the page says why it is absent)
    imp = re.findall(r"<table class='importance'>(.*?)</table>", page, re.S)
    assert len(imp) == 1 and "train.lr" in imp[0] and "strategy.ewc_lambda" in imp[0]
    shares = [float(v) for v in re.findall(r"<td>([\d.]+)</td>", imp[0])]
    assert sum(shares) == pytest.approx(100, abs=0.2)
    assert "the study tunes one parameter (train.lr)" in page
    # the ranking table: phase-1 and phase-2 ranks from tune.json
    rank = re.search(r"<table class='ranking'>(.*?)</table>", page, re.S).group(1)
    for x in s["studies"]:
        row = re.search(rf"<td class='l'>{x['strategy']}</td>(.*?)</tr>", rank).group(1)
        r1 = s["ranking"]["phase1"][x["tune_on"]][x["strategy"]]
        lab = next(iter(x["phase2"]))
        r2 = s["ranking"]["phase2"][lab][x["strategy"]]
        assert re.findall(r"<td>(\d+)", row) == [str(r1), str(r2)]
    # figures: 3 per run, the run comparison, a trials figure per study, the rank chart
    assert f'data-figures="{3 * 2 + 1 + 2 + 1}"' in page
    assert (tmp_path / "rep" / "tune01-ranks.png").is_file()
    assert (tmp_path / "rep" / "tune01-study01-trials.png").is_file()


def test_report_of_a_test_tune_has_the_banner(tunes, tmp_path):
    valid, test = tunes
    page = report.write_report([valid, test], tmp_path / "rep").read_text()
    assert page.count("<p class='banner'>TUNED ON TEST") == 1
    assert "Tuning: valid" in page and "Tuning: test" in page
    assert page.index("Tuning: test") < page.index("<p class='banner'>TUNED ON TEST")


def test_report_without_its_store_says_why(tunes, tmp_path):
    valid, _ = tunes
    moved = tmp_path / "moved"
    shutil.copytree(valid, moved)
    (moved / "studies.db").unlink()
    data = summary(moved)
    data["storage"] = "sqlite:////nowhere/studies.db"
    (moved / "tune.json").write_text(json.dumps(data))
    page = report.write_report([moved], tmp_path / "rep").read_text()
    assert "its study store cannot be opened" in page and "trials not shown" in page
    assert "<table class='ranking'>" in page  # what tune.json holds is still shown


def test_report_storage_names_the_store_of_a_moved_tune(tunes, tmp_path, capsys):
    valid, _ = tunes
    moved = tmp_path / "moved"
    shutil.copytree(valid, moved)
    store = tmp_path / "elsewhere.db"
    (moved / "studies.db").rename(store)
    data = summary(moved)
    data["storage"] = "sqlite:////nowhere/studies.db"
    (moved / "tune.json").write_text(json.dumps(data))
    code, out, err = run_cli(["report", str(moved), "--storage", str(store), "--out", str(tmp_path / "rep")], capsys)
    assert code == 0, err
    page = Path(out.strip()).read_text()
    assert "cannot be opened" not in page
    assert len(re.findall(r"<table class='trials'>", page)) == 2  # the trials are back
    run_dir = next(moved.glob("*/phase2/*/seed-*"))
    cases = [([str(moved), "--storage", str(tmp_path / "nope.db")], "no such file (lifelong report opens stores"),
             ([str(moved), "--storage", "postgres://u@h/db"], "not a study store"),
             ([str(run_dir), "--storage", str(store)], "--storage applies to tune folders"),
             ([str(moved), "--storage", str(tmp_path / "text.db")], "cannot open it as a SQLite study store")]
    (tmp_path / "text.db").write_text("this is not a database")
    for argv, message in cases:
        code, _, err = run_cli(["report", *argv, "--out", str(tmp_path / "rep2")], capsys)
        flat = " ".join(err.split())
        assert code == 2 and message in flat and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "nope.db").exists() and not (tmp_path / "rep2").exists()  # nothing made
    code, _, err = run_cli(["results", str(moved), "--storage", str(tmp_path / "nope.db")], capsys)
    assert code == 2 and "no such file" in " ".join(err.split()) and not (tmp_path / "nope.db").exists()


def test_tune_report_renders_in_chromium(tunes, tmp_path, capsys):
    from test_report import _chromium, _chromium_run

    exe = _chromium()
    valid, test = tunes
    code, out, err = run_cli(["report", str(valid), str(test), "--out", str(tmp_path / "rep")], capsys)
    assert code == 0, err
    path = Path(out.strip())
    expected = int(re.search(r'data-figures="(\d+)"', path.read_text()).group(1))
    assert expected == 3 * 4 + 1 + 2 * (2 + 1)  # 4 phase-2 runs, their comparison, 2 tunes x (2 studies + ranks)
    profile = tmp_path / "profile"
    profile.mkdir()
    dom = _chromium_run(exe, profile, "--dump-dom", path.resolve().as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    loaded = re.search(r'data-figures-loaded="(\d+)"', dom.stdout)
    assert loaded and int(loaded.group(1)) == expected


def test_report_of_a_select_only_tune_has_no_runs(tunes, tmp_path):
    valid, _ = tunes
    sel = tmp_path / "sel"
    shutil.copytree(valid, sel, ignore=shutil.ignore_patterns("phase2"))
    data = summary(sel)
    for s in data["studies"]:
        s["phase2"] = {}
    data["ranking"]["phase2"] = {}
    (sel / "tune.json").write_text(json.dumps(data))
    page = report.write_report([sel], tmp_path / "rep").read_text()
    assert "<section class=\"run\"" not in page and "Comparison of" not in page
    assert 'data-figures="3"' in page  # two trials figures and the phase-1 ranks
    rank = re.search(r"<table class='ranking'>(.*?)</table>", page, re.S).group(1)
    assert "phase 1 rank" in rank and "phase 2 rank" not in rank
