"""The tune driver: for each study of the plan, ask the sampler for a batch of trials, run the
batch through an executor (sequential, process pool, Ray), tell the results; then train the
best config on the report benchmarks with every seed (phase 2) and write the outputs.

Ask-and-tell in batches of ``budget.parallel`` keeps the search a function of the spec and the
sampler's seed: the same spec gives the same trials, whatever executor runs them (with a pruner,
a batch's trials may see each other's intermediate values in any order; with ``pruner: none``
or ``parallel: 1`` the numbers are identical), and each trial draws with a random state derived
from the seed and its place in the study (sampling.py), so a resumed tune suggests what an
uninterrupted one would have.

The study lives in its storage (SQLite in the output folder by default, or a PostgreSQL URL),
so a killed tune rerun with the same command continues: finished trials are kept, a trial
whose driver died on this machine is retried with the same parameters in the same run folder,
resuming from its last checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import ConfigError
from .protocols import TEST_MARK, Target, apply, fingerprint_spec, plan
from .space import SearchSpace
from .spec import TuneSpec
from .trial import make_pruner, run_trial

TUNE_FILE = "tune.json"


@dataclass
class StudyOutcome:
    name: str
    target: Target
    n_complete: int = 0
    n_pruned: int = 0
    n_failed: int = 0
    ran_here: list[int] = field(default_factory=list)  # trial numbers this process ran
    best: dict | None = None
    phase2: dict = field(default_factory=dict)


def default_storage_url(out: Path) -> str:
    return f"sqlite:///{(Path(out) / 'studies.db').resolve()}"


def study_name(prefix: str, target: Target, protocol: str) -> str:
    who = target.strategy or "strategies"
    name = f"{prefix}-{who}-{target.tune_label}-{protocol}"
    return name + ("-TUNED-ON-TEST" if target.on_test else "")


def _sampler(spec: TuneSpec, space: SearchSpace, strategy: str | None):
    """Each trial's suggestions depend on the study seed, its place in the study and the trials
    finished before it, never on the sampler object's life: a resumed tune continues exactly as
    an uninterrupted one (tuning/sampling.py)."""
    from .sampling import make_sampler

    s = spec.study
    grid = space.grid(strategy) if s.sampler == "grid" else None
    return make_sampler(s.sampler, s.seed, n_startup_trials=min(10, spec.budget.trials), grid=grid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_stale(study, log: Callable[[str], None]) -> int:
    """Trials left RUNNING by a driver that died (killed, crashed) are marked failed and enqueued
    again with the same parameters and run folder, so the retry resumes the run from its last
    checkpoint. A driver of this machine is dead when its process is gone; a driver of another
    machine when its heartbeat (recorded while its trials run) is older than the storage's grace
    period (Optuna's ``fail_stale_trials``)."""
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in running:
        owner = t.user_attrs.get("driver") or {}
        if owner.get("host") == host and owner.get("pid") != os.getpid() and not _pid_alive(owner.get("pid", -1)):
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental"
        optuna.storages.fail_stale_trials(study)  # other machines' drivers, by heartbeat
    n = 0
    for t in running:
        if study._storage.get_trial(t._trial_id).state != TrialState.FAIL:
            continue
        study.enqueue_trial(t.params, user_attrs={"resume_folder": t.user_attrs.get("folder")})
        n += 1
    if n:
        log(f"{study.study_name}: {n} trial(s) whose driver died will be retried (resuming their runs)")
    return n


class Heartbeat:
    """While a batch runs, record each of its trials' heartbeat in the storage every
    heartbeat interval, so a driver on another machine can tell this one is alive."""

    def __init__(self, storage, trial_ids: list[int]):
        import threading

        self.storage, self.trial_ids = storage, trial_ids
        self.interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True) if self.interval else None

    def _beat(self):
        while True:
            for tid in self.trial_ids:
                try:
                    self.storage.record_heartbeat(tid)
                except Exception:  # a storage hiccup must not stop the batch; the next beat retries
                    pass
            if self.stop.wait(self.interval):
                return

    def __enter__(self):
        if self.thread:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread:
            self.thread.join()


def _finished(study) -> tuple[int, int, int]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    retried = {t.user_attrs.get("resume_folder") for t in trials} - {None}  # trials of dead drivers, run again
    failed = sum(t.state == TrialState.FAIL and t.user_attrs.get("folder") not in retried for t in trials)
    return complete, pruned, failed


