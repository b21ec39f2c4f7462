"""Why the model chose a class: Grad-CAM heat maps (Selvaraju et al., ICCV 2017).

``A`` is a feature map of the backbone (``h x w x c``). For a class ``k``, the gradient of its logit
with respect to ``A``, averaged over the map, weighs each channel; the weighted sum of the channels,
where positive, is where the evidence for ``k`` lies. It is upsampled to the image and drawn over it.

Two maps are made, and drawn as their geometric mean: one of the backbone's last feature map *before
its last stride* (:func:`fine_layer`), which places the evidence, and one of its output, which says
which region it belongs to and keeps the finer map's stray spots at the borders out. At 150 px
MobileNetV2's output is 5 x 5, so its map alone is a blob in the middle; the map before the last stride
is 10 x 10, and the gradient still flows to it through the last stage.

The logit is taken before the softmax (the classifier's last layer computes ``softmax(x W + b)``, so
the logit is ``x W + b`` of that layer's input): a softmax's gradient vanishes on a confident answer.

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
from scenecls.errors import ModelError
from scenecls.files import OUTPUT_MARKERS
from scenecls.heads import POOL_LAYER
from scenecls.progress import NullReporter, Reporter

OVERLAY = 0.6  # the heat map's opacity where it is hottest (it fades with the heat)
COLOURS = "YlOrRd"  # light yellow to red: the photo stays readable under it
CAPTION = 24  # pixels of the caption per line
GAP = 8  # pixels between the photo and its overlay, and around the caption
DISPLAY_SIZE, MAX_DISPLAY_SIZE = 448, 768  # the long side a heat map is drawn at


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


def fine_layer(backbone):
    """The backbone's last layer whose map is twice as fine as its output (the map before its last
    stride, padding left out), or its output layer when there is none."""
    import keras

    last = backbone.output.shape[1]
    found = backbone.layers[-1]
    for layer in backbone.layers:
        shape = getattr(layer.output, "shape", None)
        if isinstance(layer, keras.layers.ZeroPadding2D) or shape is None or len(shape) != 4:
            continue
        if last and shape[1] and 2 * last - 1 <= shape[1] <= 2 * last + 1:
            found = layer
    return found


class GradCam:
    """Heat maps for a classifier: its layers before the backbone, the backbone giving its fine map
    (:func:`fine_layer`) and its output, then the head up to the last layer's input (the logits' input).
    """

    def __init__(self, model, *, fine: bool = True) -> None:
        """``fine`` False: the map of the backbone's output alone (the classic Grad-CAM)."""
        import keras

        backbone = find_backbone(model)  # a classifier of ours: not an ensemble, one backbone inside
        position = model.layers.index(backbone)
        before = model.layers[:position]
        self.before = [layer for layer in before if not isinstance(layer, keras.layers.InputLayer)]
        self.head = model.layers[position + 1 :]
        if not self.head or self.head[0].name != POOL_LAYER or self.head[-1].name != PREDICTIONS:
            raise ModelError(
                f"{model.name} is not a scenecls classifier (backbone, pooling, ..., predictions)"
            )
        self.layer = fine_layer(backbone) if fine else backbone.layers[-1]
        self.backbone = keras.Model(backbone.input, [self.layer.output, backbone.output], name="grad_cam")
        self.size = input_size(model)
        self.kernel, self.bias = (np.asarray(w) for w in self.head[-1].get_weights())

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
            x = batch
            for layer in self.before:
                x = layer(x, training=False)
            fine, x = self.backbone(x, training=False)
            coarse = x
            for layer in self.head[:-1]:
                x = layer(x, training=False)
            logits = tf.matmul(tf.cast(x, tf.float32), kernel) + bias
            chosen = tf.argmax(logits, axis=1) if classes is None else tf.constant(classes, tf.int64)
            score = tf.gather(logits, chosen, axis=1, batch_dims=1)
        gradients = tape.gradient(score, [fine, coarse])
        # The fine map places the evidence; the coarse map (the backbone's output) says which region it
        # belongs to, and keeps the fine map's stray spots (padding at the borders) out: their geometric
        # mean. With no finer map (a backbone without one), both are the output's.
        maps = [self._map(g, m) for g, m in zip(gradients, (fine, coarse), strict=True)]
        cam = np.sqrt(maps[0] * maps[1])
        return _normalised(cam), tf.nn.softmax(logits).numpy()

    def _map(self, gradients, feature_map) -> np.ndarray:
        """Grad-CAM of one feature map at the input size, each image's in [0, 1]."""
        import tensorflow as tf

        gradients, feature_map = tf.cast(gradients, tf.float32), tf.cast(feature_map, tf.float32)
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * feature_map, axis=-1))[..., None]
        return _normalised(tf.image.resize(cam, self.size, method="bilinear")[..., 0].numpy())


