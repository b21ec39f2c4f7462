"""The card's facts, gathered from a run folder's record (see the package's docstring for their sources)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scenecls import runs

FLOORS_SHOWN = (0.5, 0.7, 0.8, 0.9, 0.95)  # the confidence floors whose accuracy and coverage are shown


def card_facts(run_dir: Path | None, *, classes: list[str], input_size: tuple[int, int]) -> dict[str, Any]:
    """The card's facts as JSON-ready data (see the module's docstring for their sources)."""
    facts: dict[str, Any] = {
        "written_by": "scenecls",
        "classes": list(classes),
        "input": {
            "height": input_size[0],
            "width": input_size[1],
            "pixels": "RGB, 0-255, float32, (batch, height, width, 3); the model scales them itself",
        },
        "output": "probabilities (softmax), one per class in the order of classes",
    }
    if run_dir is None:
        return facts
    run = runs.Run(run_dir)
    recorded, metrics = run.recorded, run.optional(runs.METRICS)
    facts["run"] = run_dir.name
    facts["created"] = recorded.get("created")
    facts["backbone"] = recorded.get("backbone")
    facts["weights"] = _weights(recorded.get("weights"))
    facts["recipe"] = {
        key: recorded.get(key)
        for key in ("dense", "unfreeze", "epochs", "finetune_epochs", "lr", "finetune_lr", "seed")
    }
    facts["data"] = {
        "fingerprint": recorded.get("data_fingerprint"),
        "images": recorded.get("images"),
        "validation": recorded.get("val_source"),
    }
    distillation = recorded.get("distillation")
    if distillation:  # a student: what it learnt from besides its labels
        facts["teacher"] = {
            "run": Path(distillation.get("teacher") or "").name,
            "backbone": distillation.get("teacher_backbone"),
            "ensemble": distillation.get("teacher_is_ensemble"),
            "test_accuracy": distillation.get("teacher_test_accuracy"),
            "model_sha256": distillation.get("teacher_model_sha256"),
            "targets": distillation.get("targets"),
            "unlabelled_images": distillation.get("unlabelled_used"),
            "unlabelled_fingerprint": distillation.get("unlabelled_digest"),
        }
    facts["versions"] = recorded.get("versions")
    facts["test"] = _test(run, metrics)
    calibration = metrics.get("calibration") or {}
    facts["calibration"] = {
        "temperature": metrics.get("temperature"),
        "applied": calibration.get("applied", metrics.get("temperature") not in (None, 1.0)),
        "fitted_on": calibration.get("fitted_on"),
        "test_ece_before": ((calibration.get("test") or {}).get("before") or {}).get("ece"),
        "test_ece_after": ((calibration.get("test") or {}).get("after") or {}).get("ece"),
    }
    facts["best_val_accuracy"] = metrics.get("best_val_accuracy")
    return facts


def _weights(value: Any) -> str | None:
    """Where the backbone's weights came from, without a path of the machine that trained it."""
    if value in (None, "none"):
        return "none (random initialisation)"
    if value == "imagenet":
        return "imagenet"
    return f"imagenet, from the file {Path(str(value)).name}"


def _test(run: runs.Run, metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The test's scores: ``evaluation.json`` when it is of best.keras on the run's own data (fuller),
    else the final test the run recorded; None when the run had no test split."""
    evaluation = run.optional(runs.EVALUATION)
    if evaluation.get("split") == "test" and Path(str(evaluation.get("model", ""))).name == runs.BEST:
        source, detail, accuracy = "scenecls evaluate", evaluation, evaluation.get("accuracy")
    elif metrics.get("test_detail"):
        source, detail, accuracy = (
            "the run's final test",
            metrics["test_detail"],
            metrics.get("test_accuracy"),
        )
    elif metrics.get("test_accuracy") is not None:
        return {"source": "the run's final test", "accuracy": metrics["test_accuracy"]}
    else:
        return None
    return {
        "source": source,
        "images": detail.get("images"),
        "accuracy": accuracy,
        "per_class": [
            {
                "class": row["class"],
                "accuracy": row.get("recall"),
                "precision": row.get("precision"),
                "images": row.get("support"),
            }
            for row in detail.get("per_class") or []
        ],
        "confusions": _confusions(
            detail.get("confusion") or [], [r["class"] for r in detail.get("per_class") or []]
        ),
        "coverage": [
            row for row in detail.get("coverage") or [] if row.get("min_confidence") in FLOORS_SHOWN
        ],
    }


def _confusions(confusion: list[list[int]], classes: list[str], shown: int = 3) -> list[dict[str, Any]]:
    """The largest off-diagonal cells: which class is taken for which, how often."""
    cells = []
    for i, row in enumerate(confusion):
        total = sum(row)
        for j, n in enumerate(row):
            if i != j and n and i < len(classes) and j < len(classes):
                cells.append({"true": classes[i], "predicted": classes[j], "images": n, "of": total})
    return sorted(cells, key=lambda c: (-c["images"], c["true"]))[:shown]
