"""Merge frozen batch normalisation into the convolution before it, for passes that never train.

In inference mode a ``BatchNormalization`` is a fixed per-channel ``x * scale + offset``. After a
convolution without an activation, that is the same as the convolution with its kernel's output channels
times ``scale`` and a bias of ``offset`` (plus the old bias times ``scale``). The merged model computes the
same function up to float rounding, but skips one pass over every activation map per batch
normalisation: MobileNetV2's frozen part below its last block runs 1.57x faster folded on 2 CPU cores,
the whole classifier 1.42x (``benchmarks/README.md``).

Only passes that never train use it: the feature and activation caches' builds (through frozen layers),
``evaluate`` and ``predict``. A model that trains keeps its batch normalisation layers; the folded copy
shares its other layers with the model, so it is made when needed and dropped after.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scenecls.models.blocks import own_nodes, parent_operations

_CONVOLUTIONS = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D")
# Folding copies the model: 0.17 s for MobileNetV2, 0.3 s for Xception on 2 CPU cores, about what 250 of
# MobileNetV2's forward passes at 150 px save folded. Fewer images than this run the model as it is.
FOLD_FROM = 512


def fold_batchnorm(model):
    """A copy of the functional ``model`` for inference, each foldable batch normalisation merged into
    the convolution before it (an ``Identity`` in the normalisation's place, so layer names stay).

    A pair folds when the convolution has no activation, works on channels last, and its output feeds
    only that batch normalisation (over the channel axis), inside ``model``. The merged convolution holds
    its kernel and bias as constants, not variables: making a variable under a multi-worker strategy is a
    collective step that a process computing a cache alone must not take. Every other layer is the
    original layer, weights shared; nested functional models are folded the same way. ``model`` is left
    as it was, and returned itself when nothing in it folds. The copy is for ``training=False`` calls only.
    """
    plan = _fold_plan(model)
    return model if plan is None else _folded_copy(model, plan)


@dataclass
class _FoldPlan:
    """What folds in one functional model: its own pairs (keyed by the convolution) and the plans of the
    functional models inside it that have something to fold. Found in one walk of the graph."""

    pairs: dict[int, object]
    nested: dict[int, _FoldPlan]


def _fold_plan(model) -> _FoldPlan | None:
    """The plan for ``model``, or ``None`` when nothing in it (or in a model inside it) folds."""
    pairs = {id(conv): bn for conv, bn in foldable_pairs(model)}
    nested = {}
    for layer in model.layers:
        if _is_functional(layer) and (inner := _fold_plan(layer)) is not None:
            nested[id(layer)] = inner
    return _FoldPlan(pairs, nested) if pairs or nested else None


def _folded_copy(model, plan: _FoldPlan):
    """``model`` cloned with the folds ``plan`` found in it (and in the models inside it)."""
    import keras

    folded_bn = {id(bn) for bn in plan.pairs.values()}
    replacements: dict[int, object] = {}
    takes_tensor_only: set[int] = set()

    def clone(layer):
        if id(layer) not in replacements:
            if id(layer) in folded_bn:
                new = keras.layers.Identity(name=layer.name)
            elif id(layer) in plan.pairs:
                new = folded_convolution(layer, plan.pairs[id(layer)])
            elif id(layer) in plan.nested:
                new = _folded_copy(layer, plan.nested[id(layer)])
            else:
                new = layer
            if new is not layer and not _is_functional(new):
                takes_tensor_only.add(id(new))
            replacements[id(layer)] = new
        return replacements[id(layer)]

    def call(layer, *args, **kwargs):  # the replacements take the tensor alone, not mask or training
        return layer(args[0]) if id(layer) in takes_tensor_only else layer(*args, **kwargs)

    return keras.models.clone_model(model, clone_function=clone, call_function=call)


def for_inference(model, images: int | None = None):
    """``model`` with its batch normalisation folded where it can be (see :func:`fold_batchnorm`), or
    ``model`` itself when there is nothing to fold, when it is not a functional model or cannot be copied
    (a speed-up, never a requirement), or when it will see fewer than :data:`FOLD_FROM` ``images``."""
    if not _is_functional(model) or (images is not None and images < FOLD_FROM):
        return model
    try:
        return fold_batchnorm(model)
    except (ValueError, TypeError, KeyError, AttributeError):
        return model


def foldable_pairs(model) -> list[tuple[object, object]]:
    """``(convolution, batch normalisation)`` pairs of ``model`` that :func:`fold_batchnorm` merges."""
    graph = own_nodes(model)
    consumers: dict[int, list] = {}
    for operation in model.operations:
        for parent in parent_operations(operation, graph):
            consumers.setdefault(id(parent), []).append(operation)
    outputs = {id(t._keras_history.operation) for t in model.outputs}
    pairs = []
    for layer in model.operations:
        if type(layer).__name__ not in _CONVOLUTIONS or id(layer) in outputs:
            continue
        config = layer.get_config()
        if config.get("activation") not in (None, "linear") or config.get("data_format") != "channels_last":
            continue
        if config.get("groups", 1) != 1:  # grouped convolutions: not every CPU kernel takes them as ops
            continue
        after = consumers.get(id(layer), [])
        if len(after) != 1 or not _is_channel_batchnorm(after[0]):
            continue
        pairs.append((layer, after[0]))
    return pairs


def _is_channel_batchnorm(layer) -> bool:
    if type(layer).__name__ != "BatchNormalization":
        return False
    axis = layer.axis if isinstance(layer.axis, int) else None
    return axis in (-1, 3)


def _is_functional(layer) -> bool:
    """A model made as ``keras.Model(inputs, outputs)`` (not a Sequential or a subclass)."""
    return type(layer).__name__ == "Functional"


def folded_weights(conv, bn) -> tuple[list[np.ndarray], np.ndarray]:
    """The kernels and the bias of ``bn(conv(x))`` as one convolution (float64)."""
    gamma = bn.gamma.numpy() if bn.scale else 1.0
    beta = bn.beta.numpy() if bn.center else 0.0
    mean = bn.moving_mean.numpy().astype(np.float64)
    variance = bn.moving_variance.numpy().astype(np.float64)
    scale = gamma / np.sqrt(variance + bn.epsilon)
    old_bias = conv.bias.numpy() if conv.use_bias else 0.0
    bias = (old_bias - mean) * scale + beta
    kind = type(conv).__name__
    if kind == "Conv2D":
        kernels = [conv.kernel.numpy() * scale]
    elif kind == "DepthwiseConv2D":  # output channel c * multiplier + m
        kernel = conv.kernel.numpy()
        kernels = [kernel * scale.reshape(kernel.shape[2], kernel.shape[3])]
    else:  # SeparableConv2D: the pointwise kernel makes the output channels
        kernels = [conv.depthwise_kernel.numpy(), conv.pointwise_kernel.numpy() * scale]
    return kernels, np.asarray(bias)


def _folded_layer_class():
    import keras

    class _FoldedConvolution(keras.layers.Layer):
        """A convolution with a batch normalisation merged into it, kernels and bias as constants."""

        def __init__(self, conv, bn):
            super().__init__(name=conv.name, dtype=conv.dtype_policy, trainable=False)
            self.kind = type(conv).__name__
            self.strides, self.padding = tuple(conv.strides), conv.padding
            self.dilation_rate = tuple(conv.dilation_rate)
            kernels, bias = folded_weights(conv, bn)
            self.kernels = [k.astype(np.float32) for k in kernels]
            self.bias = bias.astype(np.float32)

        def call(self, inputs):
            from keras import ops

            kernels = [ops.convert_to_tensor(k, dtype=self.compute_dtype) for k in self.kernels]
            options = {"strides": self.strides, "padding": self.padding, "dilation_rate": self.dilation_rate}
            if self.kind == "Conv2D":
                outputs = ops.conv(inputs, kernels[0], **options)
            elif self.kind == "DepthwiseConv2D":
                outputs = ops.depthwise_conv(inputs, kernels[0], **options)
            else:
                outputs = ops.separable_conv(inputs, kernels[0], kernels[1], **options)
            return outputs + ops.convert_to_tensor(self.bias, dtype=self.compute_dtype)

    return _FoldedConvolution


def folded_convolution(conv, bn):
    """The layer standing for ``bn(conv(x))`` (see :func:`fold_batchnorm`)."""
    global _FOLDED
    if _FOLDED is None:
        _FOLDED = _folded_layer_class()
    return _FOLDED(conv, bn)


_FOLDED = None  # the layer class, made on first use so that importing this module does not import Keras