def _normalised(cam: np.ndarray) -> np.ndarray:
    peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)


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
    """The image (uint8) with the heat map (any size: it is resized to the image) over it: a light
    colour map (yellow to red) whose opacity follows the heat, so that the photo shows where the
    model found no evidence."""
    from matplotlib import colormaps
    from PIL import Image

    height, width = image.shape[:2]
    if heatmap.shape != (height, width):
        heatmap = np.asarray(
            Image.fromarray(heatmap.astype(np.float32), mode="F").resize(
                (width, height), Image.Resampling.BILINEAR
            )
        )
    heat = np.clip(heatmap, 0, 1)[..., None]
    colours = colormaps[COLOURS](0.35 + 0.65 * heat[..., 0])[..., :3] * 255  # orange to deep red
    alpha = OVERLAY * heat  # cold regions stay the photo
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours
    return np.clip(blended, 0, 255).astype(np.uint8)


def display_image(item: Explanation) -> np.ndarray:
    """The image as it is shown: the photo itself at DISPLAY_SIZE..MAX_DISPLAY_SIZE on its long side
    (not the model's small input), or the model's input when the file cannot be read again."""
    from PIL import Image

    try:
        photo = Image.fromarray(load_rgb(item.path))
    except ImageReadError:
        photo = Image.fromarray(item.image)
    long_side = max(photo.size)
    target = min(max(long_side, DISPLAY_SIZE), MAX_DISPLAY_SIZE)
    if target != long_side:
        scale = target / long_side
        size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
        photo = photo.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(photo)


def overlay(image: np.ndarray, heatmap: np.ndarray, caption: list[str]):
    """The photo and the photo with the heat map over it, side by side, the caption below: a PIL image."""
    from PIL import Image, ImageDraw, ImageFont

    photo = Image.fromarray(image)
    canvas = Image.new(
        "RGB", (2 * photo.width + GAP, photo.height + CAPTION * len(caption) + 2 * GAP), "white"
    )
    canvas.paste(photo, (0, 0))
    canvas.paste(Image.fromarray(blend(image, heatmap)), (photo.width + GAP, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=CAPTION - 6)
    for line, text in enumerate(caption):
        draw.text((GAP, photo.height + GAP + CAPTION * line), text, fill="black", font=font)
    return canvas


def caption_lines(item: Explanation) -> list[str]:
    """``street  99.3 %`` per class, the first marked as the one whose evidence is drawn."""
    lines = [f"{label}  {conf:.1%}" for label, conf in item.top]
    if lines:
        lines[0] += "   (the heat map shows the evidence for this class)"
    return lines


def write_explanation(item: Explanation, target: Path) -> Path:
    """``target`` (a PNG): the photo beside its heat map, its top classes below."""
    from scenecls.files import atomic_path

    with atomic_path(target, suffix=".png") as tmp:
        overlay(display_image(item), item.heatmap, caption_lines(item)).save(tmp, format="PNG")
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
