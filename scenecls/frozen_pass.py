"""Inference of a frozen model over many images, on TensorFlow or on LiteRT.

Building a cache sends every image, and every augmented copy, once through the frozen part of a
backbone: most of a first run's waiting. On CPUs, LiteRT's kernels (XNNPACK) run MobileNetV2's frozen
passes 1.5 times and ConvNeXt-Tiny's 4.2 to 4.7 times as fast as TensorFlow's, EfficientNetV2-B0's 1.1
times, while Xception, InceptionResNetV2 and ResNet50V2 run as fast on either and take seconds to convert
(``benchmarks/frozen_pass.py``). ``--cache-runtime litert`` asks for it: each pass then converts the
model's traced function, its variables frozen into constants, into a LiteRT model held in memory.

It is not the default. The outputs are TensorFlow's to float rounding (relative differences of about
1e-6; one float16 step in 1.6 % of a MobileNetV2 activation entry), not bit for bit, and a default
intel-dev run fine-tuned on such entries scored 0.21 points lower on average over 20 seeds (t = -2.1;
``benchmarks/README.md``, "Frozen passes on LiteRT"). The runtime is part of the caches' keys, so that
the entries of either are never read for the other.

Where LiteRT cannot run the model (not installed, as on Windows; a GPU that TensorFlow runs on; mixed
precision; an operation LiteRT's built-in kernels lack) the pass runs on TensorFlow, and says so.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from scenecls.progress import NullReporter, Reporter

DEFAULT_RUNTIME = "tensorflow"
RUNTIMES = (DEFAULT_RUNTIME, "litert")

_said: set[str] = set()  # why LiteRT could not run a pass, said once per process


def runtime_key_fields(runtime: str) -> dict[str, str]:
    """What a cache entry's key holds of the runtime its frozen pass ran on: nothing for TensorFlow, so that
    the entries from before there was a choice keep their keys; else its name, since LiteRT's values are
    TensorFlow's to rounding, not bit for bit, and the two must never be read for each other."""
    return {} if runtime == DEFAULT_RUNTIME else {"runtime": runtime}


class LiteRTUnavailable(Exception):
    """LiteRT cannot run this model here; the message says why."""


def frozen_forward(
    model, batch_size: int, *, images: int, runtime: str = DEFAULT_RUNTIME, reporter: Reporter | None = None
) -> Callable:
    """``images -> outputs`` (numpy float32) of ``model`` in inference, for a pass over ``images`` images,
    batch normalisation folded (:func:`~scenecls.models.folding.for_inference`): on LiteRT when
    ``runtime`` is ``litert`` and LiteRT can run the model (else ``reporter`` is told why, once), else one
    traced TensorFlow function (:func:`~scenecls.classifier.inference_function`)."""
    from scenecls.classifier import inference_function
    from scenecls.errors import UsageError
    from scenecls.models.folding import for_inference

    if runtime not in RUNTIMES:  # a run's config.json edited by hand
        raise UsageError(f"cache runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    folded = for_inference(model, images=images)
    if runtime == "litert":
        try:
            return litert_function(folded, batch_size)
        except LiteRTUnavailable as exc:
            if str(exc) not in _said:
                _said.add(str(exc))
                (reporter or NullReporter()).warn(f"{exc}: the caches' frozen passes run on TensorFlow")
    return inference_function(folded, batch_size, images=images)


def litert_function(model, batch_size: int) -> Callable:
    """``model``'s inference as a LiteRT interpreter on every usable core, batches padded to
    ``batch_size``. :class:`LiteRTUnavailable` when LiteRT cannot run it here (see the module's
    docstring)."""
    import tensorflow as tf

    from scenecls import litert
    from scenecls.errors import first_line

    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        raise LiteRTUnavailable("LiteRT is not installed (pip install ai-edge-litert)") from None
    if tf.config.list_physical_devices("GPU"):
        raise LiteRTUnavailable("a GPU is visible to TensorFlow")
    if getattr(model, "compute_dtype", "float32") != "float32":
        raise LiteRTUnavailable("LiteRT runs float32 passes, not mixed precision")
    try:
        converter = litert.inference_converter(model, model.input.shape[1:])
        # built-in operations only: the interpreter here has no TensorFlow kernels to fall back on
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        with litert.conversion_output_held_back():
            flatbuffer = converter.convert()
        interpreter = litert.interpreter(content=flatbuffer)
        source = interpreter.get_input_details()[0]
        target = interpreter.get_output_details()[0]
        litert.resize_input(interpreter, source["index"], [batch_size, *source["shape"][1:]])
    except Exception as exc:  # the converter and LiteRT raise anything for an operation they lack
        raise LiteRTUnavailable(f"LiteRT cannot run {model.name}: {first_line(exc, 200)}") from exc

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
