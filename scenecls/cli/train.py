"""``scenecls train`` and ``scenecls finetune``: run the recipe into a run folder."""

from __future__ import annotations

import time
from pathlib import Path

import click

from scenecls.cli.options import (
    absolute_exclude,
    augment_from_options,
    backbone_choice,
    cache_options,
    config_from_options,
    distill_options,
    fail_under_option,
    finetune_augment_options,
    finetune_cache_options,
    option,
    recipe_options,
    run_options,
    tracking_from,
    tracking_options,
)
from scenecls.cli.output import Output, accuracy_cell, check_fail_under
from scenecls.config import TrainConfig


def choose_distribution(out: Output, mode: str):
    """The strategy, made before anything else touches TensorFlow (a multi-worker one must be)."""
    out.load_tensorflow()
    from scenecls.training import choose_distribution as choose

    distribution = choose(mode)
    if not distribution.chief:
        out.log(f"This process is {distribution.task} of {distribution.workers}; the chief writes the runs")
    return distribution


@click.command("train")
@option("backbone")
@option("dense")
@option("unfreeze")
@option("unfreeze_layers")
@click.option(
    "--resume",
    "resume",
    default=None,
    metavar="RUN",
    help="Continue an interrupted run (folder or name) with its own options; with --epochs or "
    "--finetune-epochs, give a finished run's last phase more epochs (the new total).",
)
@click.option("--exist-ok", is_flag=True, help="Reuse --name even if it exists.")
@recipe_options
@cache_options
@run_options
@tracking_options
@fail_under_option()
@click.option("--no-export", is_flag=True, help="Do not write best.tflite (fast predict) when the run ends.")
@distill_options
@click.pass_obj
def train(
    out: Output,
    resume: str | None,
    exist_ok: bool,
    project: Path,
    name: str | None,
    fmt: str,
    fail_under: float | None,
    no_export: bool,
    no_augment: bool,
    no_cache: bool,
    data: Path | None,
    distribute: str,
    **options,
) -> None:
    """Train a classifier: the head on a frozen backbone, then fine-tune the last blocks.

    Every epoch updates runs/NAME/ (history.csv, last.keras, best.keras, state.json); Ctrl-C keeps
    them and prints how to resume.
    """
    from scenecls import runs
    from scenecls.data.layout import check_data_path
    from scenecls.models.registry import check_weights, fetch_weights
    from scenecls.paths import data_source
    from scenecls.training.recipe import plan_phases

    if not resume:  # no data set or weights: say so at once, before TensorFlow loads or a folder is made
        check_weights(options["weights"], options["backbone"])
        data_source(data)
    distribution = choose_distribution(out, distribute)
    tracking = tracking_from(out, options, project)
    if resume:
        run_dir = runs.trained_run(resume, project)
        ctx = click.get_current_context()
        more = {
            key: options[key]
            for key in ("epochs", "finetune_epochs")
            if ctx.get_parameter_source(key) == click.core.ParameterSource.COMMANDLINE
        }
        config = runs.Run(run_dir).config
        extension = None
        if more and distribution.chief:
            from scenecls.training import extend_run

            extension = extend_run(run_dir, **more)
            config = extension.config
        _run(out, config, run_dir, fmt, fail_under, distribution, resume=True, tracking=tracking,
             extension=extension)  # fmt: skip
        return
    config = config_from_options(data, no_augment, no_cache, options)
    config.export_tflite = not no_export
    check_data_path(data_source(config.data))  # no data set: say so before a runs/ folder or a download
    plan_phases(config)  # a recipe that cannot run is a usage error before any download
    fetch_weights(config.backbone, config.weights, config.image_size, quiet=out.quiet)
    config.unlabelled, config.teacher = student_inputs(config.unlabelled, config.teacher, project)
    if config.unlabelled is not None and config.teacher is None:
        config = _train_teacher_first(out, config, distribution, project, name or "train", exist_ok, tracking)
    run_dir = _new_run_dir(distribution, project, name or "train", exist_ok)
    _run(out, config, run_dir, fmt, fail_under, distribution, tracking=tracking)


