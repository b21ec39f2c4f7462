"""Inference of a frozen model over many images, on TensorFlow or on LiteRT.

Building a cache sends every image, and every augmented copy, once through the frozen part of a
backbone: most of a first run's waiting. On CPUs, LiteRT's kernels (XNNPACK) run MobileNetV2's frozen
passes 1.5 times and ConvNeXt-Tiny's 4.2 to 4.7 times as fast as TensorFlow's, EfficientNetV2-B0's 1.1
times, while Xception, InceptionResNetV2 and ResNet50V2 run as fast on either and take seconds to convert
(``benchmarks/frozen_pass.py``). A backbone's spec can say from how many images converting pays
(:attr:`~scenecls.models.registry.BackboneSpec.litert_from_images`); such passes then convert the model's
traced function, its variables frozen into constants, into a LiteRT model held in memory.

No backbone does yet. The outputs are TensorFlow's to float rounding (relative differences of about
1e-6; one float16 step in 1.6 % of a MobileNetV2 activation entry), but a default intel-dev run fine-tuned
on such entries scored 0.27 points lower on average over 15 seeds (t = -2.1; ``benchmarks/README.md``,
"Frozen passes on LiteRT"), and a default does not change without its accuracy shown unchanged.

Where LiteRT cannot run the model (not installed, as on Windows; a GPU that TensorFlow runs on; mixed
precision; an operation LiteRT's built-in kernels lack) the pass runs on TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from scenecls.models.registry import get_spec


def frozen_forward(model, batch_size: int, *, images: int, backbone: str | None) -> Callable:
    """``images -> outputs`` (numpy float32) of ``model`` in inference, for a pass over ``images`` images:
    on LiteRT when the spec of ``backbone`` (a registered name) says so from that many images and LiteRT
    can run the model, else one traced TensorFlow function
    (:func:`~scenecls.classifier.inference_function`); batch normalisation folded either way
    (:func:`~scenecls.models.folding.for_inference`)."""
    from scenecls.classifier import inference_function
    from scenecls.models.folding import for_inference

    folded = for_inference(model, images=images)
    threshold = litert_threshold(backbone)
    if threshold is not None and images >= threshold:
        forward = litert_function(folded, batch_size)
        if forward is not None:
            return forward
    return inference_function(folded, batch_size, images=images)


def litert_threshold(backbone: str | None) -> int | None:
    """From how many images a frozen pass of ``backbone`` (a registered name) runs on LiteRT; None:
    never."""
    return None if backbone is None else get_spec(backbone).litert_from_images


def registered_backbone(classifier) -> str | None:
    """The registered name of the backbone ``classifier`` was built on; None for an ensemble or a model
    scenecls did not make (TensorFlow runs those)."""
    from scenecls.classifier import backbone_of, is_ensemble
    from scenecls.errors import ModelError, UsageError

    if is_ensemble(classifier):
        return None
    try:
        return backbone_of(classifier).name
    except (ModelError, UsageError):
        return None


def litert_function(model, batch_size: int) -> Callable | None:
    """``model``'s inference as a LiteRT interpreter on every usable core, batches padded to
    ``batch_size``; None when LiteRT cannot run it here (see the module's docstring)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return None
    import tensorflow as tf

    from scenecls.cores import usable_cores
    from scenecls.progress import native_stderr_silenced

    if tf.config.list_physical_devices("GPU") or getattr(model, "compute_dtype", "float32") != "float32":
        return None
    try:
        flatbuffer = _convert(model)
        with native_stderr_silenced():  # LiteRT announces its XNNPACK delegate on stderr
            interpreter = Interpreter(model_content=flatbuffer, num_threads=usable_cores())
            source = interpreter.get_input_details()[0]
            target = interpreter.get_output_details()[0]
            interpreter.resize_tensor_input(source["index"], [batch_size, *source["shape"][1:]])
            interpreter.allocate_tensors()
    except Exception:  # the converter and LiteRT raise anything for an operation they lack
        return None

    def run(batch: np.ndarray) -> np.ndarray:
        count = len(batch)
        if count < batch_size:
            padding = np.zeros((batch_size - count, *batch.shape[1:]), dtype=np.float32)
            batch = np.concatenate([batch, padding])
        interpreter.set_tensor(source["index"], batch)
        interpreter.invoke()
        return interpreter.get_tensor(target["index"])[:count]  # a copy: the next invoke overwrites

    def forward(images) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        if len(images) <= batch_size:
            return run(images)
        return np.concatenate([run(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])

    return forward


def _convert(model) -> bytes:
    """The LiteRT flatbuffer of ``model``'s inference function, built-in operations only (the
    interpreter here has no TensorFlow kernels to fall back on), converter output held back."""
    import contextlib
    import io
    import warnings

    import tensorflow as tf

    from scenecls.progress import native_stderr_silenced

    shape = [None, *(int(d) for d in model.input.shape[1:])]
    holder = tf.Module()  # what the converter tracks the function by
    signature = [tf.TensorSpec(shape, tf.float32)]
    holder.infer = tf.function(lambda x: model(x, training=False), input_signature=signature, autograph=False)
    function = holder.infer.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], holder)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), native_stderr_silenced():
        warnings.simplefilter("ignore")
        return converter.convert()
