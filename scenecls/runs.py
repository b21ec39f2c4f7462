"""Run folders, Ultralytics-style: ``runs/train``, ``runs/train2``, ... each holding everything a run made,
read through one record (:class:`Run`, with :class:`RunState`) and written atomically (temporary file,
then rename), so a crash or Ctrl-C never leaves a half-written ``config.json`` or ``best.keras``."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from scenecls.checksums import record_checksum, recorded_checksum
from scenecls.errors import SceneclsError, UsageError
from scenecls.files import atomic_path

CONFIG = "config.json"
LABELS = "labels.json"
HISTORY = "history.csv"
BEST = "best.keras"
LAST = "last.keras"
METRICS = "metrics.json"
STATE = "state.json"
EVALUATION = "evaluation.json"
MODEL_CARD = "MODEL_CARD.md"  # and its facts as JSON: scenecls.model_card
MODEL_CARD_JSON = "model_card.json"
PREDICTIONS = "predictions.csv"

# Every file a run writes atomically, for cleaning up after a process killed mid-write.
RUN_FILES = (CONFIG, LABELS, HISTORY, BEST, LAST, METRICS, STATE, EVALUATION, PREDICTIONS, "last_head.npz",
             "best_head.npz", "skipped.txt", "best.tflite", MODEL_CARD, MODEL_CARD_JSON)  # fmt: skip

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
    raise SceneclsError(f"{value} is not a run folder (no {CONFIG}); {runs_there(project)}")


def runs_there(project: Path, shown: int = 8) -> str:
    """What an error about a missing run says of the runs there are: their names, or that there are none."""
    names = sorted(p.parent.name for p in project.glob(f"*/{CONFIG}")) if project.is_dir() else []
    if not names:
        return f"there are no runs in {project}"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"the runs in {project}: {', '.join(names[:shown])}{more}"


def trained_run(value: str | None, project: Path) -> Path:
    """:func:`resolve_run` for what trains on from a run (``--resume``, ``finetune``, ``lr-find --run``):
    an ensemble of runs is refused, since it has no one backbone to go on with."""
    run = resolve_run(value, project)
    if is_ensemble_run(run):
        raise UsageError(f"{run} is an ensemble of runs, which does not train; use one of its members")
    return run


def is_ensemble_run(run: Path) -> bool:
    """Whether the run folder holds an ensemble of runs (``scenecls ensemble``), not a trained run."""
    return bool(read_json(run / CONFIG).get("ensemble"))


def write_atomic(path: Path, text: str) -> None:
    # surrogateescape: a file name that is not UTF-8 is written back as the bytes it was read as.
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape", newline="")


def copy_atomic(source: Path, target: Path) -> None:
    """Copy ``source`` over ``target`` so that ``target`` is always either the old or the new file; a
    model file's recorded checksum goes with it."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    if recorded_checksum(source) is not None:
        record_checksum(target)


def write_json(path: Path, data: Any) -> None:
    """Standard JSON: a NaN or infinity (a diverged loss) is written as null, never as ``NaN``."""
    write_atomic(path, json.dumps(finite_or_none(data), indent=2, default=str, allow_nan=False) + "\n")


def finite_or_none(data: Any) -> Any:
    """``data`` with every non-finite float replaced by None, at any depth."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite_or_none(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_or_none(value) for value in data]
    return data


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SceneclsError(f"{path} is missing") from None
    except (OSError, ValueError) as exc:
        raise SceneclsError(f"{path} is unreadable: {exc}") from exc


STATUSES = ("running", "interrupted", "failed", "finished")


@dataclass
class RunState:
    """Where a run stands (``state.json``): one declaration, read and written through it, whose field
    types are also the schema a damaged file is checked against (naming the file and the field)."""

    status: str = "running"  # one of STATUSES
    phase: int = 0  # index of the phase in progress
    phase_epoch: int = 0  # epochs finished in that phase
    epoch: int = 0  # epochs finished in all
    best_val_accuracy: float = -1.0  # -1: no epoch validated yet (or --val-split 0)
    best_epoch: int = 0
    best_phase: str = ""
    wait: int = 0  # epochs without improvement (early stopping)
    plateau_best: float | None = None  # lowest val loss so far (plateau schedule); None: none yet
    plateau_wait: int = 0
    stopped_early: bool = False
    head_checkpoint: bool = False  # the phase's head checkpoints are newer than last.keras
    seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)  # wall time per phase, all included
    feature_cache: str = "off"  # what phase 1 did with the feature cache: off, built or reused
    activation_cache: dict[str, str] = field(default_factory=dict)  # per fine-tuning phase: built, reused
    error: str | None = None  # why the run failed (status "failed")
    mlflow_run_id: str | None = None  # the run's MLflow run when tracked: a resume goes on in it

    @property
    def validated_best(self) -> float | None:
        """The best validation accuracy; None when no epoch was validated (``--val-split 0``)."""
        return self.best_val_accuracy if self.best_val_accuracy >= 0 else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_COUNT, _NUMBER, _TEXT, _FLAG = "a whole number >= 0", "a number", "text", "true or false"
_TABLE = "an object"
_KINDS = {"int": _COUNT, "float": _NUMBER, "str": _TEXT, "bool": _FLAG}
STATE_SCHEMA: dict[str, tuple[str, bool]] = {  # field: (kind, may be null), from RunState's types
    f.name: (_KINDS.get(str(f.type).removesuffix(" | None"), _TABLE), str(f.type).endswith("| None"))
    for f in fields(RunState)
}


def read_object(path: Path) -> dict[str, Any]:
    """:func:`read_json` of a file that must hold a JSON object (every run file does)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise SceneclsError(f"{path} is damaged: it holds a JSON {type(data).__name__}, not an object")
    return data


