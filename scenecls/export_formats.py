"""How each export format is written from a Keras classifier, one writer per format.

SavedModel through Keras's ``ExportArchive`` (two signatures: encoded images and pixels), LiteRT from the
traced inference function with its variables frozen, ONNX through Keras's ``export`` (tf2onnx), OpenVINO
through its own converter. Each writes one path; :mod:`scenecls.export` stages, checks and labels it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scenecls.classifier import input_size
from scenecls.errors import ModelError, UsageError, first_line
from scenecls.runtimes import OPENVINO_GRAPH


def write_format(fmt: str, model, path: Path, **options) -> None:
    """Write ``model`` as ``fmt`` to ``path`` (``options``: classes, quantize, representative)."""
    writers = {"savedmodel": _savedmodel, "tflite": _tflite, "onnx": _onnx, "openvino": _openvino}
    writers[fmt](model, path, **options)


def _savedmodel(model, path: Path, *, classes: list[str], **_) -> None:
    """Two signatures: ``serving_default`` takes encoded image bytes (JPEG, PNG, ...) as TF Serving's
    REST API sends them (``{"b64": ...}``) and ``serve_pixels`` decoded pixels; both return
    probabilities, class ids and class names."""
    import keras
    import tensorflow as tf

    height, width = input_size(model)
    names = tf.constant(classes)

    def outputs(pixels):
        probabilities = model(pixels, training=False)
        ids = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {"probabilities": probabilities, "class_ids": ids, "class_names": tf.gather(names, ids)}

    def decode(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image = tf.image.resize(tf.cast(image, tf.float32), (height, width), antialias=True)
        return tf.clip_by_value(image, 0.0, 255.0)

    def serve_bytes(image_bytes):
        pixels = tf.map_fn(
            decode, image_bytes, fn_output_signature=tf.TensorSpec((height, width, 3), tf.float32)
        )
        return outputs(pixels)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default", serve_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]
    )
    archive.add_endpoint(
        "serve_pixels",
        outputs,
        input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name="pixels")],
    )
    archive.write_out(str(path), verbose=False)


def _tflite(model, path: Path, *, quantize: str | None, representative: np.ndarray | None, **_) -> None:
    """Convert the model's traced inference function, its variables frozen into constants, and write the
    ``serving_default`` signature (``pixels`` in, ``output_0`` out) into the file.

    Keras's own ``export(format="litert")`` saves the whole Keras object graph as a SavedModel and
    converts that (MobileNetV2 at 224 px: 9.0 s); a SavedModel of the inference function alone took
    5.0 s; frozen, 2.3 s (float16 2.1 s, int8 2.4 s), the same answers. The converter writes a
    signature only on its SavedModel path, so this one adds it to the flatbuffer itself.
    """
    import tensorflow as tf

    from scenecls.litert import inference_converter

    height, width = input_size(model)

    def convert() -> bytes:
        converter = inference_converter(model, (height, width, 3), input_name="pixels")
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
        if quantize == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":

            def representative_dataset():
                for image in representative:
                    yield [np.asarray(image, dtype=np.float32)[None]]

            # int8 weights and activations inside, float32 raw pixels in and probabilities out.
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative_dataset
        return _with_serving_signature(converter.convert())

    _quietly(lambda: path.write_bytes(convert()))


def _with_serving_signature(flatbuffer: bytes) -> bytes:
    """``flatbuffer`` with the signature LiteRT's signature runners call: ``serving_default``, its one
    input ``pixels`` and its one output ``output_0`` (the names TensorFlow gives a SavedModel's)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    tflite = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    graph = tflite.subgraphs[0]

    def tensor(name: str, index: int):
        named = schema.TensorMapT()
        named.name, named.tensorIndex = name, index
        return named

    signature = schema.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = "serving_default", 0
    signature.inputs = [tensor("pixels", int(graph.inputs[0]))]
    signature.outputs = [tensor("output_0", int(graph.outputs[0]))]
    tflite.signatureDefs = [signature]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(tflite))


def _onnx(model, path: Path, **_) -> None:
    try:
        import tf2onnx  # noqa: F401  (Keras's ONNX export needs it)
    except ImportError:
        raise ModelError("--to onnx needs tf2onnx: pip install 'scenecls[onnx]'") from None
    height, width = input_size(model)
    model(np.zeros((1, height, width, 3), np.float32), training=False)  # Keras exports only a called model
    _quietly(lambda: model.export(str(path), format="onnx", verbose=False))


def _openvino(model, path: Path, **_) -> None:
    """A folder with the OpenVINO IR (``model.xml``, the graph, and ``model.bin``, the weights)."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        raise ModelError("--to openvino needs OpenVINO: pip install 'scenecls[openvino]'")
    path.mkdir()
    _quietly(lambda: model.export(str(path / OPENVINO_GRAPH), format="openvino", verbose=False))


def _quietly(export) -> None:
    """Run a converter, what it prints held back
    (:func:`~scenecls.litert.conversion_output_held_back`); its failures become one-line errors
    (converters raise anything)."""
    from scenecls.litert import conversion_output_held_back

    try:
        with conversion_output_held_back():
            export()
    except (ModelError, UsageError):
        raise
    except Exception as exc:
        raise ModelError(f"the export failed: {first_line(exc, 300)}") from exc
