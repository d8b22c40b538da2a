"""Optional experiment tracking: TensorBoard and MLflow monitors for :func:`lifelong.training.train`.

Each backend is only needed when used; a missing package raises :class:`LifelongError` with the
``pip install`` line (``pip install -e ".[tracking]"`` installs both). Nothing here uses the
network: TensorBoard writes event files, MLflow writes a local store (default ``./mlruns``) and
its telemetry is turned off.

Usage::

    from lifelong.runner import run
    from lifelong.tracking import MLflowMonitor, MultiMonitor, TensorBoardMonitor

    monitor = MultiMonitor(TensorBoardMonitor("runs/x/tensorboard"),       # every=10 iterations
                           MLflowMonitor(config=cfg, run_name="er-seed0"))  # file:./mlruns
    with monitor:                        # an exception marks the MLflow run FAILED
        res = run(cfg, monitor)          # or train(..., monitor=monitor)
        monitor.close(res, results_path="runs/x/results.json")  # final metrics, artifact

    tensorboard --logdir runs/x/tensorboard        mlflow ui --backend-store-uri ./mlruns

What is logged (the same names in both backends):

* ``train/loss`` and ``continual/mean_accuracy`` (mean over the seen experiences of the latest
  continual evaluation, when it runs) every ``every`` global iterations, step = global iteration
  (1-based, as ``RunResult.boundaries``); with ``every`` equal to ``eval.every`` the points are
  exactly the continual evaluations;
* after each experience ``eval/accuracy_exp{j}`` for every seen experience ``j`` (0-based),
  ``eval/average_accuracy`` (mean over the seen ones) and ``train/experience_loss``, step =
  experience index + 1;
* at ``close(results)``: ``final/<metric>`` for every number at the top level of the results dict
  (average_accuracy, forgetting, bwt, fwt, times, ...) and ``continual/<metric>`` for the numbers in
  ``results["continual"]``, step = the last global iteration; non-finite values are skipped.

MLflow also gets the config flattened to dotted params (``train.lr``, ``strategy.name``, ...) and,
with ``results_path``, that file as an artifact. Its file store is in maintenance mode in
MLflow 3, so ``MLFLOW_ALLOW_FILE_STORE=true`` is set (unless already set) for ``file:`` stores;
``sqlite:`` stores also work when SQLAlchemy and Alembic are installed.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from urllib.parse import urlparse

from .errors import LifelongError

TENSORBOARD_PIN = "tensorboard==2.21.0"
MLFLOW_PIN = "mlflow-skinny==3.17.2"


def _import_summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise LifelongError(f"TensorBoard logging needs the tensorboard package: pip install {TENSORBOARD_PIN} "
                            f"(import failed: {exc})") from exc
    return SummaryWriter


def _import_mlflow():
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # before the import: telemetry would use the network
    try:
        import mlflow
        from mlflow.entities import Metric, Param, RunStatus
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise LifelongError(f"MLflow logging needs the mlflow-skinny package: pip install {MLFLOW_PIN} "
                            f"(import failed: {exc})") from exc
    try:  # imported earlier by someone else, with telemetry on: drop its client
        from mlflow.telemetry import get_telemetry_client, set_telemetry_client

        if get_telemetry_client() is not None:
            set_telemetry_client()
    except Exception:  # noqa: BLE001 - private API, best effort
        pass
    return mlflow, MlflowClient, Metric, Param, RunStatus


def _to_float(x) -> float:
    return float(x.detach()) if hasattr(x, "detach") else float(x)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def final_metrics(results: dict | None) -> dict[str, float]:
    """The scalars logged at ``close``: ``final/<key>`` for the numbers at the results' top level
    (except ``seed``), ``continual/<key>`` for those in ``results['continual']`` when present."""
    if not results:
        return {}
    out = {f"final/{k}": float(v) for k, v in results.items() if k != "seed" and _is_number(v)}
    cont = results.get("continual")
    if isinstance(cont, dict):
        out.update({f"continual/{k}": float(v) for k, v in cont.items() if _is_number(v)})
    return out


def flatten_config(d: dict, prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": "0.1"}``; lists and None as JSON."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten_config(v, key + "."))
        elif isinstance(v, str):
            out[key] = v
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = str(v)
        else:
            out[key] = json.dumps(v)
    return out


class _Monitor:
    """Shared bookkeeping: global step, cadence, per-experience accuracies."""

    def __init__(self, every: int):
        if every < 1:
            raise LifelongError(f"logging interval 'every' must be >= 1, got {every}")
        self.every = every
        self.global_step = 0
        self.closed = False

    def start(self, exp, n_iters):
        self._open()

    def step(self, it, loss, continual_acc=None):
        self.global_step += 1
        if self.global_step % self.every == 0:
            scalars = {"train/loss": _to_float(loss)}
            if continual_acc is not None and math.isfinite(continual_acc):
                scalars["continual/mean_accuracy"] = float(continual_acc)
            self._log(scalars, self.global_step)

    def end(self, exp, result):
        seen = result.accuracy_matrix[-1][: exp.index + 1]
        scalars = {f"eval/accuracy_exp{j}": float(a) for j, a in enumerate(seen)}
        scalars["eval/average_accuracy"] = sum(seen) / len(seen)
        if result.losses:
            scalars["train/experience_loss"] = float(result.losses[-1])
        self._log({k: v for k, v in scalars.items() if math.isfinite(v)}, exp.index + 1)

    def close(self, results: dict | None = None, results_path: str | Path | None = None):
        if self.closed:
            return
        self._open()
        self._log(final_metrics(results), self.global_step)
        self._finish(results_path, failed=False)
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.closed:
            if exc_type is None:
                self.close()
            else:
                self._open()
                self._finish(None, failed=True)
                self.closed = True
        return False

    # backends
    def _open(self):
        raise NotImplementedError

    def _log(self, scalars: dict[str, float], step: int):
        raise NotImplementedError

    def _finish(self, results_path, failed: bool):
        raise NotImplementedError


class TensorBoardMonitor(_Monitor):
    """Scalars to TensorBoard event files in ``log_dir`` (created at the first experience, so
    the monitor can be built before the run folder exists)."""

    def __init__(self, log_dir: str | Path, every: int = 10, config: dict | None = None):
        super().__init__(every)
        self._SummaryWriter = _import_summary_writer()
        self.log_dir = Path(log_dir)
        self.config = config
        self.writer = None

    def _open(self):
        if self.writer is None:
            self.writer = self._SummaryWriter(log_dir=str(self.log_dir))
            if self.config is not None:
                self.writer.add_text("config", "```\n" + json.dumps(self.config, indent=2) + "\n```", 0)

    def _log(self, scalars, step):
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)

    def _finish(self, results_path, failed):
        self.writer.close()


class MLflowMonitor(_Monitor):
    """Params, metrics and the results file to an MLflow run in a local store.

    ``tracking_uri``: ``file:`` or ``sqlite:`` URI, or a folder path; None: ``./mlruns``. Remote
    (http, databricks, ...) stores are refused: tracking never uses the network."""

    def __init__(self, tracking_uri: str | Path | None = None, experiment: str = "lifelong",
                 run_name: str | None = None, config: dict | None = None, every: int = 10,
                 tags: dict[str, str] | None = None):
        super().__init__(every)
        self.tracking_uri = self.local_uri(tracking_uri)
        if self.tracking_uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        _, MlflowClient, self._Metric, self._Param, self._RunStatus = _import_mlflow()
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                self.experiment_id = self.client.create_experiment(experiment)
            except Exception:  # created meanwhile by a concurrent run
                exp = self.client.get_experiment_by_name(experiment)
                if exp is None:
                    raise
                self.experiment_id = exp.experiment_id
        else:
            self.experiment_id = exp.experiment_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags or {}))
        self.run_id = run.info.run_id
        if config:
            params = [self._Param(k, v[:6000]) for k, v in flatten_config(config).items()]
            for s in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[s:s + 100])

    @staticmethod
    def local_uri(uri: str | Path | None) -> str:
        if uri is None:
            return Path("mlruns").resolve().as_uri()
        uri = str(uri)
        scheme = urlparse(uri).scheme
        if scheme in ("file", "sqlite"):
            return uri
        if uri in ("databricks", "databricks-uc", "uc"):  # MLflow reads these bare names as remote stores
            scheme = uri
        elif scheme == "" or (len(scheme) == 1 and os.name == "nt"):  # a path (or a Windows drive)
            return Path(uri).resolve().as_uri()
        raise LifelongError(f"MLflow tracking URI '{uri}' is not local: use a folder, 'file:' or 'sqlite:' URI "
                            "(tracking never uses the network)")

    def _open(self):
        pass

    def _log(self, scalars, step):
        if not scalars:
            return
        ts = int(time.time() * 1000)
        metrics = [self._Metric(k, float(v), ts, int(step)) for k, v in scalars.items()]
        for s in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[s:s + 1000])

    def _finish(self, results_path, failed):
        if results_path is not None:
            self.client.log_artifact(self.run_id, str(results_path))
        status = self._RunStatus.FAILED if failed else self._RunStatus.FINISHED
        self.client.set_terminated(self.run_id, self._RunStatus.to_string(status))


class MultiMonitor:
    """Forwards ``start``/``step``/``end``/``close`` to each monitor given (None entries are
    dropped; ``close`` only to those that have it). False when it holds none, so ``train``
    skips it."""

    def __init__(self, *monitors):
        self.monitors = [m for m in monitors if m is not None]

    def __bool__(self):
        return bool(self.monitors)

    def start(self, exp, n_iters):
        for m in self.monitors:
            m.start(exp, n_iters)

    def step(self, it, loss, continual_acc=None):
        for m in self.monitors:
            m.step(it, loss, continual_acc)

    def end(self, exp, result):
        for m in self.monitors:
            m.end(exp, result)

    def close(self, results: dict | None = None, results_path: str | Path | None = None):
        for m in self.monitors:
            if hasattr(m, "close"):
                m.close(results, results_path=results_path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        for m in self.monitors:
            if hasattr(m, "__exit__"):
                m.__exit__(exc_type, exc, tb)
        return False