def read_state(run_dir: Path) -> dict[str, Any]:
    """A run's ``state.json``, checked against :data:`STATE_SCHEMA` (fields it lacks keep their defaults)."""
    path = Path(run_dir) / STATE
    state = read_object(path)
    for name, (kind, nullable) in STATE_SCHEMA.items():
        if name in state and not (state[name] is None and nullable) and not _is_kind(state[name], kind):
            raise SceneclsError(f"{path} is damaged: {name} must be {kind}, not {state[name]!r}")
    if "status" in state and state["status"] not in STATUSES:
        raise SceneclsError(f"{path} is damaged: status must be one of {', '.join(STATUSES)}")
    return state


def _is_kind(value: Any, kind: str) -> bool:
    if kind == _COUNT:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if kind == _NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == _TEXT:
        return isinstance(value, str)
    if kind == _FLAG:
        return isinstance(value, bool)
    return isinstance(value, dict)


def read_classes(path: Path) -> list[str]:
    """The class names of a ``labels.json``: a list of at least two distinct names."""
    classes = read_object(path).get("classes")
    if not (isinstance(classes, list) and all(isinstance(c, str) and c for c in classes)):
        raise SceneclsError(f"{path} is damaged: classes must be a list of class names, not {classes!r}")
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise SceneclsError(f"{path} is damaged: classes must name at least two different classes")
    return classes


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
        exported_folder = path.is_dir() and any(
            (path / name).is_file() for name in ("saved_model.pb", "model.xml")
        )
        if path.is_file() or exported_folder:
            # An OpenVINO export's model.xml lies in the export's folder, inside the run folder.
            owners = [path.parent, *([path.parent.parent] if path.suffix == ".xml" else [])]
            return path, next((owner for owner in owners if (owner / CONFIG).is_file()), None)
        if path.suffix in (".keras", ".tflite", ".onnx", ".xml"):
            raise SceneclsError(f"model file {path} does not exist")
    run = resolve_run(value, project)
    if not (run / BEST).is_file():
        raise SceneclsError(f"{run} holds no {BEST} yet: {_why_no_model(run)}")
    return run / BEST, run


def recorded_status(run_dir: Path) -> str | None:
    """The status ``state.json`` records (see :data:`STATUSES`); None without one (a run never started)."""
    return read_state(run_dir).get("status") if (run_dir / STATE).is_file() else None


def _why_no_model(run: Path) -> str:
    """What a run's state says about its missing model, in words a user can act on."""
    try:
        state = read_state(run)
    except SceneclsError:
        return "its training has not finished an epoch"
    epochs, status = state.get("epoch", 0), state.get("status")
    if status == "failed":
        return f"its training failed ({state.get('error') or 'see state.json'})"
    if not epochs:
        return "its training has not finished an epoch"
    if state.get("head_checkpoint"):
        where = "stopped" if status == "interrupted" else "is"
        return (
            f"training {where} in phase 1 after {epochs} epochs, which keeps only the head's weights until "
            f"the phase ends; wait for it, or stop it with Ctrl-C (which writes {BEST}) or resume it"
        )
    return f"its training has finished {epochs} epochs without a better validation accuracy to keep"


