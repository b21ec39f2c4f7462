"""A trained classifier out of the tool: SavedModel (TensorFlow Serving), LiteRT (``.tflite``), ONNX and
OpenVINO, each checked against the Keras model before it is called done.

How each format is written is :mod:`scenecls.export_formats`; this module makes it safe and useful: an
export is written atomically, replaces only an earlier export of ours, and gets ``labels.txt`` beside it
(one class name a line, the convention of TF Hub and TFLite classifiers) and its metadata (input size,
that inputs are raw 0-255 RGB, classes, format, quantization).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scenecls import __version__
from scenecls.checksums import record_checksum
from scenecls.classifier import inference_function, input_size, load_model
from scenecls.command_options import EXPORT, EXPORT_FORMATS, FOLDER_FORMATS
from scenecls.errors import UsageError
from scenecls.export_formats import write_format
from scenecls.files import atomic_path, make_staging, read_head, remove_abandoned
from scenecls.runtimes import METADATA_SUFFIX, OPENVINO_GRAPH, OPENVINO_WEIGHTS, load_runtime, metadata_path
from scenecls.samples import sample_images

# Top-1 agreement with the Keras model below which an export is refused. Float exports compute the same
# function (differences of rounding only); float16 weights and int8 arithmetic change it a little.
THRESHOLDS = {
    "savedmodel": 0.99,
    "tflite": 0.99,
    "onnx": 0.99,
    "openvino": 0.99,
    "float16": 0.98,
    "int8": 0.90,
}
WRITTEN_BY = "scenecls export"  # in every export's metadata: what ``--output`` may replace
STAGING_KIND = "export"  # .<output>.<host>-<pid>.export beside the output while it is written


@dataclass
class Parity:
    images: int
    top1_agreement: float
    max_abs_diff: float
    threshold: float
    keras_accuracy: float | None = None
    exported_accuracy: float | None = None

    @property
    def ok(self) -> bool:
        return self.top1_agreement >= self.threshold


@dataclass
class ExportResult:
    path: Path
    format: str
    quantize: str | None
    bytes: int
    labels: Path
    metadata: Path
    parity: Parity | None
    card: Path | None = None  # MODEL_CARD.md, when one of ours could be written

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(path=str(self.path), labels=str(self.labels), metadata=str(self.metadata))
        data["card"] = None if self.card is None else str(self.card)
        return data


def default_output(model_path: Path, fmt: str, quantize: str | None = None) -> Path:
    """Beside the model: ``best.tflite``, ``best_int8.tflite``, ``best.onnx``, ``best_savedmodel/``,
    ``best_openvino/``."""
    stem = model_path.stem + (f"_{quantize}" if quantize else "")
    return model_path.with_name(f"{stem}_{fmt}" if fmt in FOLDER_FORMATS else f"{stem}.{fmt}")


def export_model(
    model,
    classes: Sequence[str],
    fmt: str,
    output: Path,
    *,
    quantize: str | None = None,
    representative: np.ndarray | None = None,
    source: Path | None = None,
) -> Path:
    """Write ``model`` as ``fmt`` to ``output`` (atomically: a failed export leaves nothing), with its
    labels and metadata. ``representative`` images (raw 0-255: what int8 quantization measures its
    value ranges on, TFLite's representative data set) are needed for ``int8``."""
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"--to takes one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    if quantize and fmt != "tflite":
        raise UsageError("--quantize applies to --to tflite only")
    if quantize == "int8" and (representative is None or not len(representative)):
        raise UsageError("--quantize int8 needs calibration images (the run's data, or --data)")
    output = Path(output)
    labels = (output if fmt in FOLDER_FORMATS else output.parent) / "labels.txt"
    labels_text = "".join(f"{name}\n" for name in classes)
    _check_replaceable(output, fmt, labels, labels_text)
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(output.parent, STAGING_KIND, output.name)  # left by an export that was killed
    scratch = make_staging(output.parent, output.name, STAGING_KIND)
    try:
        staged = scratch / output.name
        write_format(
            fmt, model, staged, classes=list(classes), quantize=quantize, representative=representative
        )
        if output.is_dir():  # an earlier export of ours (checked above): out of the way, then gone
            output.rename(scratch / "replaced")
        staged.replace(output)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if output.is_file():  # a single-file model: its checksum, checked whenever it is loaded
        record_checksum(output)
    for part in (OPENVINO_GRAPH, OPENVINO_WEIGHTS) if fmt == "openvino" else ():
        record_checksum(output / part)
    height, width = input_size(model)
    _write_text(labels, labels_text)
    _write_text(
        metadata_path(output),
        json.dumps(
            {
                "format": fmt,
                "quantize": quantize,
                "classes": list(classes),
                "input": {"height": height, "width": width, "channels": 3, "pixels": "RGB 0-255, float32"},
                "output": "probabilities (softmax), one per class in the order of classes",
                "source": str(source) if source else None,
                "scenecls": __version__,
                "written_by": WRITTEN_BY,
                "labels_sha256": hashlib.sha256(labels_text.encode()).hexdigest(),
            },
            indent=2,
        )
        + "\n",
    )
    return output


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _check_replaceable(output: Path, fmt: str, labels: Path, labels_text: str) -> None:
    """Refuse, before any work, an output this tool would not be sure to have written: replace only an
    earlier export of the same kind (its metadata says it is ours), never a user's folder or file, never
    through a link; and never write ``labels.txt`` or the metadata over a file this tool did not write."""
    what = {"savedmodel": "SavedModel folder", "openvino": "OpenVINO folder"}.get(fmt, f".{fmt} file")
    if output.is_symlink():
        raise UsageError(f"--output {output} is a link; give the path it points to, or a new path")
    parent = output.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"--output {output}: {parent} is a file, not a folder")
    if output.exists():
        shape_ok = (
            output.is_dir() if fmt in FOLDER_FORMATS else (output.is_file() and output.suffix == f".{fmt}")
        )
        if not (shape_ok and _is_our_export(output, fmt)):
            raise UsageError(
                f"--output {output} exists and is not a {what} that scenecls exported; it replaces only "
                f"its own exports: choose a new path (nothing was changed)"
            )
    if fmt in FOLDER_FORMATS:
        return  # labels and metadata go inside the folder, which is new or ours
    meta = metadata_path(output)
    if (meta.exists() or meta.is_symlink()) and not _is_our_export(output, fmt):
        raise UsageError(f"{meta} exists and scenecls did not write it; move it, or choose another --output")
    if labels.is_symlink() or (labels.exists() and not _labels_replaceable(labels, labels_text)):
        raise UsageError(
            f"{labels} exists with other class names and scenecls did not write it; move it, or export "
            f"into another folder (nothing was changed)"
        )