def run_study(name: str, target: Target, spec: TuneSpec, space: SearchSpace, storage, storage_url: str,
              folder: Path, executor, log: Callable[[str], None]) -> StudyOutcome:
    import optuna

    s = spec.study
    pruner = {"name": s.pruner, "n_startup_trials": s.n_startup_trials, "prune_after": s.prune_after}
    study = optuna.create_study(study_name=name, storage=storage, sampler=_sampler(spec, space, target.strategy),
                                pruner=make_pruner(pruner), direction=s.direction, load_if_exists=True)
    identity = {"spec": fingerprint_spec(spec), "strategy": target.strategy, "tune_on": target.tune_label}
    stored = study.user_attrs.get("identity")
    if stored is None:
        study.set_user_attr("identity", identity)
        study.set_user_attr("protocol", spec.protocol.name)
        study.set_user_attr("tuned_on_test", target.on_test)
        study.set_user_attr("objective", s.objective)
        study.set_user_attr("strategy", target.strategy)
        study.set_user_attr("tune_on", target.tune_label)
        study.set_user_attr("base", target.select_base)
    elif stored != identity:
        raise ConfigError(f"study '{name}' in the storage was made by another tune spec or strategy; nothing was "
                          "changed. Rerun with the spec it was started with, or give another --study-prefix")
    recover_stale(study, log)
    # Our storages keep Optuna's heartbeat for drivers on other machines; ask-and-tell is fine with it.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    out = StudyOutcome(name, target)
    started = time.monotonic()
    owner = {"host": socket.gethostname(), "pid": os.getpid()}
    while True:
        done = sum(_finished(study))
        if done >= spec.budget.trials:
            break
        if spec.budget.timeout_s is not None and time.monotonic() - started >= spec.budget.timeout_s:
            log(f"{name}: time budget of {spec.budget.timeout_s:g} s spent after {done} trials")
            break
        batch = []
        for _ in range(min(spec.budget.parallel, spec.budget.trials - done)):
            trial = study.ask()
            values = space.sample(trial, target.strategy)
            config = apply(target.select_base, values)
            resume = trial.user_attrs.get("resume_folder")
            path = Path(resume) if resume else folder / "trials" / f"trial-{trial.number:04d}"
            trial.set_user_attr("driver", owner)
            trial.set_user_attr("folder", str(path))
            try:
                from ..config import parse_config

                config = parse_config(config).to_dict()
            except ConfigError as exc:  # a sampled combination the config refuses
                trial.set_user_attr("error", str(exc))
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                log(f"{name}: trial {trial.number} refused: {exc}")
                continue
            batch.append((trial, {"config": config, "folder": str(path), "objective": s.objective,
                                  "storage": storage_url, "study": name, "trial_id": trial._trial_id,
                                  "pruner": pruner}))
        if not batch:
            continue
        with Heartbeat(study._storage, [t._trial_id for t, _ in batch]):
            for (trial, _), res in zip(batch, executor.map(run_trial, [item for _, item in batch])):
                out.ran_here.append(trial.number)
                _tell(study, trial, res, log, name)
    out.n_complete, out.n_pruned, out.n_failed = _finished(study)
    try:
        best = study.best_trial
    except ValueError:  # no complete trial
        best = None
    if best is not None:
        out.best = {"number": best.number, "value": best.value, "params": best.params,
                    "summary": best.user_attrs.get("summary"), "folder": best.user_attrs.get("folder")}
    return out


def _tell(study, trial, res: dict, log, name: str) -> None:
    import optuna

    if "value" in res and "pruned" not in res:
        trial.set_user_attr("summary", res["summary"])
        study.tell(trial, res["value"])
        log(f"{name}: trial {trial.number} = {res['value']:.4f}  {trial.params}")
    elif "pruned" in res:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        log(f"{name}: trial {trial.number} pruned after experience {res['pruned']}")
    else:
        trial.set_user_attr("error", res.get("error", "")[:2000])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        log(f"{name}: trial {trial.number} failed: {res.get('error')}")


