"""One scenecls run as one MLflow run: its options, every epoch, its final metrics and small files; a
sweep as a parent run with a child per grid cell; a run folder sent afterwards (``log-mlflow``)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from scenecls import runs
from scenecls.errors import first_line, redact
from scenecls.files import locked
from scenecls.progress import NullReporter, Reporter
from scenecls.tracking import Tracker, TrackingSettings
from scenecls.tracking.messages import NAMED_STORES, cause, redact_library_logs, safe_uri, where

# MLflow's client retries a failed request 7 times with a growing back-off (minutes in all): a server
# that is down would stall every epoch. Ours are short; a user's own settings win.
CLIENT_ENVIRONMENT = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
MAX_PARAM_VALUE = 6000  # MLflow's limit on a parameter's value (500 before MLflow 2.x)
MAX_KEY = 250
BATCH = 100  # params (and metrics) per request, within the server's limits
SMALL_FILES = (
    runs.CONFIG,
    runs.METRICS,
    runs.HISTORY,
    runs.LABELS,
    runs.EVALUATION,
    "best.tflite",
    "labels.txt",
    runs.MODEL_CARD,
)
PHASES = {"head": 1}  # the phase metric: 1 for the head phase, 2, 3, ... for fine-tuning stages
SWEEP_TAG = "scenecls.sweep_id"
PARENT_TAG = "mlflow.parentRunId"
STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED", "running": "RUNNING"}


def flatten(options: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"augment": {"zoom": 0.1}}`` -> ``{"augment.zoom": "0.1"}``, within MLflow's limits."""
    flat: dict[str, str] = {}
    for key, value in options.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name[:MAX_KEY]] = str(value)[:MAX_PARAM_VALUE]
    return flat


