"""A trained classifier in any of the forms it leaves the tool in, behind one ``predict`` interface.

* ``.keras`` — the Keras model (imports TensorFlow);
* a SavedModel folder (``saved_model.pb`` inside), as ``scenecls export --format savedmodel`` writes it
  (imports TensorFlow);
* ``.tflite`` — run by LiteRT (``ai-edge-litert``), **without** TensorFlow;
* ``.onnx`` — run by ONNX Runtime, **without** TensorFlow;
* an OpenVINO folder (``model.xml`` and ``model.bin`` inside, as ``scenecls export --to openvino`` writes
  it), or its ``model.xml`` — run by OpenVINO, **without** TensorFlow.

Every runtime takes raw 0-255 RGB float32 images of its ``input_size`` and returns class probabilities.
Importing this module imports neither TensorFlow nor a runtime: each is imported when a model of its
kind is loaded, so ``scenecls predict photo.jpg --model best.tflite`` starts in a fraction of a second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np

from scenecls import litert
from scenecls.checksums import changed_since_written, checksum_matches
from scenecls.errors import ModelError, first_line

INSTALL = {
    "tflite": "pip install ai-edge-litert",
    "onnx": "pip install 'scenecls[onnx]'",
    "openvino": "pip install 'scenecls[openvino]'",
}
OPENVINO_GRAPH, OPENVINO_WEIGHTS = "model.xml", "model.bin"  # an OpenVINO export's two files
METADATA_SUFFIX = ".json"  # model.tflite -> model.tflite.json beside it; SavedModel: metadata.json inside


class Runtime(Protocol):
    kind: str
    input_size: tuple[int, int]  # (height, width)
    num_classes: int

    def predict(self, images: np.ndarray) -> np.ndarray:
        """``(n, height, width, 3)`` float32 0-255 RGB -> ``(n, classes)`` probabilities."""


def model_kind(path: Path) -> str:
    """``keras``, ``savedmodel``, ``tflite``, ``onnx`` or ``openvino``, from the path; a one-line error
    otherwise."""
    path = Path(path)
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        if (path / OPENVINO_GRAPH).is_file():
            return "openvino"
        raise ModelError(f"{path} is a folder but neither a SavedModel nor an OpenVINO model")
    kinds = {".keras": "keras", ".tflite": "tflite", ".onnx": "onnx", ".xml": "openvino"}
    if path.suffix.lower() in kinds:
        return kinds[path.suffix.lower()]
    raise ModelError(
        f"{path}: not a model scenecls reads (.keras, .tflite, .onnx, a SavedModel or OpenVINO folder)"
    )


def needs_tensorflow(path: Path) -> bool:
    return model_kind(path) in ("keras", "savedmodel")


def load_runtime(
    path: Path, *, batch_size: int = 32, precision: str = "off", jit: bool = False, trust_model: bool = False
) -> Runtime:
    """The model at ``path`` ready to predict; damaged or foreign files are one-line errors.

    ``precision`` (``off``, ``bfloat16``, ``float16``) and ``jit`` (XLA) apply to ``.keras`` models;
    exported ones run as they were exported. A SavedModel's graph is checked for ops a classifier does
    not need (:mod:`scenecls.safety`) unless ``trust_model``.
    """
    kind = model_kind(path)
    if kind == "keras":
        return KerasRuntime(Path(path), batch_size=batch_size, precision=precision, jit=jit)
    if kind == "savedmodel":
        return SavedModelRuntime(Path(path), batch_size=batch_size, trust_model=trust_model)
    if kind == "openvino":
        return OpenVinoRuntime(Path(path), batch_size=batch_size)
    if not checksum_matches(path):  # an export of ours changed since it was written
        raise ModelError(changed_since_written(path))
    loader = {"tflite": LiteRTRuntime, "onnx": OnnxRuntime}
    return loader[kind](Path(path), batch_size=batch_size)


class FlipAveraged:
    """Test-time augmentation: the mean of a runtime's probabilities for each image and its mirror
    image (left-right), the flip the models were trained with. Twice the inference cost."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.kind = runtime.kind
        self.input_size = runtime.input_size
        self.num_classes = runtime.num_classes

    def predict(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        return (self.runtime.predict(images) + self.runtime.predict(images[:, :, ::-1, :].copy())) / 2


def metadata_path(path: Path) -> Path:
    """Where the metadata of an exported model lives: inside a SavedModel or OpenVINO folder (also for
    that folder's ``model.xml``), beside a file."""
    path = Path(path)
    if path.is_dir():
        return path / "metadata.json"
    if path.name == OPENVINO_GRAPH and (path.parent / "metadata.json").is_file():
        return path.parent / "metadata.json"
    return path.with_name(path.name + METADATA_SUFFIX)


def exported_classes(path: Path) -> list[str] | None:
    """The class names written with an exported model (its metadata, else ``labels.txt``)."""
    path = Path(path)
    meta = metadata_path(path)
    if meta.is_file():
        try:
            return list(json.loads(meta.read_text(encoding="utf-8"))["classes"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{meta} is unreadable: {first_line(exc)}") from exc
    labels = (path if path.is_dir() else path.parent) / "labels.txt"
    if labels.is_file():
        return [line.strip() for line in labels.read_text(encoding="utf-8").splitlines() if line.strip()]
    return None


def _missing_runtime(kind: str, module: str) -> ModelError:
    return ModelError(f"running a .{kind} model needs the {module} package: {INSTALL[kind]}")


class KerasRuntime:
    """A scenecls ``.keras`` file, or (:meth:`of`) a classifier already in memory; computing in
    ``precision`` (see :func:`scenecls.precision.with_precision`), compiled with XLA when ``jit``."""

    kind = "keras"

    def __init__(
        self, path: Path, *, batch_size: int = 32, precision: str = "off", jit: bool = False
    ) -> None:
        from scenecls.classifier import load_model
        from scenecls.precision import with_precision

        self._use(with_precision(load_model(path), precision), batch_size, jit)

    @classmethod
    def of(cls, model, batch_size: int = 32, *, jit: bool = False) -> KerasRuntime:
        runtime = cls.__new__(cls)
        runtime._use(model, batch_size, jit)
        return runtime

    def _use(self, model, batch_size: int, jit: bool) -> None:
        from scenecls.classifier import inference_function, input_size, num_classes
        from scenecls.models.folding import for_inference

        self.model = model
        self.input_size = input_size(model)
        self.num_classes = num_classes(model)
        self._forward = inference_function(for_inference(model), batch_size, jit=jit)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self._forward(images)


class SavedModelRuntime:
    """A SavedModel written by ``scenecls export``: its ``serve_pixels`` signature. A graph runs whatever
    ops it holds, so one from elsewhere is checked first (``trust_model`` skips that)."""

    kind = "savedmodel"

    def __init__(self, path: Path, *, batch_size: int = 32, trust_model: bool = False) -> None:
        import tensorflow as tf

        if not trust_model:
            from scenecls.safety import check_savedmodel

            check_savedmodel(path)
        try:
            loaded = tf.saved_model.load(str(path))
            self._serve = loaded.signatures["serve_pixels"]
        except Exception as exc:  # TensorFlow raises many kinds for a damaged folder
            raise ModelError(f"cannot load the SavedModel {path}: {first_line(exc, 300)}") from exc
        self._loaded = loaded  # keeps the signature's variables alive
        spec = self._serve.structured_input_signature[1]["pixels"]
        self.input_size = (int(spec.shape[1]), int(spec.shape[2]))
        self.num_classes = int(self._serve.structured_outputs["probabilities"].shape[-1])

    def predict(self, images: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        outputs = self._serve(pixels=tf.constant(np.asarray(images, dtype=np.float32)))
        return np.asarray(outputs["probabilities"])


class LiteRTRuntime:
    kind = "tflite"

    def __init__(self, path: Path, *, batch_size: int = 32) -> None:
        try:
            import ai_edge_litert.interpreter  # noqa: F401
        except ImportError:
            raise _missing_runtime("tflite", "ai-edge-litert") from None
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
        self._path = path
        try:
            # every core, where LiteRT runs one thread unless told: 1.7x `predict`'s images a second (2 cores)
            self._interpreter = litert.interpreter(path=path)
            self._input = self._interpreter.get_input_details()[0]
            self._output = self._interpreter.get_output_details()[0]
        except Exception as exc:  # LiteRT raises ValueError/RuntimeError for a damaged file
            raise ModelError(f"cannot load {path} as a LiteRT model: {first_line(exc, 300)}") from exc
        shape = self._input["shape"]
        if len(shape) != 4 or shape[3] != 3:
            raise ModelError(f"{path} does not take RGB images (input shape {list(shape)})")
        self.input_size = (int(shape[1]), int(shape[2]))
        self.num_classes = int(self._output["shape"][-1])
        self._batch = 0

    def predict(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        try:
            if len(images) != self._batch:  # the interpreter is sized for one batch size at a time
                shape = [len(images), *self.input_size, 3]
                litert.resize_input(self._interpreter, self._input["index"], shape)
                self._batch = len(images)
            self._interpreter.set_tensor(self._input["index"], images)
            self._interpreter.invoke()
            return np.array(self._interpreter.get_tensor(self._output["index"]))
        except (RuntimeError, ValueError) as exc:  # a damaged file loads, then fails here
            raise ModelError(f"{self._path} is damaged: LiteRT says {first_line(exc, 200)}") from exc


class OnnxRuntime:
    kind = "onnx"

    def __init__(self, path: Path, *, batch_size: int = 32) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise _missing_runtime("onnx", "onnxruntime") from None
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
        try:
            self._session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf kinds
            raise ModelError(f"cannot load {path} as an ONNX model: {first_line(exc, 300)}") from exc
        node = self._session.get_inputs()[0]
        shape = node.shape
        if len(shape) != 4 or shape[3] != 3 or not all(isinstance(d, int) for d in shape[1:3]):
            raise ModelError(f"{path} does not take RGB images of a fixed size (input shape {shape})")
        self._name = node.name
        self.input_size = (int(shape[1]), int(shape[2]))
        classes = self._session.get_outputs()[0].shape[-1]
        if not isinstance(classes, int):
            raise ModelError(f"{path} does not say how many classes it predicts")
        self.num_classes = classes

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._session.run(None, {self._name: np.asarray(images, dtype=np.float32)})[0])


class OpenVinoRuntime:
    """An OpenVINO IR (``model.xml`` + ``model.bin``) compiled for the CPU. The IR holds only OpenVINO's
    standard operations unless extensions are loaded, which this never does."""

    kind = "openvino"

    def __init__(self, path: Path, *, batch_size: int = 32) -> None:
        graph = path / OPENVINO_GRAPH if path.is_dir() else path
        for part in (graph, graph.with_suffix(".bin")):
            if not part.is_file():
                raise ModelError(f"{part} does not exist: an OpenVINO model is its .xml and .bin together")
            if not checksum_matches(part):
                raise ModelError(changed_since_written(part))
        try:
            import openvino
        except ImportError:
            raise _missing_runtime("openvino", "openvino") from None
        try:
            self._compiled = openvino.Core().compile_model(str(graph), "CPU")
        except Exception as exc:  # OpenVINO raises RuntimeError for a damaged or foreign file
            raise ModelError(f"cannot load {graph} as an OpenVINO model: {first_line(exc, 300)}") from exc
        shape = self._compiled.input(0).get_partial_shape()
        if shape.rank.get_length() != 4 or not shape[1].is_static or not shape[2].is_static or shape[3] != 3:
            raise ModelError(f"{graph} does not take RGB images of a fixed size (input shape {shape})")
        self.input_size = (shape[1].get_length(), shape[2].get_length())
        classes = self._compiled.output(0).get_partial_shape()[-1]
        if not classes.is_static:
            raise ModelError(f"{graph} does not say how many classes it predicts")
        self.num_classes = classes.get_length()
        self._output = self._compiled.output(0)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._compiled(np.asarray(images, dtype=np.float32))[self._output])


# For serving (batches): the runtimes in the order of their measured batch throughput on a CPU
# (benchmarks/README.md, "With OpenVINO": ONNX Runtime 332, OpenVINO 319, LiteRT 198, Keras 106 img/s).
FASTER_IN_BATCHES = (("best.onnx", "onnxruntime"), ("best_openvino", "openvino"))  # then best.tflite


def fastest_for_batches(model_path: Path, warn=None) -> Path:
    """For a run's ``best.keras``, the export beside it that runs batches fastest (see
    :data:`FASTER_IN_BATCHES`): one at least as new as ``best.keras``, unchanged since written, whose
    runtime is installed; else :func:`fast_model`'s choice."""
    import importlib.util

    if model_path.suffix != ".keras":
        return model_path
    newest = model_path.stat().st_mtime
    for name, module in FASTER_IN_BATCHES:
        candidate = model_path.with_name(name)
        files = (
            [candidate / OPENVINO_GRAPH, candidate / OPENVINO_WEIGHTS] if candidate.is_dir() else [candidate]
        )
        if not all(f.is_file() and f.stat().st_mtime >= newest for f in files):
            continue
        if importlib.util.find_spec(module) is None:
            continue
        changed = [f for f in files if not checksum_matches(f)]
        if changed:
            if warn is not None:
                warn(f"{changed_since_written(changed[0]).removesuffix('; refused')}: not using it")
            continue
        return candidate
    return fast_model(model_path, warn=warn)


def fast_model(model_path: Path, warn=None) -> Path:
    """For a run's ``best.keras``, the ``best.tflite`` exported from it when it is at least as new and
    LiteRT can run it (a fraction of a second instead of seconds); else ``model_path`` itself. A
    ``best.tflite`` that is no longer the file written (its checksum differs) is passed over, with one
    ``warn``."""
    tflite = model_path.with_suffix(".tflite")  # the caller gives a run's best.keras
    if model_path.suffix != ".keras" or not tflite.is_file():
        return model_path
    if tflite.stat().st_mtime < model_path.stat().st_mtime:
        return model_path  # best.keras changed since (a resumed or extended run)
    import importlib.util

    if importlib.util.find_spec("ai_edge_litert") is None:
        return model_path
    if not checksum_matches(tflite):
        if warn is not None:
            warn(
                f"{changed_since_written(tflite).removesuffix('; refused')}: using {model_path.name} instead"
            )
        return model_path
    return tflite
