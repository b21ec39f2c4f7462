"""The seed's grid — backbones x unfrozen blocks x dense layers, and optionally seeds — as one resumable
command.

Every combination is a normal run folder inside one sweep folder, named ``<backbone>-d<dense>-u<unfreeze>``
(``-s<seed>`` added when the grid has seeds: repeated runs of a recipe, to measure its spread or to make
an ensemble of them).
Running the same sweep again skips finished runs and resumes an interrupted one. Runs of the same
backbone share the frozen-phase feature cache, so phase 1 costs one pass over the data per backbone,
and runs that fine-tune from the same cut share its activation cache, so the frozen part of the backbone
runs once per cut (and augmented copy) for the whole grid.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scenecls import runs
from scenecls.config import TrainConfig
from scenecls.errors import SceneclsError, UsageError
from scenecls.models.registry import get_spec
from scenecls.progress import NullReporter, Reporter
from scenecls.tracking import NO_TRACKING, TrackingSettings, new_sweep_id

SWEEP_FILE = "sweep.json"
ENSEMBLE_SUFFIX = "-ensemble"  # <backbone>-d<dense>-u<unfreeze>-ensemble: the ensemble of a recipe's seeds
SWEEP_INDEPENDENT = ("backbone", "dense", "unfreeze", "tensorboard", "last_phase_epochs", "export_tflite")
RESULT_COLUMNS = (
    "run",
    "backbone",
    "dense",
    "unfreeze",
    "seed",
    "unfrozen_layers",
    "trainable_params",
    "best_val_accuracy",
    "test_accuracy",
    "epochs",
    "seconds",
)


@dataclass(frozen=True)
class GridPoint:
    backbone: str
    dense: int
    unfreeze: str
    seed: int | None = None  # None: the sweep's --seed, and no seed in the name

    @property
    def name(self) -> str:
        name = f"{self.backbone}-d{self.dense}-u{self.unfreeze}"
        return name if self.seed is None else f"{name}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        """As ``sweep.json`` records it."""
        return dataclasses.asdict(self)


def grid(
    backbones: list[str], unfreeze: list[str], dense: list[int], seeds: list[int] | None = None
) -> list[GridPoint]:
    """Every combination, backbone first so that runs sharing a feature cache follow each other, then
    unfreeze, so that runs sharing an activation cache do; the seeds of a recipe last, side by side."""
    for name in backbones:
        get_spec(name)  # unknown names fail before anything runs
    if not (backbones and unfreeze and dense):
        raise UsageError("a sweep needs at least one backbone, one unfreeze value and one dense value")
    if seeds is not None and not seeds:
        raise UsageError("--seeds needs at least one seed, like 0,1,2")
    backbones, unfreeze, dense = (list(dict.fromkeys(values)) for values in (backbones, unfreeze, dense))
    chosen: list[int | None] = list(dict.fromkeys(seeds)) if seeds else [None]
    return [GridPoint(b, d, u, s) for b, u, d, s in itertools.product(backbones, unfreeze, dense, chosen)]


def parse_shard(value: str) -> tuple[int, int]:
    """``"2/8"`` -> ``(2, 8)``: shard 2 of 8, counted from 1 as job arrays count."""
    try:
        index, count = (int(part) for part in value.split("/"))
    except ValueError:
        raise UsageError(f"--shard takes I/N such as 1/4, got {value!r}") from None
    if not 1 <= index <= count:
        raise UsageError(f"--shard {value}: I must be between 1 and N")
    return index, count


def shard_points(points: list[GridPoint], index: int, count: int) -> list[GridPoint]:
    """Shard ``index`` of ``count``: every ``count``-th point from the ``index``-th, so that shards differ
    by at most one run, each gets a mix of backbones (their costs differ tenfold), and no two shards
    share a run. Deterministic: the same grid gives every machine the same shares."""
    return points[index - 1 :: count]


def point_config(base: TrainConfig, point: GridPoint) -> TrainConfig:
    seed = base.seed if point.seed is None else point.seed
    return dataclasses.replace(
        base, backbone=point.backbone, dense=point.dense, unfreeze=point.unfreeze, seed=seed
    )


def seed_groups(points: list[GridPoint]) -> dict[str, list[GridPoint]]:
    """The runs of each recipe that differ only by seed (``<backbone>-d<dense>-u<unfreeze>``: its runs),
    for the recipes that have more than one: what ``scenecls ensemble`` can join."""
    groups: dict[str, list[GridPoint]] = {}
    for point in points:
        if point.seed is not None:
            groups.setdefault(dataclasses.replace(point, seed=None).name, []).append(point)
    return {name: members for name, members in groups.items() if len(members) > 1}


def ensemble_folders(folder: Path, points: list[GridPoint]) -> dict[Path, list[Path]]:
    """For each recipe with several seeds, the folder of its ensemble and its members' folders."""
    return {
        folder / f"{name}{ENSEMBLE_SUFFIX}": [folder / p.name for p in members]
        for name, members in seed_groups(points).items()
    }


