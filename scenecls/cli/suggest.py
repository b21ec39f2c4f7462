"""``scenecls suggest``: which unlabelled images to label next."""

from __future__ import annotations

from pathlib import Path

import click

from scenecls.cli.options import format_option, option, project_option
from scenecls.cli.output import Output
from scenecls.command_options import SuggestOptions


@click.command("suggest")
@click.argument("run_ref", metavar="RUN")
@click.argument("folder", type=click.Path(path_type=Path), metavar="DIR")
@option("budget", SuggestOptions)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for the CSV, the contact sheet and the class folders  [default: suggestions/<DIR's name>]",
)
@click.option("--copy", is_flag=True, help="Copy the images into the class folders instead of linking them.")
@option("strategy", SuggestOptions)
@option("batch_size", SuggestOptions)
@project_option()
@format_option("table", "json", "csv")
@click.pass_obj
def suggest(out: Output, run_ref: str, folder: Path, budget: int, output: Path | None, copy: bool,
            strategy: str, batch_size: int, project: Path, fmt: str) -> None:  # fmt: skip
    """Rank the unlabelled images in DIR for labelling with RUN's model: the ones it is least sure of and
    most unlike the labelled images and each other (--strategy uncertain: the least sure alone). Copies of
    labelled images are never suggested.

    Writes suggestions.csv (rank, path, suggested class, confidence, margin), suggestions.png (a contact
    sheet) and one folder per suggested class holding links (or --copy copies) to the images: sort them
    by moving the links, then add the images to the data set. DIR itself is only read.
    """
    out.load_tensorflow()
    from scenecls.runs import trained_run
    from scenecls.suggest import default_output
    from scenecls.suggest import suggest as rank_images

    run_dir = trained_run(run_ref, project)
    output = output or default_output(run_dir, folder)
    result = rank_images(run_dir, folder, budget, output=output, copy=copy, strategy=strategy,
                         batch_size=batch_size, reporter=out.reporter())  # fmt: skip
    rows = [
        [s.rank, s.path, s.suggested, round(s.confidence, 4), round(s.margin, 4)] for s in result.suggestions
    ]
    columns = ["rank", "path", "suggested", "confidence", "margin"]
    if fmt == "json":
        out.json(result.to_dict())
    elif fmt == "csv":
        out.csv(columns, rows)
    else:
        out.table(
            columns, rows, title=f"Label these next ({len(rows)} of {result.pool})", numeric=columns[3:]
        )
    if result.unreadable:
        out.warn(f"{result.unreadable} of the unlabelled images could not be read and were passed over")
    out.log(f"Suggestions in {output}: {', '.join(p.name for p in result.files)}")
