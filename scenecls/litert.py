"""Converting a Keras model to LiteRT and running LiteRT interpreters, as every part of scenecls does it.

Three parts use LiteRT: the export (``best.tflite``), the runtime that predicts with an exported file,
and the caches' frozen passes with ``--cache-runtime litert``. They convert and run alike: the model's
traced inference function, its variables frozen into constants (faster to convert than a SavedModel of
the whole Keras object: the timings are in ``scenecls.export_formats._tflite``), with the converter's chatter
held back, and an interpreter on every usable core (LiteRT runs one thread unless told) whose
announcement of its XNNPACK delegate is held back too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from scenecls.cores import usable_cores
from scenecls.progress import native_stderr_silenced


def inference_converter(model, input_shape: Sequence[int], *, input_name: str | None = None):
    """A ``TFLiteConverter`` of ``model``'s inference (``training=False``) on float32 batches of any
    size of ``input_shape`` (without the batch axis); the caller sets its operations and optimisations
    and converts it under :func:`conversion_output_held_back`."""
    import tensorflow as tf

    signature = [tf.TensorSpec([None, *(int(d) for d in input_shape)], tf.float32, name=input_name)]
    holder = tf.Module()  # what the converter tracks the function by
    holder.infer = tf.function(lambda x: model(x, training=False), input_signature=signature, autograph=False)
    return tf.lite.TFLiteConverter.from_concrete_functions([holder.infer.get_concrete_function()], holder)


@contextlib.contextmanager
def conversion_output_held_back() -> Iterator[None]:
    """Hold back what converters print: Python's prints would land in a script's JSON on stdout, warnings
    and the converter's C++ notes ("fully_quantize: 0, inference_type: 6, ...") in its log."""
    import io
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), native_stderr_silenced():
        warnings.simplefilter("ignore")
        yield


def interpreter(*, path: Path | None = None, content: bytes | None = None):
    """A LiteRT interpreter of the file at ``path`` or of the flatbuffer ``content``, on every usable
    core, its tensors not yet allocated. ImportError when ``ai-edge-litert`` is not installed; LiteRT's
    own errors (ValueError, RuntimeError) for a model it cannot load."""
    from ai_edge_litert.interpreter import Interpreter

    with native_stderr_silenced():  # LiteRT announces its XNNPACK delegate on stderr
        return Interpreter(
            model_path=None if path is None else str(path), model_content=content, num_threads=usable_cores()
        )


def resize_input(interpreter, index: int, shape: Sequence[int]) -> None:
    """Size ``interpreter``'s input tensor ``index`` for batches of ``shape`` and allocate its tensors
    (which is when the delegate prepares its kernels, and says so)."""
    interpreter.resize_tensor_input(index, list(shape))
    with native_stderr_silenced():
        interpreter.allocate_tensors()
