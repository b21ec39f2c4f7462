"""``scenecls sweep``: the seed's grid of backbones x unfrozen blocks x dense layers."""

from __future__ import annotations

from pathlib import Path

import click

from scenecls.cli.options import (
    cache_options,
    config_from_options,
    distill_options,
    option,
    recipe_options,
    run_options,
    tracking_from,
    tracking_options,
)
from scenecls.cli.output import Output
from scenecls.cli.train import choose_distribution, student_inputs
from scenecls.command_options import SweepGrid


def _csv_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@click.command("sweep")
@option("backbones", SweepGrid)
@option("unfreeze", SweepGrid)
@option("dense", SweepGrid)
@click.option(
    "--seeds",
    default=None,
    metavar="S,S,...",
    help="Seeds, one run per value of every combination (named ...-s<seed>): a recipe's spread, and "
    "runs to join with scenecls ensemble. Instead of --seed.",
)
@click.option(
    "--ensemble",
    "ensembles",
    is_flag=True,
    help="With --seeds: once the runs are done, join each recipe's seeds into one model "
    "(<recipe>-ensemble in the sweep folder; see scenecls ensemble), tested and listed with the runs.",
)
@recipe_options
@click.option("--dry-run", is_flag=True, help="List the runs and what each would train; train nothing.")
@click.option(
    "--shard",
    metavar="I/N",
    default=None,
    help="Run only share I of N of the grid (one job of a job array; the shares never overlap).",
)
@click.option(
    "--collect",
    is_flag=True,
    help="Train nothing: build the results tables and heatmaps from the finished runs (after the shards).",
)
@cache_options
@run_options
@tracking_options
@distill_options
@click.pass_obj
def sweep(
    out: Output,
    backbones: str,
    unfreeze: str,
    dense: str,
    seeds: str | None,
    ensembles: bool,
    data: Path | None,
    project: Path,
    name: str | None,
    fmt: str,
    no_augment: bool,
    no_cache: bool,
    dry_run: bool,
    shard: str | None,
    collect: bool,
    distribute: str,
    **options,
) -> None:
    """Train every combination, each as a run folder inside one sweep folder, and compare them.

    Re-running the same command skips finished runs and resumes an interrupted one. Results are
    printed sorted by validation accuracy and saved as results.csv, results.json, results.md and a
    heatmap per backbone. On a cluster, give each job --shard I/N (same other options, one shared
    --project), then run the command once more with --collect; it exits 3 while runs are missing.
    """
    from scenecls.errors import UsageError
    from scenecls.training import sweep as sweeps

    points = _grid(backbones, unfreeze, dense, seeds, ensembles)
    tracking = tracking_from(out, options, project)
    base = config_from_options(data, no_augment, no_cache, options)
    base.export_tflite = False  # export the runs you keep: scenecls export RUN
    base.unlabelled, base.teacher = student_inputs(base.unlabelled, base.teacher, project)
    if base.unlabelled is not None and base.teacher is None:
        raise UsageError("--unlabelled in a sweep needs --teacher: train the teacher first (scenecls train)")
    folder = project / (name or "sweep")
    share = _share(shard, collect, ensembles)
    if dry_run:
        out.load_tensorflow()
        chosen = sweeps.shard_points(points, *share) if share else points
        rows = sweeps.describe_points(chosen, base, _class_count(data))
        _render(out, rows, fmt, f"{len(rows)} runs in {folder} (dry run)")
        return
    if collect:
        _collect(out, folder, points, fmt, ensembles, tracking)
        return
    distribution = choose_distribution(out, distribute)
    from scenecls.data.layout import check_data_path
    from scenecls.models.registry import fetch_weights
    from scenecls.paths import data_source
    from scenecls.training import TrainingInterrupted

    check_data_path(data_source(base.data))  # a wrong --data: said before any download or run
    for backbone in dict.fromkeys(point.backbone for point in points):  # before the first run, not the n-th
        fetch_weights(backbone, base.weights, base.image_size, quiet=out.quiet)

    mine = len(sweeps.shard_points(points, *share)) if share else len(points)
    out.log(f"Sweep folder: {folder} ({mine} runs{f' of {len(points)}, shard {shard}' if share else ''})")
    try:
        rows = sweeps.run_sweep(
            folder, points, base, shard=share, reporter=out.reporter(), distribution=distribution,
            tracking=tracking,
        )  # fmt: skip
    except TrainingInterrupted:
        click.echo("Interrupted. Run the same command again to resume the sweep.", err=True)  # even with -q
        raise click.exceptions.Exit(130) from None
    if not distribution.chief:
        out.log(f"{distribution.task}: sweep finished; the chief wrote the runs and tables")
        return
    if share:
        out.log(f"Shard {shard} done; once every shard is, the same command with --collect builds the tables")
        _render(out, rows, fmt, f"Shard {shard} results ({folder})")
        return
    if ensembles:
        rows = _make_ensembles(out, folder, points)
    _write_tables(out, folder, points, rows)
    _track_sweep(out, folder, points, tracking)
    _render(out, rows, fmt, f"Sweep results ({folder})")
    if not ensembles:
        _suggest_ensembles(out, folder, points)


