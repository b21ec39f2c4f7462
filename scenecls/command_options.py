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

EXPORT_FORMATS = ("savedmodel", "tflite", "onnx", "openvino")
FOLDER_FORMATS = ("savedmodel", "openvino")  # written as a folder holding the model, its labels and metadata
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
    every: float = option_field(
        1.0,
        "Videos: seconds between the frames classified.",
        kind="float",
        low=0.01,
        high=86_400,
        metavar="S",
    )
    smooth: int = option_field(
        3,
        "Videos, --segments: frames whose vote sets each frame's scene (1: none).",
        kind="int",
        low=1,
        high=101,
    )


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


@dataclass(frozen=True)
class ServeOptions:
    """``scenecls serve``: where it listens, how it batches, and the limits that keep it standing."""

    host: str = option_field(
        "127.0.0.1", "Address to listen on; 0.0.0.0 answers every network, so it is never the default."
    )
    port: int = option_field(
        8000, "Port to listen on (0: any free port; the address is printed).", kind="int", low=0, high=65535
    )
    max_batch: int = option_field(32, "Most images run through the model at once.", kind="int", low=1,
                                  high=1024)  # fmt: skip
    max_wait: float = option_field(
        5.0, "Milliseconds a batch waits for more images once the model is free.", kind="float",
        low=0, high=10_000, metavar="MS",
    )  # fmt: skip
    max_queue: int = option_field(
        256, "Images waiting at most; a request beyond that gets 503 and Retry-After.", kind="int",
        low=1, high=1_000_000,
    )  # fmt: skip
    max_body: float = option_field(20.0, "Largest request body, in megabytes (413 beyond).", kind="float",
                                   low=0.001, high=4096, metavar="MB")  # fmt: skip
    max_megapixels: float = option_field(
        40.0, "Largest image, in megapixels as decoded (an error row beyond).", kind="float", low=0.001,
        high=1000, metavar="MP",
    )  # fmt: skip
    decode_timeout: float = option_field(
        5.0, "Seconds one image may take to decode (an error row beyond).", kind="float", low=0.01,
        high=3600, metavar="S",
    )  # fmt: skip
    client_timeout: float = option_field(
        30.0, "Seconds a client may take to send its request's body (408 beyond).", kind="float",
        low=0.01, high=3600, metavar="S",
    )  # fmt: skip
    top_k: int = option_field(1, "Classes listed per image (a request's top_k overrides it).", kind="int",
                              low=1)  # fmt: skip
    min_confidence: float | None = option_field(
        None, "Answer unknown below this confidence (a request's min_confidence overrides it).",
        kind="float", low=0, high=1, metavar="P",
    )  # fmt: skip


SUGGEST_STRATEGIES = ("diverse", "uncertain")


@dataclass(frozen=True)
class SuggestOptions:
    """``scenecls suggest``."""

    budget: int = option_field(100, "Images to suggest.", kind="int", low=1, high=1_000_000, metavar="N")
    # diverse stays the default: on intel-dev the two measured within a seed's spread of each other
    # (benchmarks/README.md, "What to label next"), and only diverse keeps a budget off a burst of near
    # copies of one doubtful scene.
    strategy: str = option_field(
        "diverse",
        "How to choose among the images the model is least sure of: diverse (k-centre greedy: unlike the "
        "labelled images and each other) or uncertain (the least sure first, nothing else).",
        kind="choice", choices=SUGGEST_STRATEGIES,
    )  # fmt: skip
    batch_size: int = batch_size_field()


EVALUATE, PREDICT, EXPLAIN = EvaluateOptions(), PredictOptions(), ExplainOptions()
EXPORT, ENSEMBLE, SWEEP_GRID = ExportOptions(), EnsembleOptions(), SweepGrid()
SERVE, SUGGEST = ServeOptions(), SuggestOptions()
