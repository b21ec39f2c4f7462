"""A whole scene classifier: raw 0-255 RGB in, class probabilities out; and its model files.

The backbone's own input scaling is the first layer of the saved model, so nobody can feed a saved
model wrongly (the seed rescaled every backbone by 1/255, which none of them expects). The backbone runs
with ``training=False``: its batch norms stay in inference mode even while fine-tuning.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from scenecls.checksums import changed_since_written, checksum_matches, record_checksum
from scenecls.errors import ModelError, first_line
from scenecls.files import atomic_path
from scenecls.heads import HeadConfig, apply_head
from scenecls.models.registry import SCALE_MINUS_ONE_TO_ONE, BackboneSpec, build_backbone, get_spec
from scenecls.safety import check_keras_archive

MODEL_PREFIX = "scenecls_"
ENSEMBLE_NAME = MODEL_PREFIX + "ensemble"  # several classifiers averaged (scenecls.ensemble)


def build_classifier(
    spec: BackboneSpec | str,
    num_classes: int,
    *,
    size: int | None = None,
    weights: str | Path | None = "imagenet",
    head: HeadConfig | None = None,
):
    """Input -> backbone scaling -> frozen backbone -> head, named ``scenecls_<backbone>``."""
    import keras

    spec = get_spec(spec) if isinstance(spec, str) else spec
    if num_classes < 2:
        raise ModelError(f"a classifier needs at least 2 classes, got {num_classes}")
    size = size or spec.default_size
    backbone = build_backbone(spec, size, weights)
    backbone.trainable = False
    inputs = keras.Input((size, size, 3), name="image")
    x = inputs
    if spec.preprocessing == SCALE_MINUS_ONE_TO_ONE:
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale_input")(x)
    x = backbone(x, training=False)
    outputs = apply_head(x, num_classes, head or HeadConfig())
    return keras.Model(inputs, outputs, name=MODEL_PREFIX + spec.name)


def find_backbone(model):
    """The backbone nested inside a classifier."""
    import keras

    if is_ensemble(model):
        raise ModelError(
            "an ensemble averages several models: it has no one backbone to train or explain; "
            "use one of its member runs"
        )
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise ModelError(f"{model.name} is not a scenecls classifier (no single backbone inside)")
    return nested[0]


def backbone_of(model) -> BackboneSpec:
    """The registered backbone a classifier was built on."""
    if is_ensemble(model):
        raise ModelError("an ensemble has no one backbone to train; use one of its member runs")
    if not model.name.startswith(MODEL_PREFIX):
        raise ModelError(f"model {model.name!r} was not made by scenecls")
    return get_spec(model.name[len(MODEL_PREFIX) :])


def is_ensemble(model) -> bool:
    """Whether ``model`` is an ensemble of classifiers (:func:`scenecls.ensemble.average_models`)."""
    return model.name == ENSEMBLE_NAME


def check_compatible(
    model, classes: list[str], model_classes: list[str] | None, *, backbone: str | None = None
) -> None:
    """Refuse a model for data (or a backbone) it was not made for.

    ``model_classes`` are the class names saved with the model, when known.
    """
    if backbone and backbone_of(model).name != backbone:
        raise ModelError(f"the model is a {backbone_of(model).name} classifier, not {backbone}")
    if model_classes is not None and list(model_classes) != list(classes):
        raise ModelError(
            f"the model's classes ({', '.join(model_classes)}) differ from the data's ({', '.join(classes)})"
        )
    if num_classes(model) != len(classes):
        raise ModelError(
            f"the model predicts {num_classes(model)} classes but the data has {len(classes)} "
            f"({', '.join(classes)})"
        )


def input_size(model) -> tuple[int, int]:
    shape = model.input_shape
    return int(shape[1]), int(shape[2])


def num_classes(model) -> int:
    return int(model.output_shape[-1])


# Tracing a model's graph costs about 1 s on 2 CPU cores (MobileNetV2, any input size) and then saves
# about 0.2 s a batch against calling the model directly: up to this many batches, direct calls win.
EAGER_BATCHES = 4


def inference_function(model, batch_size: int, *, jit: bool = False, images: int | None = None):
    """``images -> outputs`` as numpy arrays, through one traced graph, for batched inference.

    ``images``: how many images it will see, when known: up to :data:`EAGER_BATCHES` batches the model
    is called directly, without a graph (quicker than tracing one for so few).

    Calling the model inside a ``tf.function`` skips the per-batch bookkeeping of Keras's
    ``predict_on_batch`` (about 7 % of a MobileNetV2 batch on 2 CPU cores). A batch shorter than
    ``batch_size`` (the last one) is padded to it, so the graph is traced once. ``jit`` compiles the
    graph with XLA. Outputs come back as float32 whatever the model computes in. (Callers that only
    infer pass :func:`scenecls.models.folding.for_inference` of their model.)
    """
    import numpy as np
    import tensorflow as tf

    if images is not None and -(-images // batch_size) <= EAGER_BATCHES and not jit:

        def direct(batch):
            outputs = model(np.asarray(batch, dtype=np.float32), training=False)
            return np.asarray(tf.cast(outputs, tf.float32))

        return direct

    @tf.function(reduce_retracing=True, jit_compile=jit)
    def traced(images):
        return tf.cast(model(images, training=False), tf.float32)

    def forward(images):
        images = np.asarray(images, dtype=np.float32)
        count = len(images)
        if count < batch_size:
            padding = np.zeros((batch_size - count, *images.shape[1:]), dtype=np.float32)
            images = np.concatenate([images, padding])
        return np.asarray(traced(images))[:count]

    return forward


PREDICTIONS = "predictions"  # the classifier's last layer: Dense + softmax (see heads.py)


def scale_logits(model, temperature: float) -> None:
    """Divide the classifier's logits by ``temperature``, in its weights: the last layer computes
    ``softmax(x W + b)``, so ``W / T`` and ``b / T`` give ``softmax((x W + b) / T)`` with no new layer
    or operation, in the ``.keras`` file and in every export (see :mod:`scenecls.calibration`)."""
    from scenecls.errors import UsageError

    if is_ensemble(model):
        raise UsageError("an ensemble averages calibrated members: calibrate each member's run instead")
    layer = model.get_layer(PREDICTIONS)
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel / temperature, bias / temperature])


def save_model(model, path: Path) -> Path:
    """Write ``path`` atomically (a crash mid-write never leaves a damaged model file behind), and its
    SHA-256 beside it, checked whenever the file is loaded."""
    path = Path(path)
    _cache_keras_skipsets()
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
    record_checksum(path)
    return path


def rewrite_weights(path: Path, old: list, new: list) -> bool:
    """Put the arrays ``new`` in place of ``old`` inside the model file ``path``, every other byte of it
    as it was (the optimizer's state too), and record its new SHA-256: a calibrated temperature costs one
    copy of the file's bytes, not a load with the optimizer and a save of the whole model.

    Each ``old`` array must be in the weights exactly once (same shape, type and bytes); else nothing
    is changed and the answer is False (the caller saves the whole model instead).
    """
    import io

    import h5py
    import numpy as np

    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    weights = next((i for i, (info, _) in enumerate(members) if info.filename == "model.weights.h5"), None)
    if weights is None:
        return False
    store = io.BytesIO(members[weights][1])
    with h5py.File(store, "r+") as h5:
        found: list[list[str]] = [[] for _ in old]

        def match(name: str, item) -> None:
            if isinstance(item, h5py.Dataset):
                for index, array in enumerate(old):
                    if (
                        item.shape == array.shape
                        and item.dtype == array.dtype
                        and item[()].tobytes() == array.tobytes()
                    ):
                        found[index].append(name)

        h5.visititems(match)
        if any(len(names) != 1 for names in found):
            return False
        for (name,), array in zip(found, new, strict=True):
            h5[name][...] = np.asarray(array, dtype=h5[name].dtype)
    members[weights] = (members[weights][0], store.getvalue())
    with atomic_path(path, suffix=".keras") as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for info, data in members:
            archive.writestr(info, data)
    record_checksum(path)
    return True


def load_model(path: Path, *, compile: bool = False):
    """Load a scenecls ``.keras`` file in Keras's safe mode (no code runs on load)."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{path} is not a Keras model file (damaged, truncated or another format)")
    if not checksum_matches(path):
        raise ModelError(changed_since_written(path))
    check_keras_archive(path)  # sizes inside the zip, and layers that hold code, before Keras reads it
    _register_application_layers()
    _cache_keras_skipsets()
    import scenecls.losses  # noqa: F401  (registers the losses a saved optimizer state refers to)

    try:
        model = keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as exc:
        raise ModelError(f"cannot load {path}: {first_line(exc, 300)}") from exc
    if not is_ensemble(model):
        backbone_of(model)  # refuses models scenecls did not make
    return model


# The kinds of object Keras walks when it saves or loads a scenecls model.
_SAVED_KINDS = ("Operation", "Layer", "Functional", "Sequential", "Metric", "Optimizer", "Loss")


def _cache_keras_skipsets() -> None:
    """Keep Keras's per-kind list of attributes its model saving skips, which it means to compute once.

    For every layer it saves or loads, Keras (3.15) builds a reference object of the layer's kind and
    lists its attributes; it stores that set under ``saving_attr_skipset_<kind>`` but looks it up under
    ``saving_attr_skiplist_<kind>``, so it never finds it and builds it again for every layer: a fifth
    of each ``.keras`` save (MobileNetV2: 0.43 s -> 0.36 s; every fine-tuning epoch writes one). The set
    is Keras's own, stored where Keras looks; once Keras reads its own cache this finds it filled.
    """
    try:
        from keras.src.backend.common import global_state
        from keras.src.saving.saving_lib import get_attr_skipset
    except ImportError:  # another Keras layout: saving works as it does there
        return
    for kind in _SAVED_KINDS:
        key = f"saving_attr_skiplist_{kind}"
        if global_state.get_global_attribute(key) is None:  # per thread, and again after clear_session
            global_state.set_global_attribute(key, get_attr_skipset(kind))


def _register_application_layers() -> None:
    """Custom layers inside some Keras applications that Keras does not register for loading."""
    import keras
    from keras.src.applications.convnext import LayerScale, StochasticDepth
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    objects = keras.saving.get_custom_objects()
    for cls in (CustomScaleLayer, LayerScale, StochasticDepth):
        objects.setdefault(cls.__name__, cls)
