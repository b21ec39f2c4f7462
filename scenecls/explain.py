"""Why the model chose a class: Grad-CAM heat maps (Selvaraju et al., ICCV 2017).

The backbone's output is its last convolutional block's feature map ``A`` (``h x w x c``, before the
head pools it). For a class ``k``, the gradient of its logit with respect to ``A``, averaged over the
map, weighs each channel; the weighted sum of the channels, where positive, is where the evidence for
``k`` lies. It is upsampled to the image and drawn over it. The logit is taken before the softmax (the
classifier's last layer computes ``softmax(x W + b)``, so the logit is ``x W + b`` of that layer's
input): a softmax's gradient vanishes on a confident answer.

It needs the Keras model, any of the backbones; images go through in batches, so memory stays bounded
whatever the number of images.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scenecls.classifier import PREDICTIONS, find_backbone, input_size
from scenecls.command_options import EXPLAIN
from scenecls.data.images import ImageReadError, load_rgb
from scenecls.files import OUTPUT_MARKERS
from scenecls.heads import POOL_LAYER
from scenecls.progress import NullReporter, Reporter

OVERLAY = 0.45  # how much of the heat map shows over the image
CAPTION = 18  # pixels of the caption bar under each picture per line


@dataclass
class Explanation:
    path: str
    top: list[tuple[str, float]] = field(default_factory=list)  # classes and probabilities, best first
    heatmap: np.ndarray | None = None  # (h, w) in [0, 1] at the model's input size, for top[0]
    image: np.ndarray | None = None  # the image as the model saw it (uint8, its input size)
    written: Path | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "top": [{"label": label, "confidence": conf} for label, conf in self.top],
            "written": None if self.written is None else str(self.written),
            "error": self.error,
        }


class GradCam:
    """Heat maps for a classifier: one traced function from images to (feature map, logits)."""

    def __init__(self, model) -> None:
        import keras

        find_backbone(model)  # a classifier of ours: not an ensemble, one backbone inside
        feature_map = model.get_layer(POOL_LAYER).input  # the backbone's output, where the head pools it
        predictions = model.get_layer(PREDICTIONS)
        self.size = input_size(model)
        self.model = keras.Model(model.input, [feature_map, predictions.input], name="grad_cam")
        self.kernel, self.bias = (np.asarray(w) for w in predictions.get_weights())

    def __call__(
        self, images: np.ndarray, classes: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(heatmaps, probabilities)`` for a batch: each map ``(h, w)`` in ``[0, 1]`` at the input size,
        for ``classes`` (default: each image's predicted class)."""
        import tensorflow as tf

        batch = tf.convert_to_tensor(images, dtype=tf.float32)
        kernel = tf.constant(self.kernel, tf.float32)
        bias = tf.constant(self.bias, tf.float32)
        with tf.GradientTape() as tape:
            feature_map, pooled = self.model(batch, training=False)
            tape.watch(feature_map)
            feature_map = tf.cast(feature_map, tf.float32)
            logits = tf.matmul(tf.cast(pooled, tf.float32), kernel) + bias
            chosen = tf.argmax(logits, axis=1) if classes is None else tf.constant(classes, tf.int64)
            score = tf.gather(logits, chosen, axis=1, batch_dims=1)
        gradients = tape.gradient(score, feature_map)
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * feature_map, axis=-1))[..., None]
        cam = tf.image.resize(cam, self.size, method="bilinear")[..., 0].numpy()
        peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
        cam = np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)
        return cam, tf.nn.softmax(logits).numpy()


def explain_files(
    model, paths: Iterable[str], classes: list[str], *, top_k: int = EXPLAIN.top_k,
    batch_size: int = EXPLAIN.batch_size, reporter: Reporter | None = None,
) -> Iterator[Explanation]:  # fmt: skip
    """An :class:`Explanation` per path, in order, ``batch_size`` images at a time; an image that
    cannot be read gets one with an ``error``."""
    reporter = reporter or NullReporter()
    cam = GradCam(model)
    paths = list(paths)
    task = reporter.task("Explaining", total=len(paths), unit="images")
    try:
        for start in range(0, len(paths), batch_size):
            chunk = [Explanation(path) for path in paths[start : start + batch_size]]
            images = []
            for item in chunk:
                try:
                    images.append(load_rgb(item.path, cam.size))
                except ImageReadError as exc:
                    item.error = str(exc)
            readable = [item for item in chunk if item.error is None]
            if readable:
                maps, probs = cam(np.stack(images).astype(np.float32))
                for item, image, heatmap, p in zip(readable, images, maps, probs, strict=True):
                    order = np.argsort(-p)[: max(1, min(top_k, len(classes)))]
                    item.top = [(classes[i], float(p[i])) for i in order]
                    item.heatmap, item.image = heatmap, image
            for item in chunk:
                task.advance()
                yield item
    finally:
        task.close()


