"""``scenecls cache``: what the caches hold on disk, and clearing them."""

from __future__ import annotations

import time

import click

from scenecls.cli.options import format_option
from scenecls.cli.output import Output
from scenecls.cli.types import FiniteFloatRange
from scenecls.units import byte_size


@click.command("cache")
@click.option("--clear", is_flag=True, help="Remove the entries listed (never a build in progress).")
@click.option(
    "--stale",
    is_flag=True,
    help="Only entries this version cannot use: another cache version, damaged, or abandoned builds.",
)
@click.option(
    "--older-than",
    "older_than",
    type=FiniteFloatRange(min=0),
    metavar="DAYS",
    help="Only entries last used more than DAYS days ago.",
)
@click.option(
    "--kind",
    type=click.Choice(["features", "activations", "targets", "scans"]),
    multiple=True,
    help="Only this kind of entry (repeatable): features (phase 1), activations (fine-tuning), targets "
    "(a teacher's, for --unlabelled), scans (image checks).",
)
@format_option()
@click.pass_obj
def cache(
    out: Output, clear: bool, stale: bool, older_than: float | None, kind: tuple[str, ...], fmt: str
) -> None:
    """List the cache entries (size, last use, state), or remove them with --clear.

    Every entry can be rebuilt: removing one costs the next run that needs it one pass of the backbone.
    The cache lives in $SCENECLS_HOME/cache.
    """
    from scenecls.caches.listing import FOREIGN, KINDS, UNUSABLE, list_entries, remove_entries
    from scenecls.paths import cache_dir

    root = cache_dir()
    unused_for = None if older_than is None else older_than * 86400
    entries = list_entries(root, kind or KINDS, unusable=stale, unused_for=unused_for)
    if clear:
        removed, freed = remove_entries(entries)
        building = sum(e.state == "building" for e in entries)
        foreign = [e for e in entries if e.state == FOREIGN]
        out.log(
            f"Removed {len(removed)} cache entr{'y' if len(removed) == 1 else 'ies'} from {root}, "
            f"{byte_size(freed)} freed"
            + (f"; {building} in use by a build left alone" if building else "")
            + (f"; {len(foreign)} not a cache entry left alone ({_names(foreign)})" if foreign else "")
        )
        entries = removed
    elif not entries:
        out.log(f"No cache entries{' that match' if stale or older_than or kind else ''} in {root}")
    rows = [e.to_dict() for e in entries]
    if fmt == "json":
        out.json(rows)
        return
    columns = ["kind", "path", "bytes", "created", "used", "state", "backbone", "detail"]
    if fmt == "csv":
        out.csv(columns, [[r[c] for c in columns] for r in rows])
        return
    if not rows:
        return
    out.table(
        ["kind", "entry", "backbone", "detail", "size", "last used", "state"],
        [
            [
                e.kind,
                e.path.name,
                e.backbone or "",
                e.detail,
                byte_size(e.bytes),
                _ago(e.used),
                "not a cache entry" if e.state == FOREIGN else e.state,
            ]
            for e in entries
        ],
        numeric=["size"],
    )
    if not clear:
        unusable = sum(e.bytes for e in entries if e.state in UNUSABLE)
        out.log(
            f"{len(entries)} entries, {byte_size(sum(e.bytes for e in entries))} in {root}"
            + (f"; {byte_size(unusable)} unusable (`scenecls cache --clear --stale`)" if unusable else "")
        )


def _ago(when: float) -> str:
    seconds = max(0.0, time.time() - when)
    for unit, scale in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= scale:
            return f"{seconds / scale:.0f} {unit} ago"
    return "just now"


def _names(entries, most: int = 3) -> str:
    names = [str(e.path) for e in entries[:most]]
    return ", ".join(names) + (f" and {len(entries) - most} more" if len(entries) > most else "")
