"""The HTML report: figures, tables, errors, output folder rules, and rendering in headless Chromium."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lifelong import cli, report
from lifelong.errors import LifelongError
from lifelong.metrics import forgetting as metrics_forgetting
from lifelong.runner import run_to_folder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_config(seed: int) -> dict:
    return {"benchmark": {"name": "split-digits"}, "train": {"iterations": 5, "batch_size": 16},
            "model": {"hidden": [16]}, "seed": seed}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A sweep-like folder with two real tiny runs of the same strategy: sweep/finetune/seed-<n>."""
    base = tmp_path_factory.mktemp("sweep")
    for s in (0, 1):
        run_to_folder(tiny_config(s), base / "finetune" / f"seed-{s}")
    return base


def fake_run(path: Path, *, T: int = 4, strategy: str = "ewc", seed: int = 0, curves: bool = True,
             every: int = 10, iters: int = 50) -> Path:
    """A run folder written by hand: results.json (+ curves.csv and boundaries when ``curves``)."""
    R = [[(max(0.05, 0.9 - 0.15 * (i - j)) if j <= i else 0.0) for j in range(T)] for i in range(T)]
    res = {
        "benchmark": "split-fake", "scenario": "class", "strategy": f"{strategy.upper()}()", "seed": seed,
        "accuracy_matrix": R, "average_accuracy": sum(R[-1]) / T, "average_incremental_accuracy": 0.7,
        "forgetting": metrics_forgetting(R), "bwt": -0.2, "fwt": 0.0,
        "wall_time_s": 1.5, "train_time_s": 1.2, "eval_time_s": 0.3,
        "config": {"strategy": {"name": strategy}, "seed": seed},
    }
    path.mkdir(parents=True)
    if curves:
        res["boundaries"] = [iters * (e + 1) for e in range(T)]
        res["continual"] = {"min_acc": 0.1, "wc_acc": 0.3, "wf_10": 0.05, "wp_10": 0.02,
                            "curve_average_accuracy": 0.55, "eval_every": every}
        lines = ["step,experience,eval_experience,accuracy"]
        for step in range(every, iters * T + 1, every):
            e = (step - 1) // iters
            for j in range(T):
                acc = 0.0 if j > e else max(0.0, 0.9 - 0.15 * (e - j) - 0.2 * ((step - 1) % iters) / iters * (j < e))
                lines.append(f"{step},{e},{j},{acc:.4f}")
        (path / "curves.csv").write_text("\n".join(lines) + "\n")
    (path / "results.json").write_text(json.dumps(res))
    return path


def imgs(page: str) -> list[tuple[str, str]]:
    """(data-name, base64 payload) of each figure in the page."""
    return re.findall(r'<img class="fig" data-name="([^"]+)"[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"',
                      page)


def check_self_contained(page: str) -> None:
    for attr, value in re.findall(r'\b(src|href)="([^"]*)"', page) + re.findall(r"\b(src|href)='([^']*)'", page):
        assert value.startswith(("data:image/png;base64,", "#")), (attr, value[:80])
    assert "http://" not in page and "https://" not in page and "@import" not in page and "url(" not in page


# ------------------------------------------------------------------------------------------------
# content


def test_single_run_report(sweep):
    run = sweep / "finetune" / "seed-0"
    res = json.loads((run / "results.json").read_text())
    path = report.write_report([run], None)
    assert path == run / "report" / "report.html"
    page = path.read_text()
    check_self_contained(page)
    assert 'data-figures="3"' in page
    figs = imgs(page)
    assert [n.rsplit("-", 1)[1] for n, _ in figs] == ["matrix.png", "curves.png", "forgetting.png"]
    for name, b64 in figs:  # the PNG files next to report.html are the embedded figures
        data = base64.b64decode(b64)
        assert data.startswith(PNG_MAGIC) and (path.parent / name).read_bytes() == data
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([n for n, _ in figs] + ["report.html"])
    assert len(page) < 400_000  # light: three ~30 KB figures
    # header and metrics
    assert "split-digits · class-IL · finetune · seed 0" in page
    assert f"{100 * res['average_accuracy']:.2f} %" in page
    assert f"{100 * res['forgetting']:.2f} %" in page
    assert "Comparison of" not in page
    # the accuracy matrix as numbers
    T = len(res["accuracy_matrix"])
    table = re.search(r"<table class=\"matrix\">(.*?)</table>", page, re.S).group(1)
    assert table.count("<tr>") == T + 1
    assert f"<td>{100 * res['accuracy_matrix'][-1][0]:.1f}</td>" in table