def tune(spec: TuneSpec, out: Path, strategies: list[str] | None = None, *, storage_url: str | None = None,
         study_prefix: str = "tune", executor="sequential", workers: int = 2,
         executor_options: dict | None = None, allow_tune_on_test: bool = False, select_only: bool = False,
         log: Callable[[str], None] = print) -> dict:
    """Run every study of the spec's protocol, then phase 2; write ``tune.json``, ``tune.md`` and
    each study's ``best.yaml`` under ``out``. Returns what ``tune.json`` holds. ``executor``: a
    name (with ``executor_options`` for Ray) or an executor object."""
    import optuna

    from ..executor import get_executor
    from ..io import atomic_write_json, atomic_write_text
    from ..studystore import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log says what each trial gave
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", study_prefix or ""):
        raise ConfigError(f"--study-prefix '{study_prefix}': use letters, digits, '_', '.' and '-' (it names the "
                          "studies and their folders), e.g. tune or lab-2026")
    space = SearchSpace.parse(spec.space, spec.strategies)
    targets = plan(spec, space, strategies, allow_tune_on_test)  # everything checked before any trial
    out = Path(out)
    _claim(out, spec)
    url = storage_url or default_storage_url(out)
    storage = open_storage(url, out)
    ex = get_executor(executor, workers, **(executor_options or {}))
    if hasattr(ex, "connect"):  # one pool / one Ray connection for every batch
        ex.connect()
    try:
        outcomes = [_run_target(target, spec, space, storage, url, out, study_prefix, ex, select_only, log)
                    for target in targets]
    finally:
        if hasattr(ex, "close"):
            ex.close()
    summary = _summary(spec, outcomes, url, study_prefix)
    atomic_write_json(out / TUNE_FILE, summary)
    atomic_write_text(out / "tune.md", markdown(summary))
    return summary


def _run_target(target: Target, spec: TuneSpec, space: SearchSpace, storage, url: str, out: Path, study_prefix: str,
                ex, select_only: bool, log) -> StudyOutcome:
    """One study, its best.yaml and its phase 2."""
    import yaml

    from ..io import atomic_write_text

    name = study_name(study_prefix, target, spec.protocol.name)
    folder = out / name
    o = run_study(name, target, spec, space, storage, url, folder, ex, log)
    if o.best is not None:
        best_cfg = apply(target.select_base, o.best["params"])
        best_cfg["eval"]["selection"] = None  # a plain run of the chosen config on the tuning benchmark
        folder.mkdir(parents=True, exist_ok=True)
        header = f"# {TEST_MARK}: " if target.on_test else "# "
        atomic_write_text(folder / "best.yaml", header + f"best of study {name} (trial {o.best['number']}, "
                          f"{spec.study.objective} {o.best['value']:.4f} on "
                          f"{'test' if target.on_test else 'validation'} data)\n"
                          + yaml.safe_dump(best_cfg, sort_keys=False))
        o.best["config_file"] = str(folder / "best.yaml")
        if not select_only:
            o.phase2 = phase2(o, spec, folder, ex, log)
    return o


