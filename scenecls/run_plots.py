"""Every picture of a run, drawn into its folder: what ``scenecls plot`` makes.

The curves come from the run's history; the confusion matrix, sample predictions, highest losses,
reliability diagram and accuracy against coverage come from its evaluation, which is made first when a
run has none (``evaluate=True``). Drawing is :mod:`scenecls.plots`; this module decides what a run has
and where each picture goes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from scenecls import plots, runs
from scenecls.progress import NullReporter, Reporter


@dataclass
class Drawn:
    """What :func:`plot_runs` wrote, and what it has to say about runs it could not draw in full."""

    written: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. an ensemble has no curves of its own
    warnings: list[str] = field(default_factory=list)  # e.g. a run without a finished epoch


def needs_model(run_dir: Path, *, evaluate: bool, heatmaps: bool) -> bool:
    """Whether drawing ``run_dir`` runs its model (and so loads TensorFlow): to evaluate a run that has
    no predictions yet, or to draw heat maps."""
    has_predictions = (run_dir / runs.PREDICTIONS).is_file()
    can_evaluate = evaluate and not has_predictions and (run_dir / runs.BEST).is_file()
    return can_evaluate or (heatmaps and (has_predictions or can_evaluate))


def plot_runs(
    run_dirs: list[Path],
    project: Path,
    *,
    evaluate: bool = True,
    heatmaps: bool = False,
    reporter: Reporter | None = None,
) -> Drawn:
    """Draw every picture of each run in ``run_dirs``; with several runs, their curves overlaid in
    ``project/compare.png`` too."""
    reporter = reporter or NullReporter()
    drawn = Drawn()
    histories = {}
    for run_dir in run_dirs:
        histories[runs.run_label(run_dir)] = _plot_curves(run_dir, drawn)
        if evaluate and not (run_dir / runs.PREDICTIONS).is_file() and (run_dir / runs.BEST).is_file():
            from scenecls.evaluation import evaluate_run

            evaluate_run(str(run_dir), project, reporter=reporter)
        if (run_dir / runs.PREDICTIONS).is_file():
            _plot_evaluation(run_dir, drawn, heatmaps=heatmaps, reporter=reporter)
    if len(run_dirs) > 1:
        drawn.written.append(plots.plot_compare(histories, project / "compare.png"))
    return drawn


def _plot_curves(run_dir: Path, drawn: Drawn) -> list:
    run = runs.Run(run_dir)
    history = run.history
    if history:
        best = run.state.best_epoch if run.has(runs.STATE) else None
        title = runs.run_label(run_dir)
        drawn.written.append(plots.plot_curves(history, run_dir / "curves.png", title=title, best=best))
    elif runs.is_ensemble_run(run_dir):
        drawn.notes.append(f"{run_dir} is an ensemble: it has no training curves (its members have)")
    else:
        drawn.warnings.append(f"{run_dir} has no finished epoch yet: no curves")
    return history


def _plot_evaluation(run_dir: Path, drawn: Drawn, *, heatmaps: bool, reporter: Reporter) -> None:
    evaluation = runs.Run(run_dir).evaluation
    rows = runs.read_rows_csv(run_dir / runs.PREDICTIONS)
    label = f"{runs.run_label(run_dir)}: {evaluation['split']}"
    add: Callable[[Path], None] = drawn.written.append
    add(
        plots.plot_confusion(
            evaluation["confusion"],
            evaluation["classes"],
            run_dir / "confusion.png",
            title=f"{label} accuracy {evaluation['accuracy']:.4f}",
        )
    )
    add(plots.plot_samples(rows, run_dir / "samples.png"))
    maps = None
    if heatmaps:
        from scenecls.explain import run_heatmaps

        paths = [row["path"] for row in plots.top_losses(rows)]
        maps = run_heatmaps(run_dir, paths, reporter=reporter)
    add(plots.plot_top_losses(rows, run_dir / "top_losses.png", heatmaps=maps))
    calibration = evaluation.get("calibration")
    if calibration:
        add(plots.plot_reliability(calibration, run_dir / "reliability.png", title=f"{label}, reliability"))
    if rows:
        title = f"{label}, accuracy against coverage"
        add(plots.plot_risk_coverage(rows, run_dir / "risk_coverage.png", title=title))
