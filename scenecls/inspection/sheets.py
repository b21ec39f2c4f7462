"""The contact sheets of an inspection, one per kind of finding, and its whole record as JSON, in an
output folder of its own."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from scenecls.contact_sheets import Tile, draw_sheet, grid
from scenecls.files import OUTPUT_MARKERS, atomic_path, claim_folder, note_written
from scenecls.inspection.findings import Group, Inspection

MARKER = OUTPUT_MARKERS[0]
SHEET_ROWS = 40  # duplicate groups drawn per sheet
SHEET_COLUMNS = 8  # members drawn per group

SHEETS = ("duplicates-within.png", "duplicates-across.png", "duplicates-conflicting.png", "label-errors.png")


def default_output(source: Path) -> Path:
    """``inspect/<data set's name>`` in the current folder, unless that lies inside the data set itself
    (``cd data && scenecls inspect .``): then under the tool's own folder, so that nothing is ever
    written into a data set unasked."""
    from scenecls.paths import data_home

    name = source.stem if source.is_file() else source.resolve().name
    folder = Path("inspect") / name
    data_folder = (source.parent if source.is_file() else source).resolve()
    if folder.resolve() == data_folder or data_folder in folder.resolve().parents:
        return data_home() / "inspect" / name
    return folder


def write_findings(inspection: Inspection, folder: Path, *, top: int = 50) -> list[Path]:
    """The contact sheets (one per kind of finding that has any) and ``inspection.json`` in ``folder``:
    a new or empty folder, or one this wrote before (its marker), whose old sheets are replaced."""
    claim_folder(folder, MARKER, "scenecls inspect")
    note_written(folder, MARKER, "scenecls inspect", [*SHEETS, "inspection.json"])
    for name in SHEETS:
        (folder / name).unlink(missing_ok=True)  # only our own names, in our own folder (checked above)
    written = []
    kinds = [
        ("duplicates-within.png", inspection.within(), "within a split"),
        ("duplicates-across.png", inspection.leaks(), "across splits (leaks)"),
        ("duplicates-conflicting.png", inspection.conflicts(), "with conflicting labels"),
    ]
    for name, groups, what in kinds:
        if groups:
            shown = groups[:SHEET_ROWS]
            title = f"Duplicate groups {what}: {len(groups)}" + (
                f" (first {len(shown)})" if len(shown) < len(groups) else ""
            )
            rows = [[_member_tile(inspection, g, i) for i in g.members[:SHEET_COLUMNS]] for g in shown]
            written.append(draw_sheet(rows, title, folder / name, row_labels=[g.kind for g in shown]))
    if inspection.suspects:
        shown = inspection.suspects[:top]
        tiles = [
            Tile(
                inspection.items[s.index].path,
                (
                    f"#{r} {inspection.classes[s.given]} -> {inspection.classes[s.suggested]}",
                    f"p {s.given_probability:.2f} / {s.suggested_probability:.2f}",
                ),
                alert=True,
            )
            for r, s in enumerate(shown, 1)
        ]
        title = (
            f"Likely label errors: {len(shown)} of {len(inspection.suspects)}, "
            "given -> suggested, p(given) / p(suggested)"
        )
        written.append(draw_sheet(grid(tiles), title, folder / "label-errors.png"))
    with atomic_path(folder / "inspection.json") as tmp:
        tmp.write_text(json.dumps(inspection.to_dict(), indent=1))
    written.append(folder / "inspection.json")
    return written


def _member_tile(inspection: Inspection, g: Group, i: int) -> Tile:
    item = inspection.items[i]
    majority = Counter(inspection.items[m].label for m in g.members).most_common(1)[0][0]
    return Tile(
        item.path,
        (f"{item.split}: {inspection.classes[item.label]}", Path(item.path).name),
        alert=g.conflict and item.label != majority,
    )
