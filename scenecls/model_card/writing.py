"""Writing cards: in a run folder, beside an export; never over a file scenecls did not write, never
through a link."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scenecls import runs
from scenecls.model_card.facts import card_facts
from scenecls.model_card.page import MARK, render

CARD, CARD_JSON = runs.MODEL_CARD, runs.MODEL_CARD_JSON


def write_run_card(run_dir: Path) -> Path | None:
    """``MODEL_CARD.md`` and ``model_card.json`` in a finished run's folder, from its record; a card that
    scenecls did not write (no mark) is left alone, and None returned."""
    card, card_json = run_dir / CARD, run_dir / CARD_JSON
    if not _replaceable(card) or not _replaceable(card_json):
        return None
    run = runs.Run(run_dir)
    size = run.image_size
    facts = card_facts(run_dir, classes=run.classes, input_size=(size, size))
    runs.write_json(card_json, facts)
    runs.write_atomic(card, render(facts, files=models_in(run_dir, run_dir / runs.BEST)))
    return card


def refresh_card(run_dir: Path, reporter) -> None:
    """:func:`write_run_card`, for the steps after which a run's record changed (its end, its export,
    calibration, evaluation): a card that cannot be written costs the run nothing but a warning."""
    from scenecls.errors import SceneclsError, first_line

    try:
        write_run_card(run_dir)
    except (OSError, ValueError, KeyError, TypeError, SceneclsError) as exc:
        reporter.warn(f"could not write {run_dir / CARD}: {first_line(exc)}")


def write_export_card(
    target: Path,
    *,
    run_dir: Path | None,
    source: Path,
    classes: list[str],
    input_size: tuple[int, int],
    checked: dict[str, Any] | None,
) -> Path | None:
    """The card of an export: its facts (with the export's own check) in the export's metadata JSON
    under ``card``, and ``MODEL_CARD.md`` in its folder (inside a SavedModel), naming the models there
    exported from the same source. A ``MODEL_CARD.md`` scenecls did not write is left alone (None)."""
    import json

    from scenecls.runtimes import metadata_path

    facts = card_facts(run_dir, classes=classes, input_size=input_size)
    if checked is not None:
        facts["export_check"] = checked
    meta = metadata_path(target)
    metadata = json.loads(meta.read_text(encoding="utf-8"))
    runs.write_json(meta, {**metadata, "card": facts})
    folder = target if target.is_dir() else target.parent
    card = folder / CARD
    if not _replaceable(card):
        return None
    if folder == run_dir:  # an export beside best.keras: the run's own card, which now names it too
        return write_run_card(run_dir)
    runs.write_atomic(card, render(facts, files=models_in(folder, source)))
    if run_dir is not None and folder.parent == run_dir:  # a folder export in the run: its card names it
        write_run_card(run_dir)
    return card


def models_in(folder: Path, source: Path) -> dict[str, str]:
    """The models in ``folder`` made from ``source`` (a ``.keras`` file), by format: the source itself
    when it lies there, and every export whose metadata names it (the last of a format wins)."""
    import json

    found: dict[str, str] = {}
    if source.parent == folder and source.is_file():
        found["keras"] = source.name
    candidates = sorted(folder.glob("*.json")) + sorted(folder.glob("*/metadata.json"))
    for meta in candidates:
        if meta.is_symlink() or meta.stat().st_size > 1024**2:
            continue
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("written_by") != "scenecls export":
            continue
        if Path(str(data.get("source"))).name != source.name or data.get("format") not in _FORMATS:
            continue
        if meta.name != "metadata.json":
            found[data["format"]] = meta.name.removesuffix(".json")
            continue
        # A folder: a SavedModel is loaded as the folder, OpenVINO by its graph file; a card inside the
        # folder names them from there.
        inside = meta.parent == folder
        graph = "model.xml" if data["format"] == "openvino" else ""
        found[data["format"]] = (graph or ".") if inside else f"{meta.parent.name}/{graph}"
    return found


_FORMATS = ("savedmodel", "tflite", "onnx", "openvino")


def _replaceable(path: Path) -> bool:
    """Absent, or a card of ours (never a link, never a user's file)."""
    if path.is_symlink():
        return False
    if not path.exists():
        return True
    if path.suffix == ".json":
        try:
            import json

            return json.loads(path.read_text(encoding="utf-8")).get("written_by") == "scenecls"
        except (OSError, ValueError, AttributeError):
            return False
    return is_ours(path)


def is_ours(path: Path) -> bool:
    """Whether ``path`` is a card scenecls wrote (its first line is the mark), read without following
    a link."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with path.open(encoding="utf-8", errors="replace") as file:
            return file.readline().rstrip("\n") == MARK
    except OSError:
        return False
