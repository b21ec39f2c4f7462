"""``scenecls export``: a trained model as a SavedModel, LiteRT (.tflite), ONNX or OpenVINO, checked."""

from __future__ import annotations

from pathlib import Path

import click

from scenecls.cli.options import option, project_option
from scenecls.cli.output import Output
from scenecls.command_options import EXPORT_FORMATS, QUANTIZATIONS, ExportOptions
from scenecls.units import byte_size


@click.command("export")
@click.argument("model", required=False)
@click.option(
    "--to",
    "target",
    type=click.Choice(EXPORT_FORMATS),
    default="tflite",
    show_default=True,
    help="Model format. savedmodel: TensorFlow Serving; tflite: LiteRT (fast predict without TensorFlow); "
    "onnx: ONNX Runtime; openvino: OpenVINO (a folder with model.xml and model.bin).",
)
@click.option("--output", "-o", type=click.Path(path_type=Path), help="[default: beside the model]")
@click.option(
    "--quantize",
    type=click.Choice(QUANTIZATIONS),
    default=None,
    help="tflite only: float16 weights, or int8 calibrated on the run's own images.",
)
@option("representative_images", ExportOptions)
@option("parity", ExportOptions)
@click.option("--data", type=click.Path(path_type=Path), help="Images for the check  [default: the run's]")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(("table", "json", *EXPORT_FORMATS)),
    default="table",
    show_default=True,
    metavar="[table|json]",
    help="How to print results on stdout (a model format here is taken as --to, as before).",
)
@click.option("--json", "as_json", is_flag=True, hidden=True)  # the old spelling of --format json
@project_option()
@click.pass_obj
def export(
    out: Output,
    model: str | None,
    target: str,
    output: Path | None,
    quantize: str | None,
    representative_images: int,
    parity: int,
    data: Path | None,
    fmt: str,
    as_json: bool,
    project: Path,
) -> None:
    """Export MODEL (a run folder or name, or a .keras file; default: the latest run's best model).

    Writes labels.txt and the model's metadata beside it, then runs images through the exported model
    and the Keras model and compares them; exits 1 when top-1 agreement is below the format's threshold
    (0.99 for float exports, 0.98 float16, 0.90 int8).
    """
    if fmt in EXPORT_FORMATS:  # before --to, --format named the model format
        target, fmt = fmt, "table"
    as_json = as_json or fmt == "json"
    out.load_tensorflow()
    from scenecls.errors import SceneclsError
    from scenecls.export import export_run

    result = export_run(
        model, project, target, output=output, quantize=quantize,
        representative_images=representative_images,
        parity_images=parity, data=data, reporter=out.reporter(),
    )  # fmt: skip
    parity = result.parity
    if as_json:
        out.json(result.to_dict())
    else:
        rows = [
            ["file", str(result.path)],
            ["size", byte_size(result.bytes)],
            ["labels", str(result.labels)],
            ["model card", str(result.card) if result.card else "not written (see the warning)"],
        ]
        if parity is not None:
            rows += [
                ["checked on", f"{parity.images} images"],
                ["top-1 agreement", f"{parity.top1_agreement:.4f} (threshold {parity.threshold:g})"],
                ["max probability difference", f"{parity.max_abs_diff:.2e}"],
            ]
            if parity.keras_accuracy is not None:
                rows += [
                    ["accuracy, Keras", f"{parity.keras_accuracy:.4f}"],
                    ["accuracy, exported", f"{parity.exported_accuracy:.4f}"],
                ]
        out.table(
            ["", ""],
            rows,
            title=f"Exported ({result.format}{f', {result.quantize}' if result.quantize else ''})",
        )
    if parity is not None and not parity.ok:
        raise SceneclsError(
            f"the export disagrees with the Keras model: top-1 agreement {parity.top1_agreement:.4f} is "
            f"below {parity.threshold:g} for {result.quantize or result.format}; the file is kept at "
            f"{result.path}"
        )
