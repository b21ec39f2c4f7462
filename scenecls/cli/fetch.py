"""``scenecls fetch-data``: put a data set where ``train`` will find it."""

from __future__ import annotations

from pathlib import Path

import click

from scenecls.cli.options import format_option
from scenecls.cli.output import Output


@click.command("fetch-data")
@click.option("--url", help="Download this archive instead of the Intel data set from Kaggle.")
@click.option(
    "--from",
    "source",
    type=click.Path(path_type=Path),
    help="Use a local .zip/.tar.gz or an already-extracted folder (offline machines).",
)
@click.option(
    "--dest",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where to put the data set  [default: $SCENECLS_HOME/datasets/intel]",
)
@click.option("--sha256", help="Expected SHA-256 of the archive; a mismatch is an error.")
@click.option("--force", is_flag=True, help="Fetch again and replace a data set already there.")
@click.option("--keep-archive", is_flag=True, help="Keep the downloaded archive after unpacking.")
@format_option()
@click.pass_obj
def fetch_data(
    out: Output,
    url: str | None,
    source: Path | None,
    dest: Path | None,
    sha256: str | None,
    force: bool,
    keep_archive: bool,
    fmt: str,
) -> None:
    """Download (or copy) and unpack a data set, safely and resumably.

    By default the Intel Image Classification set is downloaded from Kaggle; credentials from
    KAGGLE_USERNAME/KAGGLE_KEY or ~/.kaggle/kaggle.json are sent when present. Kaggle's nested
    seg_train/seg_train layout becomes train/, test/ and pred/. An interrupted download resumes on
    the next run; an interrupted unpack leaves nothing behind.
    """
    from scenecls.data.fetch import fetch_dataset
    from scenecls.paths import default_dataset_dir

    if url and source:
        raise click.UsageError("--url and --from exclude each other")
    dest = dest or default_dataset_dir()
    result = fetch_dataset(
        dest,
        url=url,
        source=source,
        sha256=sha256,
        force=force,
        keep_archive=keep_archive,
        reporter=out.reporter(),
    )
    if result.already_present:
        out.log(f"{result.dest} already holds a data set; use --force to fetch it again.")
    else:
        out.log(f"Data set ready in {result.dest}")
    render_counts(out, result.counts, fmt, dest=result.dest, already=result.already_present)


def render_counts(
    out: Output, counts: dict[str, dict[str, int]], fmt: str, *, dest: Path, already: bool
) -> None:
    if fmt == "json":
        out.json({"dest": str(dest), "already_present": already, "counts": counts})
        return
    rows = [(split, cls, n) for split, per_class in counts.items() for cls, n in per_class.items()]
    if fmt == "csv":
        out.csv(("split", "class", "images"), rows)
        return
    splits = list(counts)
    # Unlabelled images (Intel's pred/) after the classes.
    classes = sorted(
        {cls for per_class in counts.values() for cls in per_class}, key=lambda c: (c.startswith("("), c)
    )
    table_rows = [
        [cls, *(counts[s].get(cls, 0) for s in splits), sum(counts[s].get(cls, 0) for s in splits)]
        for cls in classes
    ]
    table_rows.append(
        [
            "total",
            *(sum(counts[s].values()) for s in splits),
            sum(sum(c.values()) for c in counts.values()),
        ]
    )
    out.table(["class", *splits, "total"], table_rows, title="Images", numeric=[*splits, "total"])