def _share(shard: str | None, collect: bool, ensembles: bool) -> tuple[int, int] | None:
    """``--shard I/N`` as (I, N), checked against the options that need every shard's runs."""
    from scenecls.errors import UsageError
    from scenecls.training import sweep as sweeps

    share = None if shard is None else sweeps.parse_shard(shard)  # "" (an unset variable) is refused
    if share and collect:
        raise UsageError("--collect gathers every shard's runs; give it without --shard")
    if share and ensembles:
        raise UsageError("--ensemble needs every shard's runs: give it to --collect once they are done")
    return share


def _grid(backbones: str, unfreeze: str, dense: str, seeds: str | None, ensembles: bool) -> list:
    """The grid's points from the list options, each checked."""
    from scenecls.errors import UsageError
    from scenecls.training import sweep as sweeps

    try:
        dense_values = [int(d) for d in _csv_list(dense)]
    except ValueError:
        dense_values = None
    if dense_values is None or any(d < 0 for d in dense_values):
        raise UsageError(f"--dense takes numbers of 0 or more like 0,1,2,3; got {dense!r}")
    points = sweeps.grid(_csv_list(backbones), _csv_list(unfreeze), dense_values, _seeds(seeds))
    if seeds is not None and click.get_current_context().get_parameter_source("seed").name != "DEFAULT":
        raise UsageError("give --seeds or --seed, not both")
    if ensembles and not sweeps.seed_groups(points):
        raise UsageError("--ensemble joins the seeds of each recipe: give --seeds with two or more seeds")
    return points


def _seeds(value: str | None) -> list[int] | None:
    from scenecls.errors import UsageError

    if value is None:
        return None
    try:
        return [int(part) for part in _csv_list(value)]  # none at all: refused by the grid
    except ValueError:
        raise UsageError(f"--seeds takes whole numbers like 0,1,2; got {value!r}") from None


def _suggest_ensembles(out: Output, folder: Path, points) -> None:
    """How to join each recipe's seeds into one model (the one technique measured to gain every time)."""
    from scenecls.training import sweep as sweeps

    groups = sweeps.ensemble_folders(folder, points)
    for ensemble, members in list(groups.items())[:3]:
        joined = " ".join(str(m) for m in members)
        recipe = ensemble.name.removesuffix(sweeps.ENSEMBLE_SUFFIX)
        out.log(
            f"Ensemble of {recipe}'s {len(members)} seeds: scenecls ensemble {joined} --project {folder} "
            f"--name {ensemble.name} (or the sweep again with --ensemble)"
        )
    if len(groups) > 3:
        out.log(f"... and {len(groups) - 3} more recipes with several seeds")


def _make_ensembles(out: Output, folder: Path, points) -> list[dict]:
    """Each recipe's ensemble of its seeds not made yet, then the results with them (written again)."""
    from scenecls.ensemble import make_missing_ensembles
    from scenecls.training import sweep as sweeps

    made = make_missing_ensembles(sweeps.ensemble_folders(folder, points), reporter=out.reporter())
    for result in made:
        out.log(f"Made {result.run_dir}")
    rows = sweeps.collect_results(folder, points, out.reporter())
    sweeps.write_results(folder, rows)
    return rows


