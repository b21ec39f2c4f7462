"""``scenecls evaluate``: metrics of a trained model on labelled images."""

from __future__ import annotations

from pathlib import Path

import click

from scenecls.cli.options import (
    fail_under_option,
    format_option,
    option,
    precision_options,
    project_option,
    tracking_from,
    tracking_options,
    trust_model_option,
)
from scenecls.cli.output import Output, check_fail_under
from scenecls.command_options import EvaluateOptions


@click.command("evaluate")
@click.argument("model", required=False)
@click.option("--data", type=click.Path(path_type=Path), help="Data set  [default: the run's]")
@click.option(
    "--split",
    type=click.Choice(["test", "val", "train"]),
    default=None,
    help="[default: test when the data has one, else val]",
)
@option("top_k", EvaluateOptions)
@option("batch_size", EvaluateOptions)
@click.option("--tta", is_flag=True, help="Average each image's prediction with its mirror image's.")
@trust_model_option
@precision_options
@fail_under_option()
@project_option()
@tracking_options
@format_option()
@click.pass_obj
def evaluate(
    out: Output,
    model: str | None,
    data: Path | None,
    split: str | None,
    top_k: int,
    batch_size: int,
    tta: bool,
    trust_model: bool,
    mixed_precision: str,
    jit: str,
    fail_under: float | None,
    project: Path,
    fmt: str,
    **tracking_choice,
) -> None:
    """Accuracy, top-k, per-class precision/recall/F1 and the confusion matrix.

    MODEL is a run folder or name (default: the latest run), a .keras file, or an exported .tflite,
    .onnx or SavedModel folder; a model outside a run folder needs --data. Results are also saved in
    the run folder (evaluation.json, predictions.csv).
    """
    from scenecls.cli.predict import inference_settings
    from scenecls.evaluation import evaluate_run
    from scenecls.runs import resolve_model
    from scenecls.runtimes import needs_tensorflow

    tracking = tracking_from(out, tracking_choice, project)
    model_path, run_dir = resolve_model(model, project)
    if needs_tensorflow(model_path):
        out.load_tensorflow()
    precision, compiled = inference_settings(out, model_path, mixed_precision, jit)
    outcome = evaluate_run(
        str(model_path),
        project,
        data=data,
        split=split,
        top_k=top_k,
        batch_size=batch_size,
        tta=tta,
        trust_model=trust_model,
        precision=precision,
        jit=compiled,
        reporter=out.reporter(),
    )
    ev = outcome.evaluation
    if tracking is not None and run_dir is not None:
        from scenecls.tracking.mlflow_run import log_run_folder

        missed = log_run_folder(run_dir, tracking, out.reporter(), evaluation=ev.to_dict()).missed()
        if missed:
            out.warn(f"MLflow did not get {', '.join(missed)}; send it with: scenecls log-mlflow {run_dir}")
    _render(out, outcome, fmt)
    check_fail_under(out, ev.accuracy, fail_under, f"{ev.split} accuracy")


def _render(out: Output, outcome, fmt: str) -> None:
    ev = outcome.evaluation
    if fmt == "json":
        out.json({"model": str(outcome.model_path), **ev.to_dict()})
        return
    columns = ["class", "precision", "recall", "f1", "support"]
    rows = [[r["class"], r["precision"], r["recall"], r["f1"], r["support"]] for r in ev.per_class]
    rows += [
        [f"{name} avg", avg["precision"], avg["recall"], avg["f1"], ev.images]
        for name, avg in (("macro", ev.macro), ("weighted", ev.weighted))
    ]
    if fmt == "csv":
        out.csv(columns, rows)
        return
    title = (
        f"{ev.split}: {ev.images} images, accuracy {ev.accuracy:.4f}, top-{ev.top_k} "
        f"{ev.top_k_accuracy:.4f}, loss {ev.loss:.4f}"
    )
    out.table(
        columns,
        rows,
        title=title,
        numeric=["precision", "recall", "f1", "support"],
    )
    out.table(
        ["true \\ predicted", *ev.classes],
        [[cls, *counts] for cls, counts in zip(ev.classes, ev.confusion, strict=True)],
        title="Confusion matrix",
        numeric=ev.classes,
    )
    _render_trust(out, ev)
    for path in outcome.saved:
        out.log(f"Saved {path}")


def _render_trust(out: Output, ev) -> None:
    """How far the confidence can be trusted: calibration, and accuracy against coverage."""
    if not ev.calibration:
        return
    scores = ev.calibration
    before = scores.get("before")
    rows = [
        [name, *([before[key]] if before else []), scores[key]]
        for name, key in (("expected calibration error", "ece"), ("negative log-likelihood", "nll"),
                          ("Brier score", "brier"))
    ]  # fmt: skip
    temperature = scores.get("temperature")
    columns = [
        "",
        *(["before (T = 1)"] if before else []),
        "as is" if before is None else f"T = {temperature:.3f}",
    ]
    out.table(columns, rows, title="Calibration (lower is better)", numeric=columns[1:])
    out.table(
        ["min confidence", "coverage", "accuracy"],
        [[r["min_confidence"], r["coverage"], r["accuracy"]] for r in ev.coverage],
        title="Accuracy against coverage (predict --min-confidence answers unknown below it)",
        numeric=["min confidence", "coverage", "accuracy"],
    )
