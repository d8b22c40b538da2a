"""Reading what tunes and runs left behind, as plain rows: the studies of a study store or of tune
folders, the trials of one study, the runs of run and sweep folders, and the phase-2 rankings of
several tunes side by side. ``lifelong results`` prints these rows and writes them as CSV; the
tuning section of ``lifelong report`` reads tune folders through here too.

A *tune folder* is what ``lifelong tune --out`` writes (``tune-spec.json``, then ``tune.json``
when the tune ends); a *run folder* holds a ``results.json``; a *sweep folder* holds run folders
below it. Anything else, an unreadable ``tune.json``, a storage that cannot be opened and an
unknown study are each one `ConfigError`.

Trial counts are those of ``tune.json``: a trial marked failed only because its driver died
(``stale``; the tune retried it with the same parameters) is not counted as failed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

TUNE_FILE = "tune.json"
TUNE_SPEC_FILE = "tune-spec.json"
STORE_FILE = "studies.db"
TEST_MARK = "TUNED ON TEST"


@dataclass
class TuneFolder:
    path: Path
    summary: dict                       # tune.json
    storage_url: str | None = None      # where its studies live (None: it cannot be opened; see `reason`)
    reason: str = ""
    _storage: object = field(default=None, repr=False)

    @property
    def label(self) -> str:
        mark = f", {TEST_MARK}" if self.summary.get("tuned_on_test") else ""
        return f"{self.path.name} ({self.summary.get('protocol', '?')}{mark})"

    def storage(self):
        """The Optuna storage of this tune (opened once); `ConfigError` when it cannot be opened."""
        if self._storage is None:
            if self.storage_url is None:
                raise ConfigError(f"tune folder {self.path}: its study store cannot be opened: {self.reason}")
            from .studystore import open_storage

            self._storage = open_storage(self.storage_url, self.path)
        return self._storage


def is_tune_folder(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / TUNE_FILE).is_file() or (path / TUNE_SPEC_FILE).is_file())


def check_store_arg(storage: str, command: str) -> None:
    """A ``--storage`` given to a reading command (``lifelong results``, ``lifelong report``): a
    .db file, a sqlite:/// or a postgresql:// URL, and a SQLite file that exists (reading never
    makes a store)."""
    if "://" not in storage and not storage.endswith(".db"):
        raise ConfigError(f"--storage {storage!r} is not a study store; give a .db file, sqlite:///path.db or "
                          "postgresql://user@host/db")
    target = storage[len("sqlite:///"):].split("?", 1)[0] if storage.startswith("sqlite:///") else \
        None if "://" in storage else storage
    if target is not None and target != ":memory:" and not Path(target).expanduser().is_file():
        raise ConfigError(f"--storage {storage}: no such file (lifelong {command} opens stores, it never makes one)")


def load_tune(path: Path, storage: str | None = None) -> TuneFolder:
    """A tune folder's ``tune.json`` and where its study store is: ``storage`` when given, else the
    URL in ``tune.json`` (its own ``studies.db`` when the folder was moved)."""
    path = Path(path)
    f = path / TUNE_FILE
    if not f.is_file():
        raise ConfigError(f"tune folder {path} has no {TUNE_FILE} yet (the tune is still running or was stopped): "
                          f"rerun its 'lifelong tune' command to finish it, or list its studies with "
                          f"'lifelong results --storage {path / STORE_FILE}'")
    try:
        summary = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{f} cannot be read ({exc}); rerun the tune's command to rewrite it") from None
    if not (isinstance(summary, dict) and isinstance(summary.get("studies"), list)
            and isinstance(summary.get("ranking"), dict)
            and all(isinstance(s, dict) and "name" in s for s in summary["studies"])):
        raise ConfigError(f"{f} cannot be read: it is not a tune summary written by 'lifelong tune' "
                          "(studies and ranking); rerun the tune's command to rewrite it")
    t = TuneFolder(path, summary)
    if storage is not None:
        t.storage_url = storage
        return t
    url = str(summary.get("storage") or "")
    local = path / STORE_FILE
    if url.startswith("sqlite:///"):
        target = Path(url[len("sqlite:///"):].split("?", 1)[0])
        if target.is_file():
            t.storage_url = url
        elif local.is_file():
            t.storage_url = str(local)
        else:
            t.reason = f"{target} does not exist"
    elif "***@" in url:
        t.reason = (f"{url} is stored without its password; give it with --storage "
                    f"postgresql://user:PASSWORD@host/db")
    elif url:
        t.storage_url = url
    elif local.is_file():
        t.storage_url = str(local)
    else:
        t.reason = f"{TUNE_FILE} names no storage and there is no {local}"
    return t


# -- studies and trials --------------------------------------------------------------------------


def _counts(trials: list[dict]) -> dict[str, int]:
    return {"complete": sum(t["state"] == "COMPLETE" for t in trials),
            "pruned": sum(t["state"] == "PRUNED" for t in trials),
            "failed": sum(t["state"] == "FAIL" and not t["user_attrs"].get("stale") for t in trials),
            "running": sum(t["state"] == "RUNNING" for t in trials)}


def _best(trials: list[dict], direction) -> tuple[float | None, int | None]:
    done = [t for t in trials if t["state"] == "COMPLETE" and isinstance(t["value"], (int, float))]
    if not done or direction not in ("maximize", "minimize"):
        return None, None
    best = (max if direction == "maximize" else min)(done, key=lambda t: t["value"])
    return best["value"], best["number"]


def study_rows(storage, names: list[str] | None = None, tune: TuneFolder | None = None) -> list[dict]:
    """One row per study of ``storage`` (or only ``names``, in that order): ``study``, ``protocol``,
    ``strategy``, ``tuned_on``, ``objective``, ``direction``, ``complete``, ``pruned``, ``failed``,
    ``running``, ``best_value``, ``best_trial``, ``mark`` (``TUNED ON TEST`` or empty), and with
    ``tune``: ``tune`` (its folder) and the phase-2 accuracy per report benchmark."""
    from .studystore import list_studies, trials_frame

    studies = {s["name"]: s for s in list_studies(storage)}
    if names is not None:
        missing = [n for n in names if n not in studies]
        if missing:
            where = f"tune folder {tune.path}'s store" if tune else "this store"
            raise ConfigError(f"{where} has no study {', '.join(map(repr, missing))}; it has: "
                              f"{', '.join(sorted(studies)) or 'no studies'}")
    rows = []
    for name in names if names is not None else list(studies):
        s = studies[name]
        attrs = s["user_attrs"]
        trials = trials_frame(storage, name)
        value, number = _best(trials, s["direction"])
        row = {"study": name, "protocol": attrs.get("protocol", ""), "strategy": attrs.get("strategy") or "",
               "tuned_on": attrs.get("tune_on", ""), "objective": attrs.get("objective", ""),
               "direction": s["direction"] if isinstance(s["direction"], str) else ",".join(s["direction"]),
               **_counts(trials), "best_value": value, "best_trial": number,
               "mark": TEST_MARK if attrs.get("tuned_on_test") else ""}
        if tune is not None:
            row = {"tune": str(tune.path), **row}
            entry = next((x for x in tune.summary["studies"] if x["name"] == name), {})
            for label, p2 in (entry.get("phase2") or {}).items():
                acc = (p2 or {}).get("average_accuracy") or {}
                row[f"phase2 {label} accuracy"] = acc.get("mean")
                row[f"phase2 {label} std"] = acc.get("std")
                row[f"phase2 {label} rank"] = tune.summary["ranking"].get("phase2", {}).get(label, {}).get(
                    entry.get("strategy"))
        rows.append(row)
    return rows


def tune_study_rows(tunes: list[TuneFolder]) -> list[dict]:
    """The studies of each tune folder (those its ``tune.json`` names), read from its store."""
    rows = []
    for t in tunes:
        rows += study_rows(t.storage(), [s["name"] for s in t.summary["studies"]], tune=t)
    return rows


def trial_rows(storage, study: str) -> list[dict]:
    """One row per trial: ``number``, ``state``, ``value``, ``duration_s``, ``folder`` and one
    ``params`` dict (the CSV gives each parameter its own column)."""
    from .studystore import trials_frame

    return [{"number": t["number"], "state": t["state"] + (" (retried)" if t["user_attrs"].get("stale") else ""),
             "value": t["value"], "duration_s": t["duration_s"], "params": t["params"],
             "folder": t["user_attrs"].get("folder", "")} for t in trials_frame(storage, study)]


def find_study(tunes: list[TuneFolder], name: str):
    """The storage of the tune folder whose ``tune.json`` names study ``name``."""
    for t in tunes:
        if any(s["name"] == name for s in t.summary["studies"]):
            return t.storage()
    known = [s["name"] for t in tunes for s in t.summary["studies"]]
    raise ConfigError(f"no study {name!r} in {', '.join(str(t.path) for t in tunes)}; they hold: "
                      f"{', '.join(known) or 'no studies'}")


# -- runs ----------------------------------------------------------------------------------------


def find_results(path: Path) -> list[Path]:
    """The results.json files of a run folder (itself) or a sweep folder (below it)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} does not exist; expected a tune folder, a run folder or a sweep folder")
    if path.is_file():
        raise ConfigError(f"{path} is a file; expected a tune folder (tune.json), a run folder (results.json) "
                          "or a sweep folder")
    if (path / "results.json").is_file():
        return [path / "results.json"]
    found = sorted(p for p in path.rglob("results.json")
                   if p.is_file() and not any(".tmp-" in part or part == ".partial"
                                              for part in p.relative_to(path).parts))
    if not found:
        raise ConfigError(f"{path} is neither a tune folder (no tune.json or tune-spec.json) nor a run or sweep "
                          "folder (no results.json in it or below it)")
    return found


