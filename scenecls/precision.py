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