def student_inputs(
    unlabelled: str | None, teacher: str | None, project: Path
) -> tuple[str | None, str | None]:
    """``--unlabelled`` and ``--teacher`` as absolute paths (a resumed student finds them from anywhere),
    checked before anything loads: the folder exists, the teacher is a run."""
    from scenecls import runs
    from scenecls.errors import SceneclsError, UsageError

    if unlabelled is not None:
        folder = Path(unlabelled).expanduser()
        if not folder.is_dir():
            raise UsageError(f"--unlabelled {unlabelled} is not a folder of images")
        unlabelled = str(folder.absolute())
    if teacher is not None:
        try:
            teacher = str(runs.resolve_run(teacher, project).absolute())
        except SceneclsError as exc:
            raise UsageError(f"--teacher {exc}") from None
    return unlabelled, teacher


def _train_teacher_first(
    out: Output, config: TrainConfig, distribution, project: Path, name: str, exist_ok: bool, tracking
) -> TrainConfig:
    """``--unlabelled`` without ``--teacher``: a teacher run with the same options (``NAME-teacher``),
    then the student's configuration naming it."""
    from dataclasses import replace

    from scenecls.training import check_student

    check_student(config)  # a folder the student would refuse stops the command before the teacher trains
    teacher_dir = _new_run_dir(distribution, project, f"{name}-teacher", exist_ok)
    out.log(f"No --teacher: training one first with the same options, into {teacher_dir}; then the student")
    result = _train_run(out, replace(config, unlabelled=None), teacher_dir, distribution, tracking=tracking)
    if result is None or result.status != "finished":
        raise click.exceptions.Exit(0 if result is None else 1)
    out.log(f"Teacher finished (test accuracy {accuracy_cell(result.test_accuracy)}); now the student")
    return replace(config, teacher=str(teacher_dir.absolute()), teacher_trained_first=True)


def _new_run_dir(distribution, project: Path, name: str, exist_ok: bool) -> Path:
    """The chief makes the run folder; a worker only names it (it trains in a scratch copy)."""
    from scenecls import runs

    if distribution.chief:
        return runs.create_run_dir(project, name, exist_ok=exist_ok)
    return project / name


@click.command("finetune")
@click.argument("run", required=False)
@click.option("--data", type=click.Path(path_type=Path), help="Data set  [default: the run's]")
@option("exclude", help="Leave out the images this file lists (as inspect --write-exclude writes it)  "
        "[default: the run's]")  # fmt: skip
@click.option(
    "--backbone",
    type=backbone_choice(),
    default=None,
    help="Refuse the run unless its model has this backbone.",
)
@option("unfreeze", help="Blocks to fine-tune: N, all, or 1,3,5.")
@option("unfreeze_layers", help="Fine-tune the last K layers instead of blocks.")
@option("finetune_epochs", low=1, help="Epochs of each fine-tuning stage.")
@option("finetune_lr")
@finetune_augment_options
@finetune_cache_options
@run_options
@tracking_options
@fail_under_option()
@click.option("--no-export", is_flag=True, help="Do not write best.tflite (fast predict) when the run ends.")
@click.pass_obj
def finetune(
    out: Output,
    run: str | None,
    data: Path | None,
    backbone: str | None,
    project: Path,
    name: str | None,
    fmt: str,
    fail_under: float | None,
    no_export: bool,
    no_cache: bool,
    no_augment: bool,
    distribute: str,
    **options,
) -> None:
    """Fine-tune a run's best model again, into a new run folder that records its parent.

    RUN is a run folder or name (default: the latest run).
    """
    from scenecls import runs
    from scenecls.training import finetune_config

    distribution = choose_distribution(out, distribute)
    tracking = tracking_from(out, options, project)
    parent = runs.trained_run(run, project)
    parent_augment = runs.Run(parent).config.augment
    augment = augment_from_options(parent_augment, no_augment, options)
    exclude = absolute_exclude(options.pop("exclude"))
    config = finetune_config(
        parent, options, augment=augment, data=data, exclude=exclude, backbone=backbone,
        export=not no_export, feature_cache=not no_cache, reporter=out.reporter(),
    )  # fmt: skip
    run_dir = _new_run_dir(distribution, project, name or f"{parent.name}-ft", False)
    _run(
        out, config, run_dir, fmt, fail_under, distribution, start_model=parent / runs.BEST, tracking=tracking
    )