RUN_COLUMNS = ("strategy", "benchmark", "scenario", "seed", "average_accuracy", "forgetting", "wall_time_s",
               "evaluated_on", "status", "folder")


def run_row(f: Path) -> dict:
    try:
        res = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{f} cannot be read ({exc}); rerun that run or leave its folder out") from None
    if not isinstance(res, dict) or "average_accuracy" not in res:
        raise ConfigError(f"{f} is not a lifelong results file (no average_accuracy); rerun that run or leave "
                          "its folder out")
    cfg = res.get("config") if isinstance(res.get("config"), dict) else {}
    strat = cfg.get("strategy") if isinstance(cfg.get("strategy"), dict) else {}
    return {"strategy": strat.get("name") or res.get("strategy", ""), "benchmark": res.get("benchmark", ""),
            "scenario": res.get("scenario", ""), "seed": res.get("seed"),
            "average_accuracy": res.get("average_accuracy"), "forgetting": res.get("forgetting"),
            "wall_time_s": res.get("wall_time_s"), "evaluated_on": res.get("evaluated_on", "test"),
            "status": res.get("status", ""), "folder": str(f.parent)}


def run_rows(paths: list[Path]) -> list[dict]:
    seen, rows = set(), []
    for p in paths:
        for f in find_results(p):
            if f.resolve() not in seen:
                seen.add(f.resolve())
                rows.append(run_row(f))
    return rows


