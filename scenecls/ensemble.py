"""Ensembles: several finished runs as one model that averages their predicted probabilities.

Runs that differ only by their seed make different mistakes, so their mean is right more often than
each of them: three MobileNetV2 runs of the same recipe, averaged, scored 0.4 to 1.5 points above
their mean on intel-dev's test split in each of eight sets measured (``benchmarks/README.md``), at
three times the cost of a prediction.

The ensemble is one Keras model, the members side by side on one input and then their mean, saved as
a run folder's ``best.keras``; ``evaluate``, ``predict``, ``export`` and ``plot`` take it as they take
any run. Its members' validation splits differ when their seeds do (one member's validation images
trained another), so an ensemble is judged on test images, never on its members' validation split.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scenecls import runs
from scenecls.classifier import ENSEMBLE_NAME, input_size, load_model, save_model
from scenecls.command_options import ENSEMBLE
from scenecls.errors import UsageError
from scenecls.progress import NullReporter, Reporter
from scenecls.units import count

MEMBER_PREFIX = "member_"


@dataclass
class EnsembleResult:
    run_dir: Path
    members: list[str]
    image_size: int
    test_accuracy: float | None  # the ensemble's, on the first member's test split
    member_test_accuracy: list[float | None] = field(default_factory=list)  # each member's, as trained
    test_images: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["run_dir"] = str(self.run_dir)
        return data


def average_models(models: list, name: str = ENSEMBLE_NAME):
    """One functional model computing the mean of ``models``' outputs on one shared input.

    Each member keeps its own layers and weights (nothing is copied), renamed ``member_0``,
    ``member_1``... so that the ensemble's layer names are unique.
    """
    import keras

    if len(models) < 2:
        raise UsageError("an ensemble needs at least two models")
    images = keras.Input(shape=models[0].input_shape[1:], name="images")
    outputs = [
        keras.Model(model.input, model.output, name=f"{MEMBER_PREFIX}{i}")(images)
        for i, model in enumerate(models)
    ]
    mean = keras.layers.Average(name="mean_probabilities", dtype="float32")(outputs)
    return keras.Model(images, mean, name=name)


def make_ensemble(
    refs: list[str],
    project: Path,
    *,
    name: str = ENSEMBLE.name,
    export: bool = True,
    batch_size: int = ENSEMBLE.batch_size,
    reporter: Reporter | None = None,
) -> EnsembleResult:
    """A new run folder ``project/name`` (``name2``... when taken) whose best model averages the best
    models of the runs ``refs`` (folders or names in ``project``), tested on the first member's test
    split when its data has one, with a ``best.tflite`` for a fast ``predict`` unless not ``export``.

    The members must be finished runs for the same classes at the same input size, and not ensembles
    themselves. Nothing is written until they are checked; a failure after that removes the new folder.
    """
    reporter = reporter or NullReporter()
    started = time.monotonic()
    members = _members(refs, project)
    configs = [runs.Run(member).recorded for member in members]
    _check_members(members, configs)
    if len({c.get("data_fingerprint") for c in configs}) > 1:
        reporter.warn("the members were trained on different data; testing on the first one's")
    reporter.log(f"Ensemble of {len(members)} runs: {', '.join(str(m) for m in members)}")
    models = [load_model(member / runs.BEST) for member in members]
    model = average_models(models)
    run_dir = runs.create_run_dir(project, name)
    try:
        return _write_run(run_dir, members, configs, model, batch_size, export, reporter, started)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)  # a new folder: nothing of the user's is in it
        raise


def make_missing_ensembles(
    groups: dict[Path, list[Path]], *, export: bool = False, batch_size: int = ENSEMBLE.batch_size,
    reporter: Reporter | None = None,
) -> list[EnsembleResult]:  # fmt: skip
    """Each ensemble folder of ``groups`` (folder -> its members' run folders) that is not a finished
    run yet, made from its members when they have all finished; the ensembles made.

    Made again by the same command, finished ensembles are kept as they are. A folder of that name that
    is not a finished run (an ensemble killed mid-write) is left alone, with a warning: it is not ours to
    delete.
    """
    reporter = reporter or NullReporter()
    made = []
    for run_dir, members in groups.items():
        if run_dir.exists():
            if not _finished(run_dir):
                reporter.warn(f"{run_dir} exists and is not a finished run; remove it to make that ensemble")
            continue
        unfinished = [m.name for m in members if not _finished(m)]
        if unfinished:
            reporter.warn(f"{run_dir.name}: {', '.join(unfinished)} not finished; no ensemble yet")
            continue
        refs, project = [str(m) for m in members], run_dir.parent
        options = {"export": export, "batch_size": batch_size, "reporter": reporter}
        made.append(make_ensemble(refs, project, name=run_dir.name, **options))
    return made


def _members(refs: list[str], project: Path) -> list[Path]:
    members = [runs.resolve_run(ref, project) for ref in refs]
    if len({m.resolve() for m in members}) != len(members):
        raise UsageError("a run is named twice; an ensemble averages different runs")
    if len(members) < 2:
        raise UsageError("an ensemble needs at least two runs")
    for member in members:
        if not _finished(member):
            raise UsageError(f"{member} has not finished training; resume it first")
    return members


def _finished(run_dir: Path) -> bool:
    """A run whose state says finished, with its best model."""
    return runs.recorded_status(run_dir) == "finished" and (run_dir / runs.BEST).is_file()


def _check_members(members: list[Path], configs: list[dict]) -> None:
    first, classes, size = members[0], configs[0].get("classes"), configs[0].get("image_size")
    for member, config in zip(members, configs, strict=True):
        if config.get("ensemble"):
            raise UsageError(f"{member} is an ensemble itself; name its members instead")
        if config.get("classes") != classes:
            raise UsageError(
                f"{member} predicts other classes ({', '.join(config.get('classes') or [])}) than {first} "
                f"({', '.join(classes or [])})"
            )
        if config.get("image_size") != size:
            raise UsageError(
                f"{member} reads {config.get('image_size')} px images and {first} {size} px: an ensemble's "
                f"members share one input size"
            )


def _write_run(
    run_dir: Path, members: list[Path], configs: list[dict], model, batch_size: int, export: bool,
    reporter: Reporter, started: float,
) -> EnsembleResult:  # fmt: skip
    """The new run's files, ``metrics.json`` last (with the seconds since ``started``)."""
    from scenecls.metrics import evaluate_predictions, predict_split

    first = configs[0]
    size = input_size(model)[0]
    backbones = sorted({c.get("backbone") for c in configs})
    ensemble = {
        "members": [str(m.resolve()) for m in members],  # found again from any folder
        "seeds": [c.get("seed") for c in configs],
        "backbones": [c.get("backbone") for c in configs],
    }
    # The first member's settings stand for the data (its path, split and seed), so that evaluate and
    # export find the same images; "ensemble" says what the model is.
    config = {**first, "ensemble": ensemble, "backbone": "+".join(backbones), "unfreeze_reports": []}
    config["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    runs.write_json(run_dir / runs.CONFIG, config)
    labels = runs.Run(members[0]).labels
    runs.write_json(run_dir / runs.LABELS, {**labels, "backbone": config["backbone"]})
    save_model(model, run_dir / runs.BEST)

    member_tests = []
    for member in members:
        member_tests.append(runs.Run(member).optional(runs.METRICS).get("test_accuracy"))
    data, _ = runs.Run(members[0]).prepared_data(reporter=reporter)
    test_accuracy = None
    tested = 0
    if data.test:
        reporter.log(f"Testing the ensemble on {count(len(data.test), 'test image')}")
        probs = predict_split(model, data.test, batch_size)
        evaluation = evaluate_predictions(probs, np.asarray(data.test.labels), data.classes, split="test")
        test_accuracy, tested = evaluation.accuracy, evaluation.images
    metrics = {
        "best_val_accuracy": None,  # the members' validation splits differ: see the module's docstring
        "best_epoch": None,
        "best_phase": None,
        "epochs": 0,
        "stopped_early": False,
        "test_accuracy": test_accuracy,
        "test_loss": None,
        "member_test_accuracy": member_tests,
    }
    if export:
        from scenecls.run_export import write_fast_predict

        metrics["export"] = write_fast_predict(
            run_dir, data.classes, data.held_out(test_first=True)[0], size, reporter, model=model
        )
    metrics["seconds"] = round(time.monotonic() - started, 1)
    run = runs.Run(run_dir)
    run.write_metrics(metrics)
    run.write_state(runs.RunState(status="finished"))
    from scenecls.model_card import refresh_card

    refresh_card(run_dir, reporter)
    return EnsembleResult(
        run_dir, [str(m) for m in members], size, test_accuracy, member_tests, tested, metrics["seconds"]
    )
