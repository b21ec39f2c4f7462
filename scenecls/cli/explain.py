"""``scenecls explain``: Grad-CAM heat maps of why a run's model chose each image's class."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from scenecls.cli.options import format_option, option, project_option
from scenecls.cli.output import Output, exit_for_failed_inputs, say_model
from scenecls.command_options import ExplainOptions


@click.command("explain")
@click.argument("model_ref", metavar="RUN")
@click.argument("paths", metavar="IMAGE...", nargs=-1, required=True)
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None, help="[default: RUN/explain]")
@option("top_k", ExplainOptions)
@option("batch_size", ExplainOptions)
@project_option()
@format_option("table", "json", "csv")
@click.pass_obj
def explain(
    out: Output,
    model_ref: str,
    paths: tuple[str, ...],
    output: Path | None,
    top_k: int,
    batch_size: int,
    project: Path,
    fmt: str,
) -> None:
    """Draw where in each IMAGE the evidence for its predicted class lies (Grad-CAM, at the finest map
    the backbone's last stage keeps): the photo beside its heat map, the top classes below, as
    IMAGE.cam.png in the output folder.

    RUN is a run folder or name, or a .keras file: explaining needs the Keras model, not an export.
    IMAGE takes files, folders, globs or - (paths on stdin), as predict does. Exit codes as predict's.
    """
    from scenecls import runs
    from scenecls.errors import ModelError
    from scenecls.predict import expand_inputs
    from scenecls.runtimes import model_kind

    model_path, run_dir = runs.resolve_model(model_ref, project)
    if model_kind(model_path) != "keras":
        raise ModelError(
            f"{model_path} is an exported model; explaining follows gradients through the Keras model: "
            f"give the run, or its best.keras"
        )
    say_model(out, model_path, run_dir, fmt)
    inputs = expand_inputs(paths, stdin=sys.stdin if "-" in paths else None)
    folder = output or (run_dir or model_path.parent) / "explain"
    out.load_tensorflow()
    from scenecls.classifier import load_model
    from scenecls.explain import explain_into

    model = load_model(model_path)
    classes = runs.model_classes(model_path, run_dir)
    classes = classes or [f"class_{i}" for i in range(int(model.output_shape[-1]))]
    results = explain_into(model, inputs, classes, folder, top_k=top_k, batch_size=batch_size,
                           reporter=out.reporter())  # fmt: skip
    failed = sum(item.error is not None for item in results)
    rows = [[item.path, *(item.top[0] if item.top else ("", None)), str(item.written or ""), item.error or ""]
            for item in results]  # fmt: skip
    header = ["path", "label", "confidence", "heatmap", "error"]
    if fmt == "json":
        out.json([item.to_dict() for item in results])
    elif fmt == "csv":
        out.csv(header, rows)
    else:
        out.table(header, rows, numeric=["confidence"])
        out.log(f"Heat maps in {folder}")
    exit_for_failed_inputs(out, failed, len(results), "explained")
