"""``scenecls predict``: classify image files with a trained model."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from scenecls.cli.options import format_option, option, precision_options, project_option, trust_model_option
from scenecls.cli.output import Output, dumps, exit_for_failed_inputs, say_model
from scenecls.cli.types import FiniteFloatRange
from scenecls.command_options import PredictOptions


@click.command("predict")
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--model",
    "model_ref",
    default=None,
    metavar="RUN|FILE",
    help="Run folder or name, a .keras file, or an exported .tflite, .onnx or SavedModel folder  "
    "[default: the latest run]",
)
@click.option(
    "--keras",
    is_flag=True,
    help="Use a run's best.keras even when its best.tflite (the same model, faster) is there.",
)
@click.option("--tta", is_flag=True, help="Average each image's prediction with its mirror image's.")
@option("top_k", PredictOptions)
@click.option(
    "--min-confidence",
    type=FiniteFloatRange(0, 1),
    default=None,
    metavar="P",
    help="Answer unknown when the top class's confidence (calibrated on the run's validation images) "
    "is below P; the top class stays in best_guess. Choose P from evaluate's accuracy against coverage.",
)
@option("batch_size", PredictOptions)
@trust_model_option
@precision_options
@project_option()
@format_option("table", "json", "jsonl", "csv")
@click.pass_obj
def predict(
    out: Output,
    paths: tuple[str, ...],
    model_ref: str | None,
    keras: bool,
    tta: bool,
    top_k: int,
    min_confidence: float | None,
    batch_size: int,
    trust_model: bool,
    mixed_precision: str,
    jit: str,
    project: Path,
    fmt: str,
) -> None:
    """Predict the class of each image in PATHS: files, folders, globs, or - to read paths from stdin.

    An unreadable file gets an error row and the rest go on; the exit code is 0 when all succeeded,
    3 when some inputs failed and 4 when every one did.
    """
    from scenecls.calibration import UNKNOWN
    from scenecls.errors import ModelError
    from scenecls.predict import abstain, expand_inputs, predict_files
    from scenecls.runs import model_classes, resolve_model
    from scenecls.runtimes import FlipAveraged, fast_model, load_runtime, needs_tensorflow

    model_path, run_dir = resolve_model(model_ref, project)
    if not keras and not (model_ref and Path(model_ref).is_file()):  # a run: its best.tflite if fresh
        model_path = fast_model(model_path, warn=out.warn)
    if needs_tensorflow(model_path):  # .tflite and .onnx run without it: a fraction of a second
        out.load_tensorflow()
    say_model(out, model_path, run_dir, fmt)
    inputs = expand_inputs(paths, stdin=sys.stdin if "-" in paths else None)
    precision, compiled = inference_settings(out, model_path, mixed_precision, jit)
    runtime = load_runtime(
        model_path, batch_size=batch_size, precision=precision, jit=compiled, trust_model=trust_model
    )
    if tta:
        runtime = FlipAveraged(runtime)
    classes = model_classes(model_path, run_dir)
    if classes is not None and len(classes) != runtime.num_classes:
        raise ModelError(
            f"{model_path} predicts {runtime.num_classes} classes but its labels name {len(classes)}; "
            f"the two files do not belong together"
        )
    classes = classes or [f"class_{i}" for i in range(runtime.num_classes)]
    if min_confidence is not None and any(name.lower() == UNKNOWN for name in classes):
        out.warn(
            f"the model has a class named {UNKNOWN!r}: the `unknown` column (true or false) says which "
            f"answers are abstentions below --min-confidence"
        )
    predictions = predict_files(
        runtime, inputs, classes, batch_size=batch_size, top_k=top_k, reporter=out.reporter()
    )
    failed = 0
    collected = []
    floor = min_confidence is not None
    header = ["path", "label", "confidence", *(f"top{i}" for i in range(2, top_k + 1)), "error"]
    header += ["unknown", "best_guess"] if floor else []
    if fmt == "csv":
        out.csv_row(header)
    for prediction in predictions:
        if floor:
            prediction = abstain(prediction, min_confidence)
        failed += not prediction.ok
        if fmt == "jsonl":
            click.echo(dumps(prediction.to_dict()))
        elif fmt == "csv":
            out.csv_row(_flat_row(prediction, top_k, floor))
        else:
            collected.append(prediction)
    if fmt == "json":
        out.json([p.to_dict() for p in collected])
    elif fmt == "table":
        out.table(header, [_flat_row(p, top_k, floor) for p in collected], numeric=["confidence"])
    exit_for_failed_inputs(out, failed, len(inputs), "classified")


def _flat_row(prediction, top_k: int, floor: bool) -> list:
    others = [f"{label} {conf:.3f}" for label, conf in prediction.top[1:]]
    others += [""] * (top_k - 1 - len(others))
    confidence = None if prediction.confidence is None else round(prediction.confidence, 4)
    row = [prediction.path, prediction.label or "", confidence, *others, prediction.error or ""]
    if floor:  # an image that could not be read has neither
        unknown = "" if prediction.unknown is None else str(prediction.unknown).lower()
        row += [unknown, prediction.best_guess or ""]
    return row


def inference_settings(out: Output, model_path: Path, mixed_precision: str, jit: str) -> tuple[str, bool]:
    """``(precision, jit)`` for running ``model_path``: ``auto`` resolved for this machine. Exported
    models run as they were exported: asking them for anything else is said, once, on stderr."""
    from scenecls.runtimes import model_kind

    if model_kind(model_path) != "keras":
        if mixed_precision not in ("auto", "off") or jit == "on":
            out.warn(
                f"--mixed-precision and --jit apply to .keras models; {model_path.name} runs as exported"
            )
        return "off", False
    from scenecls.precision import jit_enabled, resolve_precision

    return resolve_precision(mixed_precision), jit_enabled(jit)