def blend(image: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """The image (uint8, the heat map's size) with the heat map over it in jet colours."""
    from matplotlib import colormaps

    colours = (colormaps["jet"](heatmap)[..., :3] * 255).astype(np.float32)
    blended = (1 - OVERLAY) * image.astype(np.float32) + OVERLAY * colours
    return np.clip(blended, 0, 255).astype(np.uint8)


def overlay(image: np.ndarray, heatmap: np.ndarray, caption: list[str]):
    """The image with the heat map blended over it and a caption bar below: a PIL image."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(blend(image, heatmap))
    scale = max(1, 256 // max(picture.size))  # small model inputs are drawn larger
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (picture.width, picture.height + CAPTION * len(caption) + 4), "white")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for line, text in enumerate(caption):
        draw.text((4, picture.height + 2 + CAPTION * line), text, fill="black")
    return canvas


def write_explanation(item: Explanation, target: Path) -> Path:
    """``target`` (a PNG): the heat map over the image, its top classes below."""
    from scenecls.files import atomic_path

    caption = [f"{label} {conf:.3f}" for label, conf in item.top]
    with atomic_path(target, suffix=".png") as tmp:
        overlay(item.image, item.heatmap, caption).save(tmp, format="PNG")
    return target


MARKER = OUTPUT_MARKERS[1]  # marks an output folder as ours: its heat maps may be replaced


def explain_into(
    model, inputs: list[tuple[str, str | None]], classes: list[str], folder: Path, *,
    top_k: int = EXPLAIN.top_k, batch_size: int = EXPLAIN.batch_size, reporter: Reporter | None = None,
) -> list[Explanation]:  # fmt: skip
    """Explain ``inputs`` (``(path, error)`` pairs, as :func:`scenecls.predict.expand_inputs` gives)
    and write each heat map into ``folder``: a new or empty folder, or one this wrote before (its
    marker); any other is refused before any work, so no file of the user's is replaced."""
    from scenecls.files import claim_folder, note_written

    claim_folder(folder, MARKER, "scenecls explain")
    failed = [Explanation(path, error=error) for path, error in inputs if error is not None]
    readable = [path for path, error in inputs if error is None]
    names: dict[str, int] = {}
    results = {item.path: item for item in failed}
    for item in explain_files(
        model, readable, classes, top_k=top_k, batch_size=batch_size, reporter=reporter
    ):
        if item.error is None:
            stem = Path(item.path).stem
            names[stem] = names.get(stem, 0) + 1  # two images of one name in different folders
            name = stem if names[stem] == 1 else f"{stem}-{names[stem]}"
            note_written(folder, MARKER, "scenecls explain", [f"{name}.cam.png"])
            item.written = write_explanation(item, folder / f"{name}.cam.png")
            item.heatmap = item.image = None  # bounded memory: both are in its file
        results[item.path] = item
    return [results[path] for path, _ in inputs]


def run_heatmaps(
    run_dir: Path, paths: list[str], *, reporter: Reporter | None = None
) -> dict[str, np.ndarray]:
    """Each readable image of ``paths`` with the Grad-CAM map of the run's predicted class over it (at
    the model's input size), by path: for pictures that show images beside their maps."""
    from scenecls import runs
    from scenecls.classifier import load_model

    model = load_model(run_dir / runs.BEST)
    classes = runs.model_classes(run_dir / runs.BEST, run_dir)
    classes = classes or [f"class_{i}" for i in range(int(model.output_shape[-1]))]
    maps = {}
    for item in explain_files(model, paths, classes, reporter=reporter):
        if item.error is None:
            maps[item.path] = blend(item.image, item.heatmap)
    return maps
