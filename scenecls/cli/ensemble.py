"""``scenecls ensemble``: several finished runs as one model that averages their probabilities."""

from __future__ import annotations

from pathlib import Path

import click

from scenecls.cli.options import fail_under_option, format_option, option, project_option
from scenecls.cli.output import Output, accuracy_cell, check_fail_under
from scenecls.command_options import EnsembleOptions


@click.command("ensemble")
@click.argument("runs_", metavar="RUN RUN [RUN...]", nargs=-1, required=True)
@option("name", EnsembleOptions)
@click.option("--no-export", is_flag=True, help="Do not write best.tflite for a fast predict.")
@option("batch_size", EnsembleOptions)
@fail_under_option()
@project_option()
@format_option("table", "json")
@click.pass_obj
def ensemble(
    out: Output,
    runs_: tuple[str, ...],
    name: str,
    no_export: bool,
    batch_size: int,
    fail_under: float | None,
    project: Path,
    fmt: str,
) -> None:
    """Average the best models of finished RUNs (folders or names) into a new run folder.

    Runs of the same recipe with other --seed values make different mistakes: their mean is right more
    often (0.4 to 1.5 points of test accuracy for three MobileNetV2 seeds on intel-dev), at the cost of
    a prediction per member. The members must predict the same classes at the same input size. The new
    run is tested on the first member's test split and works with evaluate, predict, export and plot;
    it is never judged on its members' validation images, which trained one another.

    \b
      scenecls train --seed 0 && scenecls train --seed 1 && scenecls train --seed 2
      scenecls ensemble train train2 train3
      scenecls predict photo.jpg            # the latest run: the ensemble
      scenecls sweep --backbones mobilenet_v2 --unfreeze 5 --dense 3 --seeds 0,1,2 --ensemble  # all in one
    """
    out.load_tensorflow()
    from scenecls.ensemble import make_ensemble

    result = make_ensemble(
        list(runs_), project, name=name, export=not no_export, batch_size=batch_size,
        reporter=out.reporter(),
    )  # fmt: skip
    if fmt == "json":
        out.json(result.to_dict())
    else:
        members = zip(result.members, result.member_test_accuracy, strict=True)
        rows = [[member, accuracy_cell(acc)] for member, acc in members]
        rows.append([f"ensemble ({result.run_dir})", accuracy_cell(result.test_accuracy)])
        out.table(["run", "test accuracy"], rows, title=f"Ensemble of {len(result.members)} runs",
                  numeric=["test accuracy"])  # fmt: skip
    check_fail_under(out, result.test_accuracy, fail_under, "test accuracy")