def _read_metadata(path: Path) -> dict | None:
    meta = metadata_path(path)
    if meta.is_symlink() or not meta.is_file():
        return None
    try:
        if meta.stat().st_size > 1024**2:  # metadata is a few hundred bytes: this is not ours
            return None
        data = json.loads(read_head(meta, 1024**2).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_our_export(path: Path, fmt: str) -> bool:
    """Whether ``path`` is an export this tool wrote: its metadata (inside a SavedModel, beside a file)
    says so, for this format."""
    data = _read_metadata(path)
    ours = data is not None and data.get("written_by") == WRITTEN_BY
    if ours and fmt in FOLDER_FORMATS:
        ours = (path / ("saved_model.pb" if fmt == "savedmodel" else OPENVINO_GRAPH)).is_file()
    return bool(ours and data.get("format") == fmt)


def _labels_replaceable(labels: Path, text: str) -> bool:
    """``labels.txt`` may be written when it already says the same, or when an export of ours in that
    folder recorded it as the file it wrote."""
    try:
        if not labels.is_file() or labels.stat().st_size > 16 * 1024**2:  # a FIFO, a device, a huge file
            return False
        current = read_head(labels, 16 * 1024**2)
    except OSError:
        return False
    if current == text.encode():
        return True
    digest = hashlib.sha256(current).hexdigest()
    for meta in labels.parent.glob(f"*{METADATA_SUFFIX}"):
        model = meta.with_name(meta.name[: -len(METADATA_SUFFIX)])
        data = _read_metadata(model)
        if data and data.get("written_by") == WRITTEN_BY and data.get("labels_sha256") == digest:
            return True
    return False


def check_parity(
    model, exported: Path, images: np.ndarray, labels: np.ndarray | None, *, fmt: str, quantize: str | None
) -> Parity:
    """Run ``images`` through the Keras model and the exported one: top-1 agreement, the largest
    probability difference, and both accuracies when ``labels`` are known."""

    forward = inference_function(model, 32)
    runtime = load_runtime(exported)
    expected = np.concatenate([forward(images[i : i + 32]) for i in range(0, len(images), 32)])
    got = np.concatenate([runtime.predict(images[i : i + 32]) for i in range(0, len(images), 32)])
    agree = float(np.mean(expected.argmax(axis=1) == got.argmax(axis=1)))
    parity = Parity(
        images=len(images),
        top1_agreement=agree,
        max_abs_diff=float(np.max(np.abs(expected - got))),
        threshold=THRESHOLDS[quantize or fmt],
    )
    if labels is not None and len(labels):
        parity.keras_accuracy = float(np.mean(expected.argmax(axis=1) == labels))
        parity.exported_accuracy = float(np.mean(got.argmax(axis=1) == labels))
    return parity


def export_run(
    model_ref: str | None,
    project: Path,
    fmt: str,
    *,
    output: Path | None = None,
    quantize: str | None = None,
    representative_images: int = EXPORT.representative_images,
    parity_images: int = EXPORT.parity,
    data: Path | None = None,
    reporter=None,
) -> ExportResult:
    """Export a run's best model (or a ``.keras`` file) and check it on images of its own data."""
    from scenecls.progress import NullReporter
    from scenecls.runs import model_classes, resolve_model

    reporter = reporter or NullReporter()
    model_path, run_dir = resolve_model(model_ref, project)
    if model_path.suffix != ".keras":
        raise UsageError(f"{model_path} is already an exported model; export a run or a .keras file")
    model = load_model(model_path)
    classes = model_classes(model_path, run_dir) or [f"class_{i}" for i in range(model.output_shape[-1])]
    size = input_size(model)
    target = output or default_output(model_path, fmt, quantize)
    need = max(parity_images, representative_images if quantize == "int8" else 0)
    images, labels, origin = sample_images(run_dir, data, size, need, classes, reporter=reporter)
    reporter.log(f"Exporting {model_path} as {fmt}{f' ({quantize})' if quantize else ''} to {target}")
    export_model(
        model, classes, fmt, target, quantize=quantize,
        representative=images[:representative_images] if quantize == "int8" else None,
        source=model_path,
    )  # fmt: skip
    parity = None
    if parity_images:
        count = min(parity_images, len(images))
        reporter.log(f"Checking the export against the Keras model on {count} {origin}")
        parity = check_parity(
            model,
            target,
            images[:count],
            None if labels is None else labels[:count],
            fmt=fmt,
            quantize=quantize,
        )
    from scenecls.model_card import write_export_card

    card = write_export_card(
        target, run_dir=run_dir, source=model_path, classes=list(classes), input_size=size,
        checked=None if parity is None else {"format": fmt, "quantize": quantize, **asdict(parity)},
    )  # fmt: skip
    if card is None:
        folder = target if target.is_dir() else target.parent
        reporter.warn(f"{folder / 'MODEL_CARD.md'} is not one scenecls wrote: left as it is (the card's "
                      "facts are in the export's metadata)")  # fmt: skip
    size_bytes = (
        sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        if target.is_dir()
        else target.stat().st_size
    )
    labels_file = (target if target.is_dir() else target.parent) / "labels.txt"
    return ExportResult(target, fmt, quantize, size_bytes, labels_file, metadata_path(target), parity, card)