class MlflowTracker(Tracker):
    """One scenecls run as one MLflow run, through ``MlflowClient`` (no global state, so a sweep's runs
    in one process cannot mix)."""

    def __init__(self, settings: TrackingSettings, reporter: Reporter, *, parent: str | None = None) -> None:
        self.settings, self.reporter, self.parent = settings, reporter, parent
        self.client: Any = None
        self.down: str | None = None  # why the server stopped answering
        self.run_id = None
        self._missed_epochs: list[int] = []
        self._missed: list[str] = []
        self.going_on = "training goes on without logging to MLflow"  # said when the store fails

    # ------------------------------------------------------------------ guarded calls
    def _call(self, what: str, call, *args, **kwargs) -> Any:
        """``call(*args, **kwargs)``, or None after a warning (once) when the server fails."""
        if self.down is not None:
            self._missed.append(what)
            return None
        try:
            return call(*args, **kwargs)
        except Exception as exc:  # any failure of the server or the network: never the run's
            self.down = redact(first_line(cause(exc), 200))
            self._missed.append(what)
            self.reporter.warn(f"MLflow: {self.down}; {self.going_on}")
            return None

    def _connect(self) -> Any:
        for key, value in CLIENT_ENVIRONMENT.items():
            os.environ.setdefault(key, value)
        # MLflow prints a run's address on stdout when it ends; our stdout carries results only (the
        # address goes to stderr when the run opens).
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        from mlflow.tracking import MlflowClient

        redact_library_logs()
        client = MlflowClient()
        store = where(client.tracking_uri)
        if not os.environ.get("MLFLOW_TRACKING_URI") and store not in NAMED_STORES:  # MLflow's default store
            NAMED_STORES.add(store)
            self.reporter.warn(f"MLFLOW_TRACKING_URI is not set: logging to MLflow's default store {store}")
        return client

    def experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.settings.experiment)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            return found.experiment_id
        try:
            return self.client.create_experiment(self.settings.experiment)
        except Exception:  # made meanwhile by another process (a shard)
            return self.client.get_experiment_by_name(self.settings.experiment).experiment_id

    # ------------------------------------------------------------------ a run's life
    def start(self, run_dir: Path, config: dict[str, Any], recorded_id: str | None) -> str | None:
        """Open the MLflow run of ``run_dir``: the one ``recorded_id`` names (a resumed or extended run
        goes on in it), else a new one named after the folder, with the options as parameters."""
        self.client = self._call("the run", self._connect)
        if self.client is None:
            return None
        self.run_id = self._call("the run", self._open, run_dir, config, recorded_id)
        return self.run_id

    def _open(self, run_dir: Path, config: dict[str, Any], recorded_id: str | None) -> str:
        from mlflow.entities import Param, RunTag

        if recorded_id and self._exists(recorded_id):
            self.client.update_run(recorded_id, status="RUNNING")
            self._say_where(recorded_id)
            return recorded_id
        tags = {"scenecls.run_dir": str(Path(run_dir).resolve())}
        if self.parent:
            tags[PARENT_TAG] = self.parent
        run = self.client.create_run(self.experiment_id(), run_name=Path(run_dir).name, tags=tags)
        params = [Param(k, v) for k, v in flatten(config).items()]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(run.info.run_id, params=params[i : i + BATCH])
        self.client.log_batch(run.info.run_id, tags=[RunTag("scenecls.version", _version())])
        self._say_where(run.info.run_id)
        return run.info.run_id

    def _say_where(self, run_id: str) -> None:
        uri = self.client.tracking_uri
        run = self.client.get_run(run_id)
        address = f"{safe_uri(uri)}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
        self.reporter.log(f"MLflow run: {address if uri.startswith('http') else f'{run_id} in {where(uri)}'}")

    def _exists(self, run_id: str) -> bool:
        try:
            run = self.client.get_run(run_id)
        except Exception as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
                return False
            raise
        return run.info.lifecycle_stage != "deleted"

    def epoch(self, row: dict[str, Any]) -> None:
        """One ``history.csv`` row as metrics at step = the run's epoch (all phases on one axis), with
        the phase as the metric ``phase`` (1 = head, 2.. = fine-tuning stages)."""
        if self.run_id is None:
            self._missed_epochs.append(int(row["epoch"]))
            return
        metrics = epoch_metrics(row)
        if self._call(f"epoch {row['epoch']}", self._log_metrics, metrics, int(row["epoch"])) is None:
            self._missed_epochs.append(int(row["epoch"]))

    def _log_metrics(self, values: dict[str, float], step: int) -> bool:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(k, v, stamp, step) for k, v in values.items()]
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + BATCH])
        return True

    def end(self, run_dir: Path, status: str, reason: str | None = None) -> None:
        """Close the run: the final metrics and small files when it finished, and its status
        (FINISHED, FAILED with ``reason``, or KILLED)."""
        if self.run_id is None:
            return
        if status == "finished":
            self.sync(run_dir)
        if reason:
            self._call(
                "the failure's reason", self.client.set_tag, self.run_id, "scenecls.error", reason[:5000]
            )
        self._call("the run's status", self.client.set_terminated, self.run_id, STATUS.get(status, "FAILED"))

    def sync(self, run_dir: Path, *, history: bool = False, extra: Iterable[Path] = ()) -> None:
        """Log what ``run_dir`` holds and the MLflow run lacks: (``history``) every epoch, the final
        metrics, the small files and plots, ``best.keras`` when asked; ``extra`` files too."""
        if self.run_id is None:
            return
        run = runs.Run(run_dir)
        if history and run.has(runs.HISTORY):
            self._call("the epochs", self._send_history, run_dir)
        if run.has(runs.METRICS):
            final = final_metrics(run.metrics)
            self._call("the final metrics", self.log_values, final)
        self._call("the run's files", self._send_files, run_dir, list(extra))

    def log_values(self, values: dict[str, float]) -> bool:
        """Metrics without an epoch (step 0), only those the run does not hold already with that value."""
        held = self.client.get_run(self.run_id).data.metrics
        return self._log_metrics({k: v for k, v in values.items() if held.get(k) != v}, 0)

    def _send_history(self, run_dir: Path) -> None:
        logged = {int(m.step) for m in self.client.get_metric_history(self.run_id, "loss")}
        for row in runs.Run(run_dir).history:
            if int(row["epoch"]) not in logged:
                self._log_metrics(epoch_metrics(row), int(row["epoch"]))
        self._missed_epochs = []

    def _send_files(self, run_dir: Path, extra: list[Path]) -> None:
        files = [run_dir / name for name in SMALL_FILES] + sorted(run_dir.glob("*.png")) + extra
        if self.settings.log_model:
            files.append(run_dir / runs.BEST)
        for path in files:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))

    def missed(self) -> list[str]:
        """What this run did not log, in words (empty when everything went)."""
        said = []
        if self._missed_epochs:
            first, last = min(self._missed_epochs), max(self._missed_epochs)
            said.append(f"epoch {first}" if first == last else f"epochs {first}-{last}")
        said += [what for what in dict.fromkeys(self._missed) if not what.startswith("epoch ")]
        return said

    # ------------------------------------------------------------------ sweeps
    def sweep_parent(self, sweep_dir: Path, sweep_id: str) -> str | None:
        """The parent run of the sweep ``sweep_id``: found by its tag (another shard, perhaps on another
        machine, made it) or made here. Two shards that make one at once keep the older."""
        self.client = self.client or self._call("the sweep's parent run", self._connect)
        if self.client is None:
            return None
        return self._call("the sweep's parent run", self._parent, sweep_dir, sweep_id)

    def _parent(self, sweep_dir: Path, sweep_id: str) -> str:
        experiment = self.experiment_id()
        query = f"tags.`{SWEEP_TAG}` = '{sweep_id}'"
        found = self.client.search_runs([experiment], query, order_by=["attributes.start_time ASC"])
        if found:
            return found[0].info.run_id
        tags = {SWEEP_TAG: sweep_id, "scenecls.sweep_dir": str(Path(sweep_dir).resolve())}
        mine = self.client.create_run(experiment, run_name=Path(sweep_dir).name, tags=tags).info.run_id
        found = self.client.search_runs([experiment], query, order_by=["attributes.start_time ASC"])
        oldest = min(found, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if found else mine
        if oldest != mine:
            self.client.delete_run(mine)
        return oldest

    def terminate(self, run_id: str, status: str) -> None:
        self._call("the run's status", self.client.set_terminated, run_id, status)

    def log_files(self, run_id: str, paths: Iterable[Path], folder: str | None = None) -> None:
        """Upload ``paths`` to the run ``run_id`` (a sweep's tables and heat maps to its parent)."""
        for path in paths:
            if Path(path).is_file():
                self._call(f"{Path(path).name}", self.client.log_artifact, run_id, str(path), folder)


def log_run_folder(
    run_dir: Path, settings: TrackingSettings, reporter: Reporter | None = None, *,
    evaluation: dict[str, Any] | None = None,
) -> MlflowTracker:  # fmt: skip
    """Send a run folder to MLflow afterwards (``scenecls log-mlflow``, ``evaluate --mlflow``): into its
    recorded MLflow run when the server has it (only what it lacks), else a new one (a child of its
    sweep's parent run when the folder is a sweep's); its status as the folder says. ``evaluation``
    (``evaluate``'s figures) is logged as ``eval_*`` metrics."""
    run_dir = Path(run_dir)
    # Two of these at once for one run folder would each make an MLflow run: the second waits instead,
    # then finds the first's id in state.json and sends only what is missing.
    reporter = reporter or NullReporter()
    waiting = f"Waiting for another log-mlflow of {run_dir} to finish"
    with locked(run_dir / LOCK, on_wait=lambda: reporter.log(waiting)):
        return _log_run_folder(run_dir, settings, reporter, evaluation)


LOCK = ".mlflow.lock"


def _log_run_folder(
    run_dir: Path, settings: TrackingSettings, reporter: Reporter | None, evaluation: dict[str, Any] | None
) -> MlflowTracker:
    run = runs.Run(run_dir)
    state = run.state
    parent = None
    sweep = recorded_sweep_id(run_dir.parent)
    tracker = settings.tracker(reporter)
    tracker.going_on = "nothing more is sent"
    if sweep:
        parent = tracker.sweep_parent(run_dir.parent, sweep)
        tracker = settings.tracker(reporter, parent=parent)
        tracker.going_on = "nothing more is sent"
    recorded = state.mlflow_run_id
    run_id = tracker.start(run_dir, run.recorded, recorded)
    if run_id is None:
        return tracker
    if run_id != recorded:
        state.mlflow_run_id = run_id
        run.write_state(state)
    extra = [run_dir / runs.EVALUATION] if evaluation is not None else []
    tracker.sync(run_dir, history=True, extra=extra)
    if evaluation is not None:
        values = {
            f"eval_{k}": v
            for k, v in evaluation.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        tracker._call("the evaluation", tracker.log_values, values)
    tracker.terminate(run_id, STATUS.get(state.status, "FAILED"))
    return tracker


def recorded_sweep_id(folder: Path) -> str | None:
    """The id in ``folder``'s ``sweep.json``, when ``folder`` is a sweep's (see ``sweep.py``)."""
    marker = Path(folder) / "sweep.json"
    if not marker.is_file():
        return None
    found = runs.read_json(marker).get("id")
    return found if isinstance(found, str) else None


def epoch_metrics(row: dict[str, Any]) -> dict[str, float]:
    """A history row's numbers as metrics (a missing or non-finite value is left out)."""
    import math

    values = {}
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"):
        value = row.get(key)
        if value not in (None, "") and math.isfinite(float(value)):
            values[key] = float(value)
    phase = str(row.get("phase", ""))
    values["phase"] = float(PHASES.get(phase, _stage(phase)))
    return values


def _stage(phase: str) -> int:
    """``finetune`` -> 2, ``finetune2`` -> 3, ...: the phase's place in the run."""
    digits = "".join(ch for ch in phase if ch.isdigit())
    return 1 + (int(digits) if digits else 1)


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of ``metrics.json`` worth a column in MLflow's run table."""
    import math

    keys = ("best_val_accuracy", "test_accuracy", "test_loss", "temperature", "epochs", "best_epoch")
    found = {k: metrics.get(k) for k in keys}
    found["run_seconds"] = metrics.get("seconds")  # "seconds" is each epoch's
    test = (metrics.get("calibration") or {}).get("test") or {}
    after = test.get("after") or {}
    for name in ("ece", "nll", "brier"):
        found[f"test_{name}"] = after.get(name)
    return {k: float(v) for k, v in found.items() if isinstance(v, int | float) and math.isfinite(v)}


def _version() -> str:
    from scenecls import __version__

    return __version__