def _track_sweep(out: Output, folder: Path, points, tracking) -> None:
    """The tables and heat maps to the sweep's MLflow parent run (FINISHED once every run is)."""
    if tracking is None:
        return
    from scenecls.training import sweep as sweeps

    files = [folder / name for name in ("results.csv", "results.json", "results.md")]
    files += sorted(folder.glob("heatmap_*.png"))
    finished = not sweeps.unfinished(folder, points)
    missed = sweeps.log_sweep(folder, tracking, files, finished=finished, reporter=out.reporter())
    if missed:
        out.warn(f"MLflow did not get {', '.join(missed)} of the sweep; the sweep folder has them")


def _collect(out: Output, folder: Path, points, fmt: str, ensembles: bool = False, tracking=None) -> None:
    """Tables and heatmaps from the runs on disk (with ``ensembles``, the ensembles of each recipe's
    finished seeds made first); exit 3 while some runs are not finished."""
    from scenecls.training import sweep as sweeps

    sweeps.check_grid(folder, points)
    if ensembles:
        out.load_tensorflow()
        rows = _make_ensembles(out, folder, points)
    else:
        rows = sweeps.collect_results(folder, points, out.reporter())
        sweeps.write_results(folder, rows)
    _write_tables(out, folder, points, rows)
    _track_sweep(out, folder, points, tracking)
    _render(out, rows, fmt, f"Sweep results ({folder})")
    broken = sweeps.damaged(folder, points)
    if broken:
        shown = ", ".join(broken[:5]) + (", ..." if len(broken) > 5 else "")
        out.warn(f"{len(broken)} of {len(points)} runs are damaged (left out of the tables): {shown}")
    missing = [name for name in sweeps.unfinished(folder, points) if name not in broken]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        out.warn(f"{len(missing)} of {len(points)} runs have not finished: {shown}")
    if broken or missing:
        raise click.exceptions.Exit(3)


def _write_tables(out: Output, folder: Path, points, rows: list[dict]) -> None:
    """The heatmaps (results.csv, .json and .md are written by the library) and where they are."""
    from scenecls import plots
    from scenecls.training.sweep import ENSEMBLE_SUFFIX

    trained = [r for r in rows if not r["run"].endswith(ENSEMBLE_SUFFIX)]  # a cell is one recipe's runs
    for backbone in dict.fromkeys(p.backbone for p in points):
        if any(r["backbone"] == backbone for r in trained):
            path = plots.plot_sweep_heatmap(trained, backbone, folder / f"heatmap_{backbone}.png")
            out.log(f"Saved {path}")
    out.log(f"Saved {folder / 'results.csv'}, results.json, results.md")


def _class_count(data: Path | None) -> int:
    from scenecls.data.layout import index_dataset
    from scenecls.paths import default_dataset_dir

    try:
        return len(index_dataset(data or default_dataset_dir()).classes)
    except Exception:  # a dry run describes the grid even before the data is there
        return 6


HEADERS = {
    "run": "run",
    "backbone": "backbone",
    "dense": "dense",
    "unfreeze": "unfreeze",
    "phases": "phases",
    "unfrozen_blocks": "unfrozen blocks",
    "unfrozen_layers": "unfrozen layers",
    "trainable_params": "trainable params",
    "best_val_accuracy": "best val acc",
    "test_accuracy": "test acc",
    "epochs": "epochs",
    "seconds": "time",
}


def _render(out: Output, rows: list[dict], fmt: str, title: str) -> None:
    """The table on stdout (results, so even with -q), or JSON."""
    if fmt == "json":
        out.json(rows)
        return
    if not rows:
        return
    columns = list(rows[0])
    numeric = [HEADERS.get(c, c) for c in columns if isinstance(rows[0][c], (int, float)) and c != "dense"]
    out.table(
        [HEADERS.get(c, c) for c in columns],
        [[_cell(c, r[c]) for c in columns] for r in rows],
        title=title,
        numeric=numeric,
    )


def _cell(column: str, value):
    if value is None:
        return "-"
    if column == "seconds":
        return f"{value:.0f} s"
    if column == "trainable_params":
        return f"{value:,}"
    return value
