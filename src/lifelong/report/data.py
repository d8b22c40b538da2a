"""Reading run folders for the report: ``results.json`` (and ``curves.csv``) of every run in or
below the given folders, checked, labelled and grouped by configuration; and the curves derived
from them. A folder that is not a run, or a corrupt file, is one :class:`LifelongError` that
names the file."""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LifelongError
from ..metrics import forgetting_per_experience
from ..stats import mean

__all__ = ["Run", "find_run_dirs", "load_run", "load_runs", "group_runs", "forgetting_per_experience",
           "end_average_curve", "curve_average"]


@dataclass
class Run:
    path: Path                      # the run folder (holds results.json)
    res: dict
    R: list[list[float]]            # accuracy matrix
    curves: list[tuple[int, int, int, float]] | None = None  # (step, experience, eval_experience, accuracy)
    boundaries: list[int] | None = None
    label: str = ""
    slug: str = ""
    tag: str = ""                   # where it comes from when that tells runs apart (a tune folder's name)
    figures: dict[str, tuple[str, bytes, tuple[int, int]]] = field(default_factory=dict)

    @property
    def T(self) -> int:
        return len(self.R)

    @property
    def strategy_name(self) -> str:
        cfg = self.res.get("config")
        if isinstance(cfg, dict) and isinstance(cfg.get("strategy"), dict) and cfg["strategy"].get("name"):
            return str(cfg["strategy"]["name"])
        return str(self.res.get("strategy", "?"))

    @property
    def display_name(self) -> str:
        return self.strategy_name + (f" ({self.tag})" if self.tag else "")

    @property
    def group_key(self) -> str:
        """Runs of the same strategy (with the same parameters) on the same benchmark and scenario."""
        cfg = self.res.get("config")
        strat = cfg.get("strategy") if isinstance(cfg, dict) else None
        return json.dumps([self.res.get("benchmark"), self.res.get("scenario"),
                           strat if isinstance(strat, dict) else self.res.get("strategy")],
                          sort_keys=True, default=str)


def find_run_dirs(path: Path) -> list[Path]:
    """The run folders in ``path``: itself when it holds results.json, else those below it (a sweep)."""
    path = Path(path)
    if not path.exists():
        raise LifelongError(f"{path} does not exist; expected a run folder (with results.json) "
                            "or a sweep folder, as written by 'lifelong run --out DIR'")
    if path.is_file():
        if path.name == "results.json":
            return [path.parent]
        raise LifelongError(f"{path} is a file, not a run folder; expected a folder holding results.json "
                            "(or a sweep folder), as written by 'lifelong run --out DIR'")
    if (path / "results.json").is_file():
        return [path]
    found = sorted(p.parent for p in path.rglob("results.json")
                   if p.is_file() and not any(".tmp-" in part for part in p.relative_to(path).parts))
    if not found:
        raise LifelongError(f"{path} is not a run folder: no results.json in it or below it; expected a run "
                            "or sweep folder, as written by 'lifelong run --out DIR'")
    return found


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def load_run(run_dir: Path) -> Run:
    f = Path(run_dir) / "results.json"
    try:
        res = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LifelongError(f"{f} is corrupt: it is not valid JSON ({exc}); re-run that experiment, "
                            "or leave its folder out of the report") from None
    except OSError as exc:
        raise LifelongError(f"cannot read {f}: {exc.strerror or exc}") from None
    R = res.get("accuracy_matrix") if isinstance(res, dict) else None
    if not (isinstance(R, list) and R and all(isinstance(r, list) and len(r) == len(R) for r in R)
            and all(_is_num(a) for r in R for a in r)):
        raise LifelongError(f"{f} is corrupt: it does not hold a lifelong results object with an "
                            "'accuracy_matrix' (a T x T list of accuracies); re-run that experiment, "
                            "or leave its folder out of the report")
    run = Run(path=Path(run_dir), res=res, R=[[float(a) for a in r] for r in R])
    b = res.get("boundaries")
    if isinstance(b, list) and b and all(_is_num(x) for x in b):
        run.boundaries = [int(x) for x in b]
    cf = Path(run_dir) / "curves.csv"
    if cf.is_file():
        run.curves = _load_curves(cf, run.T)
        if run.boundaries is None and run.curves:
            last: dict[int, int] = {}
            for step, e, _, _ in run.curves:
                last[e] = max(step, last.get(e, step))
            run.boundaries = [last[e] for e in sorted(last)]
    return run


