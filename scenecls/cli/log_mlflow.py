"""``scenecls log-mlflow``: send run folders to MLflow afterwards (a run made without tracking, or one
whose server was down)."""

from __future__ import annotations

from pathlib import Path

import click

from scenecls.cli.options import project_option
from scenecls.cli.output import Output


@click.command("log-mlflow")
@click.argument("run_refs", metavar="RUN...", nargs=-1, required=True)
@click.option("--mlflow-experiment", metavar="NAME", default=None,
              help="MLflow experiment  [default: the project's folder name]")  # fmt: skip
@click.option("--mlflow-log-model", is_flag=True, help="Upload best.keras too (large).")
@project_option()
@click.pass_obj
def log_mlflow(out: Output, run_refs: tuple[str, ...], mlflow_experiment: str | None, mlflow_log_model: bool,
               project: Path) -> None:  # fmt: skip
    """Log each RUN (a run folder or name) to the MLflow server that MLFLOW_TRACKING_URI names: options,
    every epoch, final metrics and files, into the run's own MLflow run when the server has it (only
    what is missing is sent), else a new one. Exits 1 when the server could not take them all."""
    from scenecls import runs
    from scenecls.cli.options import default_experiment
    from scenecls.tracking import TrackingSettings, require_client
    from scenecls.tracking.mlflow_run import log_run_folder

    require_client(explicit=True)
    settings = TrackingSettings(mlflow_experiment or default_experiment(project), mlflow_log_model)
    failed = 0
    for ref in run_refs:
        run_dir = runs.trained_run(ref, project)
        tracker = log_run_folder(run_dir, settings, out.reporter())
        missed = tracker.missed()
        if missed or tracker.run_id is None:
            failed += 1
            out.warn(f"{run_dir}: MLflow did not get {', '.join(missed) or 'the run'}")
        else:
            out.log(f"{run_dir}: logged to MLflow run {tracker.run_id}")
    if failed:
        raise click.exceptions.Exit(1)
