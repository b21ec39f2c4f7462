"""``scenecls report``: one self-contained HTML page for a run or a sweep."""

from __future__ import annotations

from pathlib import Path

import click

from scenecls.cli.options import format_option, project_option
from scenecls.cli.output import Output


@click.command("report")
@click.argument("run_ref", metavar="[RUN|SWEEP]", required=False)
@click.option(
    "--output", "-o", type=click.Path(path_type=Path), default=None, help="[default: RUN/report.html]"
)
@click.option("--no-eval", is_flag=True, help="Do not evaluate a run that has not been evaluated yet.")
@click.option("--no-heatmaps", is_flag=True, help="Show the highest losses without their Grad-CAM heat maps.")
@project_option()
@format_option("table", "json")
@click.pass_obj
def report(
    out: Output, run_ref: str | None, output: Path | None, no_eval: bool, no_heatmaps: bool, project: Path,
    fmt: str,
) -> None:  # fmt: skip
    """Write one HTML page with everything about a run: summary and options, learning curves,
    per-class table, confusion matrix, reliability diagram, accuracy against coverage and the highest
    losses beside their heat maps; or, for a sweep folder, its results table and heat maps.

    The page is self-contained (pictures inline, no script, no network): one file to open anywhere,
    attach or keep. RUN is a run folder or name (default: the latest run), SWEEP a sweep folder.
    """
    from scenecls import report as reports
    from scenecls import runs

    folder = Path(run_ref) if run_ref and reports.is_sweep_folder(Path(run_ref)) else None
    folder = folder or runs.resolve_run(run_ref, project)
    target = output or folder / reports.PAGE
    reports.check_output(target)  # before any work
    heatmaps = None
    if not reports.is_sweep_folder(folder) and (folder / runs.BEST).is_file():
        if not (folder / runs.EVALUATION).is_file() and not no_eval:
            out.load_tensorflow()
            from scenecls.evaluation import evaluate_run

            evaluate_run(str(folder), project, reporter=out.reporter())
        if (folder / runs.PREDICTIONS).is_file() and not no_heatmaps and not runs.is_ensemble_run(folder):
            out.load_tensorflow()
            from scenecls.explain import run_heatmaps
            from scenecls.plots import top_losses

            rows = top_losses(runs.read_rows_csv(folder / runs.PREDICTIONS))
            heatmaps = run_heatmaps(folder, [row["path"] for row in rows], reporter=out.reporter())
    written = reports.write_report(folder, target, heatmaps=heatmaps)
    if fmt == "json":
        out.json({"report": str(written)})
    else:
        click.echo(str(written))
