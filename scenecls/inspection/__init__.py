"""``scenecls inspect``'s library: look at a data set (:func:`inspect_dataset`), what it found
(:class:`Inspection`), and its contact sheets (:func:`write_findings`); how to look
(:class:`InspectOptions`, whose fields declare the command's options).

The names load on first use, so that ``scenecls inspect --help`` (which reads
:mod:`scenecls.inspection.options`) imports no NumPy.
"""

from __future__ import annotations

from scenecls.lazy import front_door

_FRONT = {
    "Group": "scenecls.inspection.findings",
    "Inspection": "scenecls.inspection.findings",
    "Item": "scenecls.inspection.findings",
    "inspect_dataset": "scenecls.inspection.look",
    "InspectOptions": "scenecls.inspection.options",
    "MARKER": "scenecls.inspection.sheets",
    "default_output": "scenecls.inspection.sheets",
    "write_findings": "scenecls.inspection.sheets",
}

__all__ = sorted(_FRONT)
__getattr__ = front_door(__name__, _FRONT)
