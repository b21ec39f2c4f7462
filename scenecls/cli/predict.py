"""``scenecls predict``: classify image files with a trained model."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from scenecls.cli.options import format_option, option, precision_options, project_option, trust_model_option
from scenecls.cli.output import Output, dumps, exit_for_failed_inputs, say_model
from scenecls.cli.types import FiniteFloatRange
from scenecls.command_options import PredictOptions
from scenecls.errors import UsageError


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
@option("every", PredictOptions)
@click.option(
    "--segments",
    is_flag=True,
    help="Videos: print the scene segments (start, end, class, mean confidence) instead of every frame.",
)
@option("smooth", PredictOptions)
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
    every: float,
    segments: bool,
    smooth: int,
    batch_size: int,
    trust_model: bool,
    mixed_precision: str,
    jit: str,
    project: Path,
    fmt: str,
) -> None:
    """Predict the class of each image in PATHS: files, folders, globs, http(s) image URLs, videos, or -
    to read paths from stdin.

    A video gets a row per frame sampled every --every seconds (with its time), or with --segments its
    scenes. An unreadable input gets an error row and the rest go on; the exit code is 0 when all
    succeeded, 3 when some inputs failed (or a video was read only up to a damaged part) and 4 when
    every one did.
    """
    from scenecls.predict import expand_inputs
    from scenecls.video import is_video_path

    inputs = expand_inputs(paths, stdin=sys.stdin if "-" in paths else None)
    videos = [path for path, error in inputs if error is None and is_video_path(path) and "://" not in path]
    if videos:
        from scenecls.video import check_installed

        check_installed()
    if segments and len(videos) != len(inputs):
        raise UsageError("--segments takes videos only: classify the images in a separate call")
    runtime, classes = _load(out, model_ref, keras, tta, min_confidence, batch_size, trust_model,
                             mixed_precision, jit, project, fmt)  # fmt: skip
    from scenecls.answers import abstain
    from scenecls.predict import predict_inputs

    rows = predict_inputs(runtime, inputs, classes, batch_size=batch_size, top_k=top_k, every=every,
                          reporter=out.reporter())  # fmt: skip
    if min_confidence is not None:
        rows = (abstain(row, min_confidence) for row in rows)
    if segments:
        _print_segments(out, rows, every, smooth, fmt, len(inputs))
        return
    _print_rows(out, rows, top_k, min_confidence is not None, bool(videos), fmt, len(inputs))


def _load(out, model_ref, keras, tta, min_confidence, batch_size, trust_model, mixed_precision, jit, project,
          fmt):  # fmt: skip
    """The runtime to predict with and its classes, said on stderr."""
    from scenecls.calibration import UNKNOWN
    from scenecls.runs import classes_for, resolve_model
    from scenecls.runtimes import FlipAveraged, fast_model, load_runtime, needs_tensorflow

    model_path, run_dir = resolve_model(model_ref, project)
    if not keras and not (model_ref and Path(model_ref).is_file()):  # a run: its best.tflite if fresh
        model_path = fast_model(model_path, warn=out.warn)
    if needs_tensorflow(model_path):  # .tflite and .onnx run without it: a fraction of a second
        out.load_tensorflow()
    say_model(out, model_path, run_dir, fmt)
    precision, compiled = inference_settings(out, model_path, mixed_precision, jit)
    runtime = load_runtime(
        model_path, batch_size=batch_size, precision=precision, jit=compiled, trust_model=trust_model
    )
    if tta:
        runtime = FlipAveraged(runtime)
    classes = classes_for(model_path, run_dir, runtime.num_classes)
    if min_confidence is not None and any(name.lower() == UNKNOWN for name in classes):
        out.warn(
            f"the model has a class named {UNKNOWN!r}: the `unknown` column (true or false) says which "
            f"answers are abstentions below --min-confidence"
        )
    return runtime, classes


def _print_rows(out: Output, rows, top_k: int, floor: bool, timed: bool, fmt: str, total: int) -> None:
    """One row per image and per sampled frame, streamed for jsonl and csv."""
    header = ["path", *(["time"] if timed else []), "label", "confidence"]
    header += [
        *(f"top{i}" for i in range(2, top_k + 1)),
        "error",
        *(["unknown", "best_guess"] if floor else []),
    ]
    if fmt == "csv":
        out.csv_row(header)
    collected, tally = [], _Tally()
    for row in rows:
        tally.add(row)
        if fmt == "jsonl":
            click.echo(dumps(row.to_dict()))
        elif fmt == "csv":
            out.csv_row(_flat_row(row, top_k, floor, timed))
        else:
            collected.append(row)
    if fmt == "json":
        out.json([row.to_dict() for row in collected])
    elif fmt == "table":
        out.table(header, [_flat_row(row, top_k, floor, timed) for row in collected], numeric=["confidence"])
    tally.exit(out, total)


def _print_segments(out: Output, rows, every: float, smooth: int, fmt: str, total: int) -> None:
    """Each video's scenes: its samples gathered, smoothed and merged (a damaged one's, up to the damage)."""
    from scenecls.video import duration, segments

    by_video: dict[str, list] = {}
    tally = _Tally()
    for row in rows:
        tally.add(row)
        by_video.setdefault(row.path, []).append(row)
    found = []
    for path, samples in by_video.items():
        damaged = next((s.error for s in samples if not s.ok), None)
        end = None if damaged else duration(path)
        found += [
            seg.to_dict() | {"error": None} for seg in segments(samples, every=every, smooth=smooth, end=end)
        ]
        if damaged:
            found.append({"path": path, "start": None, "end": None, "label": None, "confidence": None,
                          "samples": None, "error": damaged})  # fmt: skip
    columns = ["path", "start", "end", "label", "confidence", "samples", "error"]
    if fmt in ("json", "jsonl"):
        if fmt == "json":
            out.json(found)
        else:
            for item in found:
                click.echo(dumps(item))
    elif fmt == "csv":
        out.csv(columns, [[item[c] for c in columns] for item in found])
    else:
        cells = [[_rounded(item[c]) for c in columns] for item in found]
        out.table(columns, cells, numeric=["start", "end", "confidence", "samples"])
    tally.exit(out, total)


class _Tally:
    """Inputs that failed wholly or in part, for the exit code: an image is one row, a video many."""

    def __init__(self) -> None:
        self.failed_images = 0
        self.video_good: set[str] = set()
        self.video_bad: set[str] = set()

    def add(self, row) -> None:
        if hasattr(row, "time"):  # a video's sample
            (self.video_good if row.ok else self.video_bad).add(row.path)
        elif not row.ok:
            self.failed_images += 1

    def exit(self, out: Output, total: int) -> None:
        partly = len(self.video_bad & self.video_good)
        failed = self.failed_images + len(self.video_bad) - partly
        exit_for_failed_inputs(out, failed, total, "classified", partly=partly)


def _rounded(value):
    return round(value, 4) if isinstance(value, float) else ("" if value is None else value)


def _flat_row(prediction, top_k: int, floor: bool, timed: bool = False) -> list:
    others = [f"{label} {conf:.3f}" for label, conf in (prediction.top or [])[1:]]
    others += [""] * (top_k - 1 - len(others))
    confidence = None if prediction.confidence is None else round(prediction.confidence, 4)
    moment = [round(prediction.time, 3) if hasattr(prediction, "time") else ""] if timed else []
    row = [prediction.path, *moment, prediction.label or "", confidence, *others, prediction.error or ""]
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