def open_sweep(folder: Path, points: list[GridPoint], base: TrainConfig) -> None:
    """Create the sweep folder, or check that an existing one holds the same sweep."""
    description = {"grid": [p.to_dict() for p in points], "base": _recipe(base.to_dict())}
    marker = folder / SWEEP_FILE
    if marker.is_file():
        existing = runs.read_json(marker)
        # Read through TrainConfig: options added since the sweep began take their defaults.
        existing["base"] = _recipe(TrainConfig.from_dict(existing.get("base", {})).to_dict())
        if {k: v for k, v in existing.items() if k != "id"} != description:
            raise SceneclsError(
                f"{folder} holds a different sweep (other grid or options); "
                f"use another --name to start a new one"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    runs.write_json(marker, {**description, "id": new_sweep_id()})


def sweep_id(folder: Path) -> str:
    """The sweep's id (in ``sweep.json``), by which shards on other machines find one MLflow parent run."""
    found = runs.read_json(folder / SWEEP_FILE).get("id")
    if not isinstance(found, str):
        raise SceneclsError(f"{folder / SWEEP_FILE} is damaged: it has no sweep id")
    return found


def check_grid(folder: Path, points: list[GridPoint]) -> None:
    """Refuse to collect a sweep folder under another grid than the one its runs were made for."""
    marker = folder / SWEEP_FILE
    if not marker.is_file():
        raise UsageError(f"{folder} holds no sweep ({SWEEP_FILE}); check --project and --name")
    if runs.read_json(marker).get("grid") != [p.to_dict() for p in points]:
        raise UsageError(
            f"{folder} holds a sweep of another grid; give --collect the same --backbones, --unfreeze, "
            f"--dense and --seeds as the shards"
        )


def _recipe(options: dict[str, Any]) -> dict[str, Any]:
    """What makes a sweep's runs differ; logging, exporting and the grid's own axes do not."""
    return {k: v for k, v in options.items() if k not in SWEEP_INDEPENDENT}


def run_status(run_dir: Path) -> str:
    """``new``, ``interrupted`` (has a state to resume), ``finished``, or ``damaged`` (its state, or a
    finished run's results, cannot be read: reported and left alone, never trained over)."""
    if damage(run_dir):
        return "damaged"
    status = runs.recorded_status(run_dir)
    if status is None:
        return "new"
    return "finished" if status == "finished" else "interrupted"


def damage(run_dir: Path) -> str | None:
    """The name of the run file that cannot be read, or None: ``state.json``, or for a finished run
    its ``metrics.json`` or ``config.json`` too (else its row would silently go missing)."""
    try:
        status = runs.recorded_status(run_dir)
    except SceneclsError:
        return runs.STATE
    if status == "finished":
        run = runs.Run(run_dir)
        for name, read in ((runs.METRICS, lambda: run.metrics), (runs.CONFIG, lambda: run.recorded)):
            try:
                read()
            except SceneclsError:
                return name
    return None


def run_sweep(
    folder: Path,
    points: list[GridPoint],
    base: TrainConfig,
    *,
    shard: tuple[int, int] | None = None,
    reporter: Reporter | None = None,
    distribution=None,
    tracking: TrackingSettings | None = None,
) -> list[dict[str, Any]]:
    """Train every point (of ``shard``, if given) not finished yet; with ``tracking``, each run is a child
    of the sweep's MLflow parent run (one for every shard, found by the sweep's id).

    Without a shard, returns the results table of the whole grid and writes it (see
    :func:`collect_results`); a shard returns its own runs' rows and writes no table, since other
    shards may still be running: ``--collect`` writes it when they are done. Under a multi-worker
    ``distribution`` every worker goes through the same runs (the sweep folder must be on a shared
    filesystem, so that all see which are finished); only the chief writes.
    """
    from scenecls.training.loop import train
    from scenecls.training.strategy import OFF

    reporter = reporter or NullReporter()
    distribution = distribution or OFF
    if distribution.chief:
        open_sweep(folder, points, base)
    distribution.barrier()  # the workers look at the sweep folder once the chief has opened it
    trackers = _child_trackers(folder, tracking, reporter) if tracking and distribution.chief else None
    mine = shard_points(points, *shard) if shard else points
    for number, point in enumerate(mine, start=1):
        run_dir = folder / point.name
        status = run_status(run_dir)
        if status == "finished":
            reporter.log(f"[{number}/{len(mine)}] {point.name}: finished earlier, skipped")
            continue
        if status == "damaged":
            reporter.warn(
                f"[{number}/{len(mine)}] {point.name}: its {damage(run_dir)} is damaged; skipped (move the "
                f"folder away to train it afresh)"
            )
            continue
        resume = status == "interrupted"
        reporter.log(f"[{number}/{len(mine)}] {point.name}: {'resuming' if resume else 'training'}")
        if distribution.chief:
            run_dir.mkdir(parents=True, exist_ok=True)
        tracker = next(trackers) if trackers else None
        train(point_config(base, point), run_dir, reporter=reporter, resume=resume, distribution=distribution,
              tracker=tracker)  # fmt: skip
        distribution.barrier()  # the run's state is written before anyone looks at the next
    if shard:
        return collect_results(folder, mine, reporter)
    results = collect_results(folder, points, reporter)
    if distribution.chief:
        write_results(folder, results)
    return results


def _child_trackers(folder: Path, tracking: TrackingSettings, reporter: Reporter):
    """A tracker for each run of the sweep, each a child of its parent run; none when the server is down
    (said once, not once per run)."""
    parent = tracking.tracker(reporter).sweep_parent(folder, sweep_id(folder))
    while True:
        yield tracking.tracker(reporter, parent=parent) if parent else NO_TRACKING


def log_sweep(
    folder: Path, tracking: TrackingSettings, files: list[Path], *, finished: bool, reporter=None
) -> list[str]:
    """The sweep's tables and heat maps on its MLflow parent run, FINISHED once every run is; what
    could not be logged, in words."""
    tracker = tracking.tracker(reporter)
    parent = tracker.sweep_parent(folder, sweep_id(folder))
    if parent:
        tracker.log_files(parent, files)
        if finished:
            tracker.terminate(parent, "FINISHED")
    return tracker.missed()


def damaged(folder: Path, points: list[GridPoint]) -> list[str]:
    """The runs of the grid whose state or results cannot be read."""
    return [p.name for p in points if run_status(folder / p.name) == "damaged"]


def unfinished(folder: Path, points: list[GridPoint]) -> list[str]:
    """The runs of the grid that have not finished (not started, interrupted, failed or running)."""
    return [p.name for p in points if run_status(folder / p.name) != "finished"]


def collect_results(
    folder: Path, points: list[GridPoint], reporter: Reporter | None = None
) -> list[dict[str, Any]]:
    """One row per finished run, best validation accuracy first; then a row per finished ensemble of a
    recipe's seeds (see :func:`ensemble_folders`), which has a test accuracy only. A run whose files
    are damaged is reported and left out; the others are collected."""
    reporter = reporter or NullReporter()
    rows = []
    for point in points:
        run_dir = folder / point.name
        status = run_status(run_dir)
        if status == "damaged":
            reporter.warn(f"{point.name}: its {damage(run_dir)} is damaged; left out of the tables")
        if status != "finished":
            continue
        try:
            metrics, config = runs.Run(run_dir).metrics, runs.Run(run_dir).recorded
        except SceneclsError as exc:
            reporter.warn(f"{point.name}: {exc}; left out of the tables")
            continue
        reports = config.get("unfreeze_reports") or [{}]
        last = reports[-1]
        rows.append(
            {
                "run": point.name,
                "backbone": point.backbone,
                "dense": point.dense,
                "unfreeze": point.unfreeze,
                "seed": config.get("seed"),
                "unfrozen_layers": last.get("layers", 0),
                "trainable_params": max(r.get("trainable_params", 0) for r in reports),
                "best_val_accuracy": metrics.get("best_val_accuracy"),
                "test_accuracy": metrics.get("test_accuracy"),
                "epochs": metrics.get("epochs"),
                "seconds": metrics.get("seconds"),
            }
        )
    rows.sort(key=lambda r: -(_first_known(r["best_val_accuracy"], r["test_accuracy"]) or 0))
    by_run = {r["run"]: r for r in rows}
    for ensemble, members in ensemble_folders(folder, points).items():
        first = by_run.get(members[0].name)
        if first is None or run_status(ensemble) != "finished":
            continue
        metrics = runs.Run(ensemble).metrics
        rows.append(
            {
                **first,
                "run": ensemble.name,
                "seed": None,
                "best_val_accuracy": None,  # the members' validation splits differ
                "test_accuracy": metrics.get("test_accuracy"),
                "epochs": 0,
                "seconds": metrics.get("seconds"),
            }
        )
    return rows


def _first_known(*values: float | None) -> float | None:
    """The first value that is not None: runs without validation (``--val-split 0``) rank by test."""
    return next((v for v in values if v is not None), None)


def write_results(folder: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """``results.csv``, ``results.json`` and ``results.md`` in the sweep folder."""
    runs.write_rows_csv(folder / "results.csv", rows)
    runs.write_json(folder / "results.json", rows)
    lines = [
        "| " + " | ".join(RESULT_COLUMNS) + " |",
        "|" + "|".join("---" for _ in RESULT_COLUMNS) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_markdown_cell(row[c]) for c in RESULT_COLUMNS) + " |")
    runs.write_atomic(folder / "results.md", "\n".join(lines) + "\n")
    return [folder / "results.csv", folder / "results.json", folder / "results.md"]


def _markdown_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def describe_points(points: list[GridPoint], base: TrainConfig, num_classes: int = 6) -> list[dict[str, Any]]:
    """What each run would train, from the block maps of freshly built backbones (random weights)."""
    from scenecls.training.context import prepare_model, preview_context
    from scenecls.training.recipe import plan_phases

    rows = []
    learners: dict[tuple[str, int], Any] = {}  # one model per backbone and head: unfreezing is a flag
    for point in points:
        config = point_config(base, point)
        key = (point.backbone, point.dense)
        if key not in learners:
            learners[key] = prepare_model(preview_context(config, num_classes))
        learner = learners[key]
        phases = plan_phases(config)
        last = learner.unfreeze(phases[-1].policy)
        rows.append(
            {
                "run": point.name,
                "backbone": point.backbone,
                "dense": point.dense,
                "unfreeze": point.unfreeze,
                "seed": config.seed,
                "phases": ", ".join(f"{p.name} x{p.epochs}" for p in phases),
                "unfrozen_blocks": len(last.blocks),
                "unfrozen_layers": last.layers,
                "trainable_params": last.trainable_params,
            }
        )
    return rows
