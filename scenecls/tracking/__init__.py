"""Experiment tracking in MLflow: a run's options, every epoch, its final metrics and its small files,
in a tracking server a team already runs; sweeps as a parent run with a child per grid cell.

Tracking never costs a run. Every call to the server is guarded: the first failure (a server that is
down at the start or goes away) gives one warning line, training goes on, and what was not logged is
said at the end; ``scenecls log-mlflow RUN`` sends it later from the run folder, which always holds
everything. The server's address and credentials come from MLflow's own environment variables
(``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD`` / ``_TOKEN``); only the MLflow run's
id is written into the run folder (``state.json``), never an address or a secret.

The MLflow client is the ``mlflow-skinny`` package (``pip install 'scenecls[mlflow]'``), imported only
when tracking is on. This module is the face training sees (a :class:`Tracker` is a run-level hook:
``start``, ``epoch``, ``end``); :mod:`~scenecls.tracking.mlflow_run` talks to MLflow, and
:mod:`~scenecls.tracking.messages` keeps its messages one line long and free of secrets.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scenecls.errors import UsageError
from scenecls.progress import NullReporter, Reporter

if TYPE_CHECKING:
    from scenecls.tracking.mlflow_run import MlflowTracker


def tracking_requested(flag: bool | None) -> bool:
    """``--mlflow`` / ``--no-mlflow`` when given, else whether ``MLFLOW_TRACKING_URI`` is set."""
    return bool(os.environ.get("MLFLOW_TRACKING_URI")) if flag is None else flag


def require_client(explicit: bool) -> bool:
    """Whether the MLflow client is installed; without it, ``--mlflow`` is a usage error (said before
    anything runs) while a mere ``MLFLOW_TRACKING_URI`` in the environment is ignored with a word."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is not None:
        return True
    if explicit:
        raise UsageError("--mlflow needs the MLflow client: pip install 'scenecls[mlflow]'")
    return False


@dataclass(frozen=True)
class TrackingSettings:
    """Where and how to track: the experiment's name, and whether to upload ``best.keras`` (large)."""

    experiment: str
    log_model: bool = False

    def tracker(self, reporter: Reporter | None = None, *, parent: str | None = None) -> MlflowTracker:
        from scenecls.tracking.mlflow_run import MlflowTracker

        return MlflowTracker(self, reporter or NullReporter(), parent=parent)


class Tracker:
    """No tracking: what a run uses unless told otherwise. Every method is a no-op."""

    run_id: str | None = None

    def start(self, run_dir: Path, config: dict[str, Any], recorded_id: str | None) -> str | None:
        return None

    def epoch(self, row: dict[str, Any]) -> None:
        pass

    def end(self, run_dir: Path, status: str, reason: str | None = None) -> None:
        pass

    def missed(self) -> list[str]:
        return []


NO_TRACKING = Tracker()


def new_sweep_id() -> str:
    return uuid.uuid4().hex