def _claim(out: Path, spec: TuneSpec) -> None:
    """A tune folder is new, or this spec's (a rerun continues it); anything else is refused."""
    from ..io import atomic_write_json

    marker = out / "tune-spec.json"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"tune folder {out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not marker.is_file():
            raise ConfigError(f"tune folder {out} already exists and is not a tune of lifelong's; nothing was "
                              "touched. Choose another --out")
        try:
            stored = json.loads(marker.read_text())["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError(f"{marker} cannot be read; move it away or choose another --out") from None
        if stored != fingerprint_spec(spec):
            raise ConfigError(f"tune folder {out} holds a tune of another spec; nothing was touched. Rerun with the "
                              "spec it was started with, or choose another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, {"fingerprint": fingerprint_spec(spec), "spec": spec.to_dict()})


def phase2(o: StudyOutcome, spec: TuneSpec, folder: Path, executor, log) -> dict:
    """The best config trained with every seed on each report benchmark, on its test splits."""
    from ..config import parse_config
    from ..grid import GridRun, execute, open_grid
    from ..stats import mean_std

    runs = []
    for label, base in o.target.reports:
        cfg = apply(base, o.best["params"])
        for seed in spec.protocol.seeds:
            c = parse_config({**cfg, "seed": seed}).to_dict()
            runs.append(GridRun(c, folder / "phase2" / label / f"seed-{seed}", f"{label} seed {seed}"))
    if not runs:
        return {}
    open_grid(folder / "phase2", runs, kind="tune-phase2")
    report = execute(runs, executor)
    out = {}
    for label, _ in o.target.reports:
        mine = [x for x in report.outcomes if x.run.path.parent.name == label]
        ok = [x.results for x in mine if x.ok]
        row = {"seeds": [r["seed"] for r in ok], "failed": [x.error for x in mine if not x.ok]}
        for k in ("average_accuracy", "forgetting", "bwt", "average_incremental_accuracy"):
            m, s = mean_std(r[k] for r in ok) if ok else (None, None)
            row[k] = {"mean": m, "std": s}
        out[label] = row
        if ok:
            log(f"{o.name}: phase 2 on {label}: average accuracy {100 * row['average_accuracy']['mean']:.2f} "
                f"over seeds {row['seeds']}")
    return out


def _ranks(values: dict[str, float | None], higher_better: bool = True) -> dict[str, int]:
    known = sorted((v, k) for k, v in values.items() if v is not None)
    if higher_better:
        known = known[::-1]
    return {k: i + 1 for i, (_, k) in enumerate(known)}


def _summary(spec: TuneSpec, outcomes: list[StudyOutcome], url: str, prefix: str) -> dict:
    from ..studystore import mask_password

    studies = []
    for o in outcomes:
        studies.append({"name": o.name, "strategy": o.target.strategy, "tune_on": o.target.tune_label,
                        "tuned_on_test": o.target.on_test, "trials": {"complete": o.n_complete, "pruned": o.n_pruned,
                                                                      "failed": o.n_failed},
                        "ran_here": o.ran_here, "best": o.best, "phase2": o.phase2})
    higher = spec.study.direction == "maximize"
    ranking = {"phase1": {}, "phase2": {}}
    for tune_on in dict.fromkeys(s["tune_on"] for s in studies):
        ranking["phase1"][tune_on] = _ranks({s["strategy"]: (s["best"] or {}).get("value")
                                             for s in studies if s["tune_on"] == tune_on}, higher)
    labels = dict.fromkeys(lab for s in studies for lab in s["phase2"])
    for lab in labels:
        ranking["phase2"][lab] = _ranks({s["strategy"]: s["phase2"][lab]["average_accuracy"]["mean"]
                                         for s in studies if lab in s["phase2"]})
    on_test = spec.protocol.name == "test"
    return {"protocol": spec.protocol.name, "tuned_on_test": on_test, "mark": TEST_MARK if on_test else None,
            "objective": spec.study.objective, "direction": spec.study.direction, "storage": mask_password(url),
            "study_prefix": prefix, "spec": spec.to_dict(), "studies": studies, "ranking": ranking}


def markdown(summary: dict) -> str:
    mark = f" — **{TEST_MARK}**" if summary["tuned_on_test"] else ""
    lines = [f"## lifelong tune: protocol {summary['protocol']}{mark}", "",
             f"Objective: {summary['objective']} ({summary['direction']}), selected on "
             f"{'the test splits' if summary['tuned_on_test'] else 'validation splits only'}.", "",
             "| strategy | tuned on | trials (complete/pruned/failed) | best (phase 1) | best params |",
             "|---|---|---|---|---|"]
    for s in summary["studies"]:
        tr = s["trials"]
        best = s["best"]
        val = "-" if best is None else f"{100 * best['value']:.2f}" if summary["objective"].endswith("accuracy") \
            else f"{best['value']:.4g}"
        params = "-" if best is None else ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items())
        lines.append(f"| {s['strategy']} | {s['tune_on']} | {tr['complete']}/{tr['pruned']}/{tr['failed']} | {val} "
                     f"| {params} |")
    labels = list(summary["ranking"]["phase2"])
    if labels:
        lines += ["", f"Phase 2 (test splits, mean ± std over seeds){mark}:", "",
                  "| strategy | " + " | ".join(f"{lab} acc (%) | rank" for lab in labels) + " |",
                  "|---|" + "---|---|" * len(labels)]
        by_strategy: dict = {}  # one row per strategy (protocols with one study per benchmark have several)
        for s in summary["studies"]:
            by_strategy.setdefault(s["strategy"], {}).update(s["phase2"])
        for strategy, phase2 in by_strategy.items():
            cells = []
            for lab in labels:
                row = phase2.get(lab)
                if row and row["average_accuracy"]["mean"] is not None:
                    a = row["average_accuracy"]
                    cells += [f"{100 * a['mean']:.2f} ± {100 * (a['std'] or 0):.2f}",
                              str(summary["ranking"]["phase2"][lab].get(strategy, "-"))]
                else:
                    cells += ["-", "-"]
            lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
