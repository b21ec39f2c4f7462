"""``scenecls inspect``'s library: look at a data set (:func:`inspect_dataset`), what it found
(:class:`Inspection`), and its contact sheets (:func:`write_findings`)."""

from scenecls.inspection.findings import Group, Inspection, Item
from scenecls.inspection.look import InspectOptions, inspect_dataset
from scenecls.inspection.sheets import MARKER, default_output, write_findings

__all__ = [
    "MARKER",
    "Group",
    "InspectOptions",
    "Inspection",
    "Item",
    "default_output",
    "inspect_dataset",
    "write_findings",
]
