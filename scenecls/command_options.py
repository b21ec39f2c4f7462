"""The options of the commands that use a trained model, each declared once: its default, range and
help, beside the others of its command (as Ultralytics' ``cfg/default.yaml`` declares its settings).

The CLI makes its click options from these fields (``scenecls.cli.options.option(name, Class)``) and
the library's functions take their defaults from them (``EVALUATE.top_k``), so that no default is typed
twice. Training's options are :class:`scenecls.config.TrainConfig`'s, inspecting's are
:class:`scenecls.inspection.options.InspectOptions`'. Nothing here imports NumPy or TensorFlow:
``--help`` reads these declarations.
"""

from __future__ import annotations

from dataclasses import dataclass

from scenecls.config_fields import batch_size_field, option_field

EXPORT_FORMATS = ("savedmodel", "tflite", "onnx")
QUANTIZATIONS = ("float16", "int8")


@dataclass(frozen=True)
class EvaluateOptions:
    """``scenecls evaluate``."""

    top_k: int = option_field(3, "Top-k accuracy for this k.", kind="int", low=1)
    batch_size: int = batch_size_field()


@dataclass(frozen=True)
class PredictOptions:
    """``scenecls predict``."""

    top_k: int = option_field(1, "Classes listed per image.", kind="int", low=1)
    batch_size: int = batch_size_field()


@dataclass(frozen=True)
class ExplainOptions:
    """``scenecls explain``: smaller batches, as each image keeps its gradients."""

    top_k: int = option_field(3, "Classes named per image.", kind="int", low=1)
    batch_size: int = batch_size_field(16)


@dataclass(frozen=True)
class ExportOptions:
    """``scenecls export``."""

    representative_images: int = option_field(
        100,
        "Images of the run's own data that set int8's value ranges.",
        kind="int",
        low=1,
        metavar="N",
        aliases=("--calibration",),
    )
    parity: int = option_field(  # images
        200, "Images run through both models to check the export (0: skip the check).", kind="int", low=0
    )


@dataclass(frozen=True)
class EnsembleOptions:
    """``scenecls ensemble``."""

    name: str = option_field("ensemble", "Run folder (ensemble2... if taken).")
    batch_size: int = batch_size_field()


@dataclass(frozen=True)
class SweepGrid:
    """``scenecls sweep``'s grid: comma lists, one run per combination."""

    backbones: str = option_field(
        "mobilenet_v2,xception,inception_resnet_v2", "Backbones, one run per value."
    )
    unfreeze: str = option_field("0,1,3,5", "Unfrozen blocks, one run per value.")
    dense: str = option_field("0,1,2,3", "Dense layers in the head, one run per value.")


EVALUATE, PREDICT, EXPLAIN = EvaluateOptions(), PredictOptions(), ExplainOptions()
EXPORT, ENSEMBLE, SWEEP_GRID = ExportOptions(), EnsembleOptions(), SweepGrid()
