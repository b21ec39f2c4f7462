"""Mixed precision and XLA: what ``--mixed-precision`` and ``--jit`` mean on this machine.

Both are the norm on GPUs and measured slower on the CPUs here (``benchmarks/README.md``: MobileNetV2
fine-tuning on 2 CPU cores ran at 0.75x with ``mixed_bfloat16`` and 0.09x with XLA), so ``auto``
follows the hardware: float16 on a GPU with tensor cores (compute capability 7.0 or later), float32
elsewhere; XLA where Keras itself enables it (``jit_compile="auto"``: on GPUs, off on CPU-only machines).
Under a mixed policy the layers compute in 16 bits and keep float32 weights; the softmax output stays
float32 (see :mod:`scenecls.heads`) and Keras scales the loss for float16 on its own.
"""

from __future__ import annotations

import contextlib

PRECISIONS = ("auto", "off", "bfloat16", "float16")
JIT_MODES = ("auto", "on", "off")
_POLICIES = {"off": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def resolve_precision(mode: str) -> str:
    """``off``, ``bfloat16`` or ``float16``: ``auto`` is float16 on a GPU of compute capability >= 7.0."""
    if mode != "auto":
        return mode
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
        if tuple(capability) >= (7, 0):
            return "float16"
    return "off"


def jit_compile(mode: str) -> bool | str:
    """``model.compile``'s ``jit_compile`` for ``--jit``."""
    return {"auto": "auto", "on": True, "off": False}[mode]


def dtype_policy_name(precision: str) -> str:
    """Keras's name for the policy: ``float32``, ``mixed_bfloat16`` or ``mixed_float16``."""
    return _POLICIES[precision]


@contextlib.contextmanager
def dtype_policy(precision: str):
    """Layers made inside use ``precision`` (``off``, ``bfloat16`` or ``float16``)."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy_name(precision))
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def model_precision(model) -> str:
    """``off``, ``bfloat16`` or ``float16``: what a scenecls classifier (or ensemble) computes in: its
    first layer with weights, found inside the nested models (a nested model's own policy says nothing
    of its layers')."""
    layer = _first_computing_layer(model)
    name = layer.dtype_policy.name if layer is not None else "float32"
    return {policy: precision for precision, policy in _POLICIES.items()}.get(name, "off")


def _first_computing_layer(model):
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            if (inner := _first_computing_layer(layer)) is not None:
                return inner
        elif layer.weights:
            return layer
    return None


def with_precision(model, precision: str):
    """``model``, or a copy of it with the same weights computing in ``precision`` (``off``, ``bfloat16``
    or ``float16``): for inference under another policy than the model was saved with.

    Every layer records its policy in its config, so a model loaded under another global policy still
    computes as it was saved; the copy is made layer by layer from the configs with the policy
    replaced, except the float32 softmax (``predictions``), as in training.
    """
    if model_precision(model) == precision:
        return model
    import keras

    policy = dtype_policy_name(precision)

    def recast(layer):
        config = layer.get_config()
        if layer.name != "predictions" and "dtype" in config:
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=recast, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def jit_enabled(mode: str) -> bool:
    """Whether ``--jit`` compiles inference with XLA: ``auto`` is Keras's choice, on GPUs only."""
    if mode != "auto":
        return mode == "on"
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))