# -- comparing tunes -----------------------------------------------------------------------------


def kendall_tau(a: dict[str, float], b: dict[str, float]) -> float | None:
    """Kendall's tau-b between two rankings over the keys they share (None under two keys, or when
    one ranking is all ties). Equal to ``scipy.stats.kendalltau`` (tested)."""
    keys = [k for k in a if k in b]
    if len(keys) < 2:
        return None
    conc = disc = ties_a = ties_b = 0
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            da = a[keys[i]] - a[keys[j]]
            db = b[keys[i]] - b[keys[j]]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                conc += 1
            else:
                disc += 1
    denom = ((conc + disc + ties_a) * (conc + disc + ties_b)) ** 0.5
    return None if denom == 0 else (conc - disc) / denom


def _phase2(t: TuneFolder) -> dict[str, dict[str, dict]]:
    """label -> strategy -> {accuracy, std, rank} from tune.json."""
    out: dict[str, dict[str, dict]] = {}
    ranks = t.summary["ranking"].get("phase2") or {}
    for s in t.summary["studies"]:
        for label, p2 in (s.get("phase2") or {}).items():
            acc = (p2 or {}).get("average_accuracy") or {}
            out.setdefault(label, {})[s.get("strategy")] = {
                "accuracy": acc.get("mean"), "std": acc.get("std"),
                "rank": (ranks.get(label) or {}).get(s.get("strategy"))}
    return out


def compare_tunes(tunes: list[TuneFolder]) -> tuple[list[dict], list[dict]]:
    """Per report benchmark and strategy, each tune's phase-2 accuracy and rank (from its
    ``tune.json``) and the rank change against the first tune; and per benchmark and later tune,
    Kendall's tau between its ranking and the first tune's. Returns (rows, taus)."""
    if len(tunes) < 2:
        raise ConfigError("--compare needs two or more tune folders (e.g. a reality-check tune and a "
                          "tune-on-test tune of the same strategies)")
    p2 = [_phase2(t) for t in tunes]
    labels = list(dict.fromkeys(lab for p in p2 for lab in p))
    shared = [lab for lab in labels if sum(lab in p for p in p2) >= 2]
    if not shared:
        raise ConfigError("these tune folders share no phase-2 benchmark: nothing to compare (tunes run with "
                          "--select-only have no phase 2)")
    rows, taus = [], []
    for lab in shared:
        strategies = list(dict.fromkeys(s for p in p2 for s in p.get(lab, {})))
        for strat in strategies:
            row = {"benchmark": lab, "strategy": strat}
            first = p2[0].get(lab, {}).get(strat, {}).get("rank")
            for k, (t, p) in enumerate(zip(tunes, p2)):
                cell = p.get(lab, {}).get(strat, {})
                row[f"{t.label} accuracy"] = cell.get("accuracy")
                row[f"{t.label} std"] = cell.get("std")
                row[f"{t.label} rank"] = cell.get("rank")
                if k:
                    rank = cell.get("rank")
                    row[f"{t.label} rank change"] = None if rank is None or first is None else rank - first
            rows.append(row)
        ref = {s: c["rank"] for s, c in p2[0].get(lab, {}).items() if c.get("rank") is not None}
        for t, p in zip(tunes[1:], p2[1:]):
            other = {s: c["rank"] for s, c in p.get(lab, {}).items() if c.get("rank") is not None}
            common = [s for s in ref if s in other]
            changed = sorted(common, key=ref.get) != sorted(common, key=other.get)  # order of the shared ones
            taus.append({"benchmark": lab, "reference": tunes[0].label, "tune": t.label, "strategies": len(common),
                         "kendall_tau": kendall_tau(ref, other), "ranking_changed": changed})
    return rows, taus