def test_sweep_folder_gives_mean_and_std_per_strategy(sweep, tmp_path):
    path = report.write_report([sweep], tmp_path / "rep")
    page = path.read_text()
    check_self_contained(page)
    assert 'data-figures="7"' in page and len(imgs(page)) == 7
    assert (tmp_path / "rep" / "comparison-average-accuracy.png").read_bytes().startswith(PNG_MAGIC)
    table = re.search(r"<table class='compare'>(.*?)</table>", page, re.S).group(1)
    assert table.count("<tr>") == 2  # header + one row: finetune over seeds 0 and 1
    assert "0, 1" in table and "±" in table
    rs = [json.loads((sweep / "finetune" / f"seed-{s}" / "results.json").read_text()) for s in (0, 1)]
    mean = 100 * (rs[0]["average_accuracy"] + rs[1]["average_accuracy"]) / 2
    assert f"{mean:.2f} ±" in table


def test_comparison_cells_are_mean_and_sample_std_by_hand(tmp_path):
    for seed, acc in ((0, 0.5), (1, 0.6), (2, 0.7)):
        run = fake_run(tmp_path / "runs" / f"s{seed}", seed=seed, curves=False)
        res = json.loads((run / "results.json").read_text())
        res["average_accuracy"] = acc
        if seed == 2:
            del res["fwt"]  # a metric one run lacks: the cell says over how many runs
        (run / "results.json").write_text(json.dumps(res))
    table = re.search(r"<table class='compare'>(.*?)</table>", report.write_report(
        [tmp_path / "runs"], tmp_path / "rep").read_text(), re.S).group(1)
    assert "<td>60.00 ± 10.00</td>" in table  # mean 60, sample standard deviation 10 (n - 1)
    assert "<td>0.00 ± 0.00 (of 2)</td>" in table and "<td>1.5 ± 0.0</td>" in table  # fwt; wall time (s)


def test_several_strategies_one_row_per_run(tmp_path):
    a = fake_run(tmp_path / "a", strategy="ewc")
    b = fake_run(tmp_path / "b", strategy="lwf", curves=False)
    page = report.write_report([a, b], tmp_path / "rep").read_text()
    table = re.search(r"<table class='compare'>(.*?)</table>", page, re.S).group(1)
    assert table.count("<tr>") == 3 and "±" not in table
    assert "ewc seed 0" in table and "lwf seed 0" in table
    assert "WC-ACC (%)" in table  # continual metrics of the run that has them
    assert 'data-figures="7"' in page


def test_curve_figure_uses_curves_and_boundaries(tmp_path):
    run = report.load_run(fake_run(tmp_path / "r", T=4, iters=50, every=10))
    assert run.curves and run.boundaries == [50, 100, 150, 200]
    fig = report.fig_curves(run)
    ax = fig.axes[0]
    vlines = sorted(line.get_xdata()[0] for line in ax.lines if len(set(line.get_xdata())) == 1
                    and len(line.get_xdata()) == 2)
    assert vlines == [50, 100, 150, 200]
    labels = [line.get_label() for line in ax.lines]
    assert [f"exp {j}" for j in range(1, 5)] == [lab for lab in labels if lab.startswith("exp ")]
    avg = ax.lines[labels.index("average (seen)")]
    assert list(avg.get_xdata()) == list(range(10, 201, 10))
    assert "training iteration" in ax.get_xlabel()
    page = report.write_report([tmp_path / "r"], None).read_text()
    assert "during training" in page and "No curves.csv" not in page
    assert "WF-10 (windowed forgetting" in page and "5.00 %" in page  # continual metrics shown


def test_curve_figure_without_curves(tmp_path):
    run = report.load_run(fake_run(tmp_path / "r", T=3, curves=False))
    assert run.curves is None
    ax = report.fig_curves(run).axes[0]
    assert ax.get_xlabel() == "after training experience"
    avg = [line for line in ax.lines if line.get_label() == "average (seen)"][0]
    assert list(avg.get_ydata()) == pytest.approx([100 * a for a in report.end_average_curve(run.R)])
    assert "No curves.csv" in report.write_report([tmp_path / "r"], None).read_text()


