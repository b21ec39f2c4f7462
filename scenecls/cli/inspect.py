"""``scenecls inspect``: duplicates, leaks between splits, likely label errors and the images' make-up."""

from __future__ import annotations

from pathlib import Path

import click

from scenecls.cli.options import format_option, option
from scenecls.cli.output import Output
from scenecls.inspection.options import InspectOptions
from scenecls.units import count

GROUPS_SHOWN = 20  # duplicate groups printed per kind in the table (all are in the JSON, CSV and sheets)


@click.command("inspect")
@click.argument("data", metavar="[DATA]", required=False, type=click.Path(path_type=Path))
@option("backbone", InspectOptions)
@option("weights")
@option("image_size")
@option("batch_size", InspectOptions)
@option("folds", InspectOptions)
@option("hash_distance", InspectOptions)
@option("similarity", InspectOptions)
@click.option(
    "--no-features",
    is_flag=True,
    help="No model: exact copies, hash near copies and counts only (no label check).",
)
@click.option(
    "--top",
    type=click.IntRange(0),
    default=50,
    show_default=True,
    help="Likely label errors listed and drawn.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for the contact sheets and inspection.json  [default: inspect/DATA-NAME]",
)
@click.option(
    "--write-exclude",
    type=click.Path(path_type=Path),
    default=None,
    metavar="FILE",
    help="Write a list for train/sweep/finetune --exclude: the copies that leak into a later split, "
    "the training copies under conflicting labels, and the --drop-label-errors most doubtful "
    "training images.",
)
@click.option(
    "--drop-leaks/--keep-leaks",
    default=True,
    show_default=True,
    help="List the train (and val) copies of images in a later split.",
)
@click.option(
    "--drop-conflicts/--keep-conflicts",
    default=True,
    show_default=True,
    help="List the training copies of a picture that carries two labels.",
)
@click.option(
    "--drop-label-errors",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    metavar="N",
    help="List the N likeliest label errors of the training split.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Write the --write-exclude list even when it removes more than a tenth of a class or a split.",
)
@format_option("table", "json", "csv")
@click.pass_obj
def inspect(
    out: Output,
    data: Path | None,
    output: Path | None,
    write_exclude: Path | None,
    drop_leaks: bool,
    drop_conflicts: bool,
    drop_label_errors: int,
    top: int,
    fmt: str,
    no_features: bool,
    force: bool,
    **options,
) -> None:
    """Find what is wrong with a data set: exact and near duplicate images (within a split, across
    splits, under different labels), likely label errors, class balance, sizes, grayscale and
    unreadable files; a contact sheet of each kind of finding goes to the output folder.

    DATA is any data set --data takes (default: the fetch-data set). The images are only read.
    """
    from scenecls.data.exclude import check_replaceable
    from scenecls.data.exclude import write_exclude as write_list
    from scenecls.data.layout import check_data_path
    from scenecls.files import claim_folder
    from scenecls.inspection import MARKER, default_output, inspect_dataset, write_findings
    from scenecls.models.registry import check_weights, fetch_weights
    from scenecls.paths import data_source

    source = check_data_path(data_source(data))
    if not no_features:
        check_weights(options["weights"], options["backbone"])  # before every image is hashed
    folder = output or default_output(source)
    settings = InspectOptions(features=not no_features, **options)
    if settings.features:  # downloaded now, if they must be: before a folder is made or an image hashed
        fetch_weights(settings.backbone, settings.weights, settings.image_size, quiet=out.quiet)
    claim_folder(folder, MARKER, "scenecls inspect")  # refused before any work, not after
    if write_exclude is not None:
        check_replaceable(write_exclude)
    if settings.features:
        out.load_tensorflow()
    result = inspect_dataset(source, settings, reporter=out.reporter())
    written = write_findings(result, folder, top=top)
    excluded = None
    if write_exclude is not None:
        paths = result.exclusions(leaks=drop_leaks, conflicts=drop_conflicts, label_errors=drop_label_errors)
        too_many = result.excessive_share(paths)
        if too_many and not force:
            from scenecls.errors import UsageError

            raise UsageError(
                f"the exclude list would remove {too_many}: look at the contact sheets in {folder} first, "
                f"or pass --force to write it anyway (nothing was written to {write_exclude})"
            )
        why = (
            f"from scenecls inspect: leaks {'dropped' if drop_leaks else 'kept'}, conflicting labels "
            f"{'dropped' if drop_conflicts else 'kept'}, {count(drop_label_errors, 'label error')} at most"
        )
        excluded = write_list(write_exclude, paths, source, why=why)
    _render(out, result, fmt, top)
    out.log(f"Contact sheets and inspection.json in {folder} ({count(len(written) - 1, 'sheet')})")
    if excluded is not None:
        out.log(
            f"Exclude list: {count(excluded, 'image')} in {write_exclude} "
            f"(train with --exclude {write_exclude})"
        )


