"""Run folders, Ultralytics-style: ``runs/train``, ``runs/train2``, ... each holding everything a run made.

Every file is written atomically (temporary file, then rename), so a crash or Ctrl-C never leaves a
half-written ``config.json`` or ``best.keras`` behind.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

from scenecls.atomic import atomic_path
from scenecls.errors import SceneclsError

CONFIG = "config.json"
LABELS = "labels.json"
HISTORY = "history.csv"
BEST = "best.keras"
LAST = "last.keras"
METRICS = "metrics.json"
STATE = "state.json"
EVALUATION = "evaluation.json"
PREDICTIONS = "predictions.csv"

HISTORY_COLUMNS = (
    "epoch",
    "phase",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "seconds",
)


def create_run_dir(project: Path, name: str = "train", exist_ok: bool = False) -> Path:
    """``project/name``, or ``name2``, ``name3``... when taken (unless ``exist_ok``)."""
    project.mkdir(parents=True, exist_ok=True)
    candidate = project / name
    if exist_ok:
        candidate.mkdir(exist_ok=True)
        return candidate
    n = 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = project / f"{name}{n}"


def latest_run(project: Path) -> Path:
    """The most recently changed run in ``project`` that holds a model."""
    runs = [p.parent for p in project.glob(f"*/{BEST}")] if project.is_dir() else []
    if not runs:
        raise SceneclsError(
            f"no trained run in {project}; train one first or pass a run folder or model file"
        )
    return max(runs, key=lambda p: (p / BEST).stat().st_mtime)


def resolve_run(value: str | None, project: Path) -> Path:
    """A run folder from a path, a run name inside ``project``, or the latest run."""
    if value is None:
        return latest_run(project)
    path = Path(value)
    for candidate in (path, project / value):
        if candidate.is_dir() and (candidate / CONFIG).is_file():
            return candidate
    raise SceneclsError(f"{value} is not a run folder (no {CONFIG}); runs live in {project}")


def write_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")


def copy_atomic(source: Path, target: Path) -> None:
    """Copy ``source`` over ``target`` so that ``target`` is always either the old or the new file."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SceneclsError(f"{path} is missing") from None
    except (OSError, ValueError) as exc:
        raise SceneclsError(f"{path} is unreadable: {exc}") from exc


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())


def read_history(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key, value in row.items():
            if key == "phase":
                continue
            row[key] = int(value) if key == "epoch" else float(value) if value not in ("", None) else None
    return rows


def run_label(path: Path) -> str:
    """A short name for a run in tables and plots: its folder's name, such as ``train3``."""
    return Path(path).name


def resolve_model(value: str | None, project: Path) -> tuple[Path, Path | None]:
    """``(model file, run folder or None)`` from a ``.keras`` file, a run folder or name, or the latest."""
    if value is not None:
        path = Path(value)
        if path.is_file():
            return path, path.parent if (path.parent / CONFIG).is_file() else None
        if path.suffix == ".keras":
            raise SceneclsError(f"model file {path} does not exist")
    run = resolve_run(value, project)
    if not (run / BEST).is_file():
        raise SceneclsError(f"{run} holds no {BEST} yet (has its first epoch finished?)")
    return run / BEST, run


def model_classes(model_path: Path, run_dir: Path | None) -> list[str] | None:
    """The class names saved beside a model (``labels.json``), if any."""
    for folder in (model_path.parent, run_dir):
        if folder is not None and (folder / LABELS).is_file():
            return list(read_json(folder / LABELS)["classes"])
    return None


def write_rows_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    write_atomic(path, buffer.getvalue())


def read_rows_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in ("confidence", "loss"):
            if key in row:
                row[key] = float(row[key])
    return rows