def test_forgetting_per_experience_matches_metric(tmp_path):
    R = [[0.9, 0.0, 0.0], [0.5, 0.8, 0.0], [0.6, 0.3, 0.7]]
    f = report.forgetting_per_experience(R)
    assert f == pytest.approx([0.3, 0.5])
    assert sum(f) / len(f) == pytest.approx(metrics_forgetting(R))
    run = report.load_run(fake_run(tmp_path / "r", T=3, curves=False))
    ax = report.fig_forgetting(run).axes[0]
    assert len(ax.patches) == 2
    assert [100 * v for v in report.forgetting_per_experience(run.R)] == pytest.approx([p.get_height() for p in ax.patches])
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(100 * metrics_forgetting(run.R))


# ------------------------------------------------------------------------------------------------
# errors and the output folder


def test_not_a_run_folder(tmp_path):
    with pytest.raises(LifelongError, match=r"does not exist.*run folder"):
        report.write_report([tmp_path / "nope"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LifelongError) as exc:
        report.write_report([tmp_path / "empty"], tmp_path / "out")
    assert str(tmp_path / "empty") in str(exc.value) and "results.json" in str(exc.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", ["{not json", "", '["a list"]', '{"benchmark": "x"}',
                                     '{"accuracy_matrix": [[0.5, 0.1]]}'])
def test_corrupt_results(tmp_path, content):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text(content)
    with pytest.raises(LifelongError, match="is corrupt") as exc:
        report.write_report([tmp_path / "r"], None)
    assert str(tmp_path / "r" / "results.json") in str(exc.value)
    assert not (tmp_path / "r" / "report").exists()


def test_corrupt_curves(tmp_path):
    run = fake_run(tmp_path / "r")
    (run / "curves.csv").write_text("step,experience,eval_experience,accuracy\n10,0,0,oops\n")
    with pytest.raises(LifelongError, match=r"curves.csv is corrupt: line 2"):
        report.write_report([run], None)


def test_output_folder_rules(tmp_path):
    a = fake_run(tmp_path / "a", strategy="ewc")
    b = fake_run(tmp_path / "b", strategy="si")
    with pytest.raises(LifelongError, match="--out"):
        report.write_report([a, b], None)
    out = tmp_path / "rep"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(LifelongError, match="already exists and is not empty.*--force"):
        report.write_report([a, b], out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    report.write_report([a, b], out, force=True)
    first = (out / "report.html").read_text()
    report.write_report([a], out, force=True)  # replaces report.html, keeps what it did not write
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "report.html").read_text() != first
    (tmp_path / "file").write_text("x")
    with pytest.raises(LifelongError, match="not a folder"):
        report.write_report([a], tmp_path / "file", force=True)


def test_cli_report(tmp_path, capsys):
    run = fake_run(tmp_path / "r")
    cli.main(["report", str(run)])
    assert capsys.readouterr().out.strip() == str(run / "report" / "report.html")
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", str(run)])
    assert exc.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "error:" in err and "already exists" in err and "Traceback" not in err
    cli.main(["report", str(run), "--force"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["report", str(tmp_path / "missing")])
    err = " ".join(capsys.readouterr().err.split())
    assert "does not exist" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        cli.main(["report"])  # RUN_DIRS is required
    assert "RUN_DIRS" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# in a browser


def _chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver; scripts/setup.sh does it)")
    return exe


def _chromium_run(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=profile.parent,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(profile)})


def test_report_renders_in_chromium(sweep, tmp_path):
    exe = _chromium()
    fake_run(tmp_path / "runs" / "ewc", strategy="ewc")  # a run with curves next to the two real ones
    shutil.copytree(sweep / "finetune", tmp_path / "runs" / "finetune")
    path = report.write_report([tmp_path / "runs"], tmp_path / "rep")
    expected = 3 * 3 + 1
    profile = tmp_path / "profile"
    profile.mkdir()
    url = path.resolve().as_uri()
    dom = _chromium_run(exe, profile, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    assert f'data-figures="{expected}"' in body
    loaded = re.search(r'data-figures-loaded="(\d+)"', body)
    assert loaded, f"the load script did not run: {body}"
    assert int(loaded.group(1)) == expected > 0
    shot = tmp_path / "shot.png"
    r = _chromium_run(exe, profile, "--hide-scrollbars", "--window-size=1280,2000", f"--screenshot={shot}", url)
    assert r.returncode == 0, r.stderr[-2000:]
    data = shot.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")) == (1280, 2000)
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.std() > 0.05  # not a blank page: text, tables and figures
