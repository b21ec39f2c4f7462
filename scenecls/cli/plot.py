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
    from scenecls import plots, runs

    run_dirs = [runs.resolve_run(r, project) for r in runs_] or [runs.resolve_run(None, project)]
    written: list[Path] = []
    histories = {}
    for run_dir in run_dirs:
        history = runs.Run(run_dir).history
        histories[runs.run_label(run_dir)] = history
        if history:
            written.append(plots.plot_curves(history, run_dir / "curves.png", title=runs.run_label(run_dir)))
        elif runs.is_ensemble_run(run_dir):
            out.log(f"{run_dir} is an ensemble: it has no training curves (its members have)")
        else:
            out.warn(f"{run_dir} has no finished epoch yet: no curves")
        predictions = run_dir / runs.PREDICTIONS
        if not predictions.is_file() and not no_eval and (run_dir / runs.BEST).is_file():
            out.load_tensorflow()
            from scenecls.evaluation import evaluate_run

            evaluate_run(str(run_dir), project, reporter=out.reporter())
        if predictions.is_file():
            evaluation = runs.Run(run_dir).evaluation
            rows = runs.read_rows_csv(predictions)
            written.append(
                plots.plot_confusion(
                    evaluation["confusion"],
                    evaluation["classes"],
                    run_dir / "confusion.png",
                    title=f"{runs.run_label(run_dir)}: {evaluation['split']} "
                    f"accuracy {evaluation['accuracy']:.4f}",
                )
            )
            written.append(plots.plot_samples(rows, run_dir / "samples.png"))
            maps = None
            if heatmaps:
                out.load_tensorflow()
                from scenecls.explain import run_heatmaps

                paths = [row["path"] for row in plots.top_losses(rows)]
                maps = run_heatmaps(run_dir, paths, reporter=out.reporter())
            written.append(plots.plot_top_losses(rows, run_dir / "top_losses.png", heatmaps=maps))
            label = f"{runs.run_label(run_dir)}: {evaluation['split']}"
            calibration = evaluation.get("calibration")
            if calibration:
                reliability = run_dir / "reliability.png"
                written.append(
                    plots.plot_reliability(calibration, reliability, title=f"{label}, reliability")
                )
            if rows:
                coverage, coverage_title = (
                    run_dir / "risk_coverage.png",
                    f"{label}, accuracy against coverage",
                )
                written.append(plots.plot_risk_coverage(rows, coverage, title=coverage_title))
    if len(run_dirs) > 1:
        written.append(plots.plot_compare(histories, project / "compare.png"))
    if fmt == "json":
        out.json([str(p) for p in written])
    else:
        for path in written:
            click.echo(str(path))
