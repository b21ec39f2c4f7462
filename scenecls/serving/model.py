"""The model a server answers with: its fastest runtime, its classes, and the facts ``/metadata`` gives.

A run folder is served through the fastest form it holds for batches (see
:func:`scenecls.runtimes.fastest_for_batches`); an exported model runs as exported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scenecls.checksums import file_sha256, recorded_checksum


@dataclass
class ServedModel:
    runtime: Any  # scenecls.runtimes.Runtime
    classes: list[str]
    path: Path
    run_dir: Path | None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return self.facts["fingerprint"]


def load_served_model(
    model_path: Path, run_dir: Path | None, *, batch_size: int, trust_model: bool = False
) -> ServedModel:
    """``model_path`` (as :func:`scenecls.runs.resolve_model` found it) loaded and described."""
    from scenecls.runs import classes_for
    from scenecls.runtimes import load_runtime

    runtime = load_runtime(model_path, batch_size=batch_size, trust_model=trust_model)
    classes = classes_for(model_path, run_dir, runtime.num_classes)
    served = ServedModel(runtime, classes, model_path, run_dir)
    served.facts = describe(served)
    return served


def fingerprint(path: Path) -> str:
    """The first 16 hex digits of the model's SHA-256 (as recorded when written, else computed); a
    SavedModel's is its graph file's, an OpenVINO model's its weights file's."""
    if path.is_dir():
        target = path / "saved_model.pb" if (path / "saved_model.pb").is_file() else path / "model.bin"
    else:
        target = path.with_suffix(".bin") if path.suffix == ".xml" else path
    digest = recorded_checksum(target) or file_sha256(target)
    return digest[:16]


def describe(served: ServedModel) -> dict[str, Any]:
    """What a client may want to know before it trusts the answers: the classes and input, the model's
    fingerprint and runtime, and, for a run, its backbone, temperature and measured accuracy."""
    height, width = served.runtime.input_size
    facts: dict[str, Any] = {
        "model": served.path.name,
        "fingerprint": fingerprint(served.path),
        "runtime": served.runtime.kind,
        "classes": served.classes,
        "input": {"height": height, "width": width, "channels": 3, "pixels": "RGB 0-255"},
    }
    if served.run_dir is not None:
        from scenecls.runs import METRICS, Run

        run = Run(served.run_dir)
        metrics = run.optional(METRICS)
        calibration = metrics.get("calibration") or {}
        facts["run"] = served.run_dir.name
        facts["backbone"] = run.recorded.get("backbone")
        facts["temperature"] = metrics.get("temperature")
        facts["accuracy"] = {
            "test": metrics.get("test_accuracy"),
            "best_val": metrics.get("best_val_accuracy"),
        }
        test_after = (calibration.get("test") or {}).get("after") or {}
        facts["test_ece"] = test_after.get("ece")
    return facts