def model_classes(model_path: Path, run_dir: Path | None) -> list[str] | None:
    """The class names saved with a model: an exported model's own labels, else ``labels.json`` beside
    it or in its run folder."""
    if model_path.suffix != ".keras":
        from scenecls.runtimes import exported_classes

        classes = exported_classes(model_path)
        if classes is not None:
            return classes
    for folder in (model_path.parent, run_dir):
        if folder is not None and (folder / LABELS).is_file():
            return read_classes(folder / LABELS)
    return None


def classes_for(model_path: Path, run_dir: Path | None, count: int) -> list[str]:
    """The class names of a model that predicts ``count`` classes: its saved labels (a one-line error
    when they name another number of classes), else ``class_0``, ``class_1``, ..."""
    from scenecls.errors import ModelError

    classes = model_classes(model_path, run_dir)
    if classes is not None and len(classes) != count:
        raise ModelError(
            f"{model_path} predicts {count} classes but its labels name {len(classes)}; "
            f"the two files do not belong together"
        )
    return classes or [f"class_{i}" for i in range(count)]


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


class Run:
    """One run folder's record, read through one schema: its recipe (``config.json``), where it stands
    (``state.json``), its results (``metrics.json``, ``evaluation.json``), classes and history. Every
    command that reads a run reads it through this, so a damaged file is the same one-line error
    everywhere and nothing else parses a run's files. Files are read when asked for, afresh each time
    (a run being trained changes under its reader)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def has(self, name: str) -> bool:
        """Whether the run holds the file ``name`` (``runs.METRICS``, ...)."""
        return (self.folder / name).is_file()

    # ------------------------------------------------------------------ the recipe
    @property
    def recorded(self) -> dict[str, Any]:
        """``config.json`` as written: the recipe and what the run found (data identity, classes, sizes)."""
        return read_object(self.folder / CONFIG)

    @property
    def config(self):  # -> TrainConfig (imported here: the config module is the recipe's, not the folder's)
        from scenecls.config import TrainConfig

        return TrainConfig.from_dict(self.recorded)

    @property
    def image_size(self) -> int:
        """The input size the run trained at: as recorded, else its backbone's default."""
        recorded = self.recorded.get("image_size")
        if isinstance(recorded, int) and recorded > 0:
            return recorded
        from scenecls.models.registry import get_spec

        config = self.config
        return config.image_size or get_spec(config.backbone).default_size

    def prepared_data(self, *, data: str | Path | None = None, reporter=None):
        """``(prepared, own)``: the run's own images, split as it split them, checked to be the ones it
        trained on (or ``data``, named on purpose; see :func:`scenecls.data.pipeline.prepare_run_data`)."""
        from scenecls.data.pipeline import prepare_run_data

        config = self.config
        return prepare_run_data(self.recorded, owner=self.folder, val_split=config.val_split,
                                seed=config.validation_seed, data=data, reporter=reporter)  # fmt: skip

    # ------------------------------------------------------------------ where it stands, what it found
    @property
    def state(self) -> RunState:
        return RunState.from_dict(read_state(self.folder))

    @property
    def status(self) -> str | None:
        """As :func:`recorded_status`: None for a folder whose run never started."""
        return recorded_status(self.folder)

    @property
    def metrics(self) -> dict[str, Any]:
        return read_object(self.folder / METRICS)

    @property
    def evaluation(self) -> dict[str, Any]:
        return read_object(self.folder / EVALUATION)

    def optional(self, name: str) -> dict[str, Any]:
        """A result file that a run may not have yet (``metrics.json``, ``evaluation.json``): ``{}``
        when it is missing, the usual error when it is damaged."""
        return read_object(self.folder / name) if self.has(name) else {}

    @property
    def classes(self) -> list[str]:
        return read_classes(self.folder / LABELS)

    @property
    def labels(self) -> dict[str, Any]:
        """``labels.json`` whole (its classes checked): the classes, and the backbone and size they fit."""
        return {**read_object(self.folder / LABELS), "classes": self.classes}

    @property
    def history(self) -> list[dict[str, Any]]:
        return read_history(self.folder / HISTORY)

    # ------------------------------------------------------------------ writing
    def write_state(self, state: RunState | dict[str, Any]) -> None:
        write_json(self.folder / STATE, state.to_dict() if isinstance(state, RunState) else state)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.folder / METRICS, metrics)

    def update_config(self, changes: dict[str, Any]) -> None:
        """``config.json`` with ``changes`` over what it records (an extension's longer phase)."""
        write_json(self.folder / CONFIG, {**self.recorded, **changes})
