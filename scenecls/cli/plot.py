"""``scenecls plot``: PNG pictures of runs, written into their folders."""

from __future__ import annotations

from pathlib import Path

import click

from scenecls.cli.options import format_option, project_option
from scenecls.cli.output import Output


@click.command("plot")
@click.argument("runs_", metavar="[RUN]...", nargs=-1)
@project_option()
@click.option(
    "--no-eval", is_flag=True, help="Only curves: do not evaluate runs that have no predictions yet."
)
@click.option(
    "--heatmaps",
    is_flag=True,
    help="Draw each of the highest losses beside its Grad-CAM heat map (see scenecls explain).",
)
@format_option("table", "json")
@click.pass_obj
def plot(out: Output, runs_: tuple[str, ...], project: Path, no_eval: bool, heatmaps: bool, fmt: str) -> None:
    """Training curves, confusion matrix, sample predictions, highest losses, reliability diagram and
    accuracy against coverage of each RUN.

    RUN is a run folder or name (default: the latest run). A run not yet evaluated is evaluated
    first (see `scenecls evaluate`). With several runs, their curves are also overlaid in
    PROJECT/compare.png.
    """
    from scenecls import runs
    from scenecls.run_plots import needs_model, plot_runs

    run_dirs = [runs.resolve_run(r, project) for r in runs_] or [runs.resolve_run(None, project)]
    if any(needs_model(r, evaluate=not no_eval, heatmaps=heatmaps) for r in run_dirs):
        out.load_tensorflow()
    drawn = plot_runs(run_dirs, project, evaluate=not no_eval, heatmaps=heatmaps, reporter=out.reporter())
    for note in drawn.notes:
        out.log(note)
    for warning in drawn.warnings:
        out.warn(warning)
    if fmt == "json":
        out.json([str(p) for p in drawn.written])
    else:
        for path in drawn.written:
            click.echo(str(path))