def _render(out: Output, result, fmt: str, top: int) -> None:
    if fmt == "json":
        data = result.to_dict()
        data["label_errors"]["candidates"] = data["label_errors"]["candidates"][:top] if top else []
        out.json(data)
    elif fmt == "csv":
        out.csv(
            ["finding", "number", "kind", "split", "label", "suggested", "probability", "path"],
            _csv_rows(result, top),
        )
    else:
        _tables(out, result, top)


def _csv_rows(result, top: int):
    for number, (path, reason) in enumerate(result.unreadable, 1):
        yield ["unreadable", number, reason, "", "", "", "", path]
    for number, group in enumerate(result.groups, 1):
        finding = (
            "conflicting_labels" if group.conflict else ("across_splits" if group.leak else "within_split")
        )
        for member in result.group_dict(group)["images"]:
            yield [finding, number, group.kind, member["split"], member["label"], "", "", member["path"]]
    for rank, suspect in enumerate(result.suspects[:top], 1):
        row = result.suspect_dict(rank, suspect)
        yield [
            "label_error",
            rank,
            "",
            row["split"],
            row["label"],
            row["suggested"],
            row["given_probability"],
            row["path"],
        ]


def _tables(out: Output, result, top: int) -> None:
    _summary_tables(out, result)
    _group_tables(out, result)
    if result.suspects and top:
        rows = [
            [r, row["split"], row["label"], row["suggested"], f"{row['given_probability']:.3f}", row["path"]]
            for r, row in ((r, result.suspect_dict(r, s)) for r, s in enumerate(result.suspects[:top], 1))
        ]
        out.table(
            ["rank", "split", "given", "suggested", "p(given)", "path"],
            rows,
            title=f"Likely label errors (top {len(rows)} of {len(result.suspects)})",
            numeric=["rank", "p(given)"],
        )
    if result.unreadable:
        out.table(
            ["path", "reason"],
            result.unreadable[:GROUPS_SHOWN],
            title=f"Unreadable files ({len(result.unreadable)})",
        )


def _summary_tables(out: Output, result) -> None:
    """What was found in numbers, the class balance and the images' sizes."""
    counts = result.counts()
    balance = result.balance()
    splits = list(balance)
    summary = [
        ["images", " / ".join(f"{s} {sum(balance[s].values())}" for s in splits)],
        ["unreadable", counts["unreadable"]],
        ["exact duplicate groups", counts["exact_groups"]],
        ["near duplicate groups", counts["near_groups"]],
        ["  within a split", counts["groups_within_split"]],
        ["  across splits (leaks)", counts["groups_across_splits"]],
        ["  with conflicting labels", counts["groups_conflicting_labels"]],
        ["likely label errors", f"{counts['likely_label_errors']} ({result.label_check})"],
    ]
    out.table(["", ""], summary, title=f"Inspection of {result.root}")
    rows = [[c, *(balance[s][c] for s in splits)] for c in result.classes]
    out.table(["class", *splits], rows, title="Class balance", numeric=splits)
    stats = result.statistics()
    rows = []
    for split in splits:
        s = stats[split]
        size = s["common_sizes"][0]
        rows.append(
            [
                split,
                f"{size['width']}x{size['height']} ({size['images']})",
                s["other_sizes"],
                f"{s['smallest_side']['min']} / {s['smallest_side']['median']:g}",
                f"{s['aspect_ratio']['min']:.2f}-{s['aspect_ratio']['max']:.2f}",
                s["elongated"],
                s["grayscale"],
            ]
        )
    columns = ["split", "most common size", "other sizes", "smallest side min / median", "aspect"]
    out.table(
        [*columns, "elongated", "grayscale"],
        rows,
        title="Images",
        numeric=["other sizes", "elongated", "grayscale"],
    )


def _group_tables(out: Output, result) -> None:
    """The duplicate groups of each kind, the first GROUPS_SHOWN of each (all are in the JSON)."""
    for title, groups in (
        ("across splits (leaks)", result.leaks()),
        ("with conflicting labels", result.conflicts()),
        ("within a split", [g for g in result.within() if not g.conflict]),
    ):
        if not groups:
            continue
        rows = [
            [
                n,
                g.kind,
                "; ".join(f"{m['split']}/{m['label']}: {m['path']}" for m in result.group_dict(g)["images"]),
            ]
            for n, g in enumerate(groups[:GROUPS_SHOWN], 1)
        ]
        more = (
            f" (first {GROUPS_SHOWN} of {len(groups)}; all in inspection.json)"
            if len(groups) > GROUPS_SHOWN
            else ""
        )
        out.table(["#", "kind", "images"], rows, title=f"Duplicate groups {title}{more}")
