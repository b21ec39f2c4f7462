"""``scenecls calibrate``: fit a finished run's temperature on its validation images."""

from __future__ import annotations

from pathlib import Path

import click

from scenecls.cli.options import format_option, project_option
from scenecls.cli.output import Output


@click.command("calibrate")
@click.argument("runs_", metavar="[RUN]...", nargs=-1)
@project_option()
@format_option("table", "json")
@click.pass_obj
def calibrate(out: Output, runs_: tuple[str, ...], project: Path, fmt: str) -> None:
    """Make each RUN's confidence honest: fit one temperature on its validation images (minimising
    their negative log-likelihood) and keep it in best.keras and best.tflite. The predicted classes,
    and so accuracy, do not change. Runs calibrate themselves when they finish; this is for runs made
    before, or again after the data changed.

    RUN is a run folder or name (default: the latest run).
    """
    out.load_tensorflow()
    from scenecls import runs
    from scenecls.run_export import export_after_training
    from scenecls.training import calibrate_run

    results = []
    for ref in runs_ or (None,):
        run_dir = runs.trained_run(ref, project)
        out.log(f"Calibrating {run_dir}")
        record = calibrate_run(run_dir, reporter=out.reporter())
        export_after_training(run_dir, out.reporter())  # best.tflite from the calibrated model
        results.append({"run": str(run_dir), **record})
    if fmt == "json":
        out.json(results)
        return
    rows = []
    for result in results:
        for split in ("val", "test"):
            if split in result:
                before, after = result[split]["before"], result[split]["after"]
                rows.append([result["run"], split, result["temperature"], before["ece"], after["ece"],
                             before["nll"], after["nll"], before["brier"], after["brier"]])  # fmt: skip
    columns = ["run", "split", "temperature", "ECE before", "ECE after", "NLL before", "NLL after",
               "Brier before", "Brier after"]  # fmt: skip
    out.table(columns, rows, title="Calibration (lower is better)", numeric=columns[2:])