def _load_curves(f: Path, T: int) -> list[tuple[int, int, int, float]] | None:
    need = ("step", "experience", "eval_experience", "accuracy")
    rows = []
    try:
        with f.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in need if c not in (reader.fieldnames or [])]
            if missing:
                raise LifelongError(f"{f} is corrupt: it lacks the column(s) {', '.join(missing)} "
                                    f"(expected {','.join(need)})")
            for n, row in enumerate(reader, start=2):
                try:
                    rows.append((int(float(row["step"])), int(float(row["experience"])),
                                 int(float(row["eval_experience"])), float(row["accuracy"])))
                except (TypeError, ValueError):
                    raise LifelongError(f"{f} is corrupt: line {n} is not 'step,experience,eval_experience,"
                                        f"accuracy' numbers: {row}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise LifelongError(f"{f} is corrupt: {exc}") from None
    if not rows:
        return None
    # experience indices are 0-based like everywhere in lifelong; accept a 1-based file too
    idx = {r[1] for r in rows} | {r[2] for r in rows}
    if 0 not in idx and max(idx) == T:
        rows = [(s, e - 1, j - 1, a) for s, e, j, a in rows]
    rows.sort()
    return rows


def load_runs(paths: list[Path]) -> list[Run]:
    if not paths:
        raise LifelongError("no run folder given; expected one or more run or sweep folders")
    dirs: list[Path] = []
    seen = set()
    for p in paths:
        for d in find_run_dirs(Path(p)):
            key = d.resolve()
            if key not in seen:
                seen.add(key)
                dirs.append(d)
    runs = [load_run(d) for d in dirs]
    _label(runs)
    return runs


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "run"


def _label(runs: list[Run]) -> None:
    labels = [f"{r.display_name} seed {r.res.get('seed', '?')}" for r in runs]
    if len(set(labels)) < len(labels):  # same strategy and seed: tell them apart by benchmark, then folder
        labels = [f"{r.res.get('benchmark', '?')} {lab}" for r, lab in zip(runs, labels)]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} ({_show_path(r.path)})" for r, lab in zip(runs, labels)]
    for i, (r, lab) in enumerate(zip(runs, labels), start=1):
        r.label = lab
        r.slug = f"run{i:02d}-{_slug(r.strategy_name)}-s{_slug(str(r.res.get('seed', 'x')))}"


def _show_path(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(Path(p).resolve())


def group_runs(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """Runs whose configs differ only by the seed, in first-seen order, each with a unique label."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.group_key, []).append(r)
    items = list(groups.values())
    labels = [rs[0].display_name for rs in items]
    if len(set(labels)) < len(labels):
        labels = [str(rs[0].res.get("strategy", rs[0].strategy_name)) for rs in items]
    if len(set(labels)) < len(labels) and len({rs[0].res.get("benchmark") for rs in items}) > 1:
        labels = [f"{rs[0].res.get('benchmark', '?')} {lab}" for rs, lab in zip(items, labels)]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} #{k}" for k, lab in enumerate(labels, start=1)]
    return list(zip(labels, items))


# ----------------------------------------------------------------------------------------------
# derived numbers (forgetting per experience: lifelong.metrics.forgetting_per_experience)


def end_average_curve(R: list[list[float]]) -> list[float]:
    """Average accuracy on the experiences seen so far, after each experience."""
    return [mean(R[i][: i + 1]) for i in range(len(R))]


def curve_average(curves) -> tuple[list[int], list[float]]:
    """Average accuracy over the experiences seen so far, at each evaluated step."""
    by_step: dict[int, list[float]] = {}
    for step, e, j, a in curves:
        if j <= e:
            by_step.setdefault(step, []).append(a)
    steps = sorted(by_step)
    return steps, [mean(by_step[s]) for s in steps]