def _run(
    out: Output,
    config: TrainConfig,
    run_dir: Path,
    fmt: str,
    fail_under: float | None,
    distribution,
    *,
    resume: bool = False,
    start_model: Path | None = None,
    tracking=None,
    extension=None,
) -> None:
    result = _train_run(
        out, config, run_dir, distribution, resume=resume, start_model=start_model, tracking=tracking,
        extension=extension,
    )  # fmt: skip
    if result is None:  # the results are the chief's to report
        return
    _render(out, result, fmt)
    # The gate judges the test split when there is one, else the best validation accuracy.
    if result.test_accuracy is not None:
        check_fail_under(out, result.test_accuracy, fail_under, "test accuracy")
    else:
        check_fail_under(out, result.best_val_accuracy, fail_under, "best validation accuracy")


def _train_run(
    out: Output, config: TrainConfig, run_dir: Path, distribution, *, resume: bool = False,
    start_model: Path | None = None, tracking=None, extension=None,
):  # fmt: skip
    """Train the run and export it (the chief): its result, or None on a worker, which reports nothing."""
    from scenecls.training import TrainingInterrupted
    from scenecls.training import train as run_training

    if distribution.chief:
        out.log(f"Run folder: {run_dir}")
    tracker = tracking.tracker(out.reporter()) if tracking is not None and distribution.chief else None
    try:
        result = run_training(
            config, run_dir, reporter=out.reporter(), resume=resume, start_model=start_model,
            distribution=distribution, tracker=tracker, extension=extension,
        )  # fmt: skip
    except TrainingInterrupted as exc:
        where = exc.run_dir if distribution.chief else run_dir  # a worker's own copy is gone
        say_untracked(out, tracker, run_dir)
        click.echo(f"Interrupted. Resume with: scenecls train --resume {where}", err=True)  # even with -q
        raise click.exceptions.Exit(130) from None
    except Exception:
        say_untracked(out, tracker, run_dir)
        raise
    if not distribution.chief:
        best = accuracy_cell(result.best_val_accuracy)
        out.log(f"{distribution.task}: training finished (best val accuracy {best})")
        return None
    if result.status == "finished":
        from scenecls.run_export import export_after_training

        export_after_training(
            run_dir, out.reporter(), model=result.best_model, data=result.data, tracker=tracker
        )
    say_untracked(out, tracker, run_dir)
    return result


def say_untracked(out: Output, tracker, run_dir: Path) -> None:
    """What MLflow did not get of this run, and how to send it: the run folder has all of it."""
    missed = tracker.missed() if tracker is not None else []
    if missed:
        out.warn(
            f"MLflow did not get {', '.join(missed)} of this run; send it with: scenecls log-mlflow {run_dir}"
        )


def _render(out: Output, result, fmt: str) -> None:
    if fmt == "json":
        out.json(result.to_dict())
        return
    last = "" if result.best_val_accuracy is not None else "; the last: no validation images"
    out.table(
        ["", ""],
        [
            ["best val accuracy", accuracy_cell(result.best_val_accuracy)],
            ["best epoch", f"{result.best_epoch} ({result.best_phase}){last}"],
            ["test accuracy", accuracy_cell(result.test_accuracy)],
            ["temperature", _temperature_cell(result)],
            ["epochs", str(result.epochs) + (" (stopped early)" if result.stopped_early else "")],
            ["time", f"{time.monotonic() - out.started:.0f} s"],  # the command's, start-up included
            ["run folder", str(result.run_dir)],
        ],
        title="Training finished",
    )
    if result.status == "finished":
        _next_steps(out, result.run_dir)


def _temperature_cell(result) -> str:
    if result.temperature is None:
        return "-"
    if result.calibration_not_applied:
        return f"{result.temperature:.3f} (not fitted: {result.calibration_not_applied})"
    return f"{result.temperature:.3f}"


def _next_steps(out: Output, run_dir: Path) -> None:
    """Where the results are and the commands that come next, with this run's folder in them."""
    out.log(f"Results in {run_dir}/: best.keras, metrics.json, predictions.csv, history.csv")
    out.log("Next:")
    steps = [
        (f"scenecls evaluate {run_dir}", "scores on its held-out images"),
        (f"scenecls predict --model {run_dir} PHOTO...", "classify your own images"),
        (f"scenecls report {run_dir}", "one HTML page about the run"),
        (f"scenecls export {run_dir} --to onnx", "other formats, checked"),
    ]
    width = max(len(command) for command, _ in steps) + 2
    for command, what in steps:
        out.log(f"  {command:<{width}}# {what}")
