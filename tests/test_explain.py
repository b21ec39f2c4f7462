"""Grad-CAM heat maps: they light the region the class depends on; ``scenecls explain`` writes them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from scenecls.cli import cli
from tests.conftest import MINI, WEIGHTS_FILE, needs_real_photos, one_error_line, write_class_folders

SIZE, CELL = 128, 32  # a 4 x 4 grid of cells; ConvNeXt's last block sees the image as 4 x 4


def _scene(label: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Grey noise with one coloured cell at a random place: red for class 0, green for class 1. The
    class depends on that cell alone; the mask says where it is."""
    image = rng.uniform(90, 160, size=(SIZE, SIZE, 3)).astype(np.float32)
    row, col = rng.integers(0, SIZE // CELL, size=2)
    cell = (slice(row * CELL, (row + 1) * CELL), slice(col * CELL, (col + 1) * CELL))
    image[cell] = (230, 30, 30) if label == 0 else (30, 230, 30)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[cell] = True
    return image, mask


def _separating_head(model, images: np.ndarray, labels: np.ndarray) -> None:
    """Give a two-class classifier (no hidden dense layer) the head that tells classes 0 and 1 apart
    by the difference of their mean pooled features, scaled so that the classes are told apart surely."""
    from scenecls.caches.features import feature_model

    features = feature_model(model).predict(images, verbose=0)
    direction = features[labels == 0].mean(axis=0) - features[labels == 1].mean(axis=0)
    projected = features @ direction
    scale = 10 / projected.std()
    kernel = np.stack([direction, -direction], axis=1) * scale
    bias = np.array([-1.0, 1.0]) * projected.mean() * scale
    model.get_layer("predictions").set_weights([kernel.astype(np.float32), bias.astype(np.float32)])


@pytest.mark.slow
def test_the_heat_map_lights_the_region_the_class_depends_on():
    """A real backbone (ConvNeXt-tiny, random weights) with a head that tells the colours apart (the
    difference of the two classes' mean pooled features): the map of each image peaks in its cell."""
    import keras

    from scenecls.classifier import build_classifier
    from scenecls.explain import GradCam
    from scenecls.heads import HeadConfig

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = build_classifier("convnext_tiny", 2, size=SIZE, weights=None, head=HeadConfig(dense=0))
    labels = np.repeat([0, 1], 16)
    _separating_head(model, np.stack([_scene(y, rng)[0] for y in labels]), labels)

    test_labels = np.repeat([0, 1], 6)
    scenes = [_scene(y, rng) for y in test_labels]
    # The classic map, of the backbone's output: random weights blur the finer map of an earlier stage.
    maps, probs = GradCam(model, fine=False)(np.stack([image for image, _ in scenes]))
    assert maps.shape == (len(scenes), SIZE, SIZE) and maps.min() >= 0 and maps.max() <= 1
    assert np.array_equal(probs.argmax(axis=1), test_labels)
    for heatmap, (_, mask) in zip(maps, scenes, strict=True):
        assert mask.flat[heatmap.argmax()]  # the hottest pixel is in the cell
        assert heatmap[mask].mean() > 2 * heatmap[~mask].mean()


@pytest.mark.slow
@pytest.mark.parametrize(
    "backbone",
    ["mobilenet_v2", "xception", "inception_resnet_v2", "efficientnetv2_b0", "resnet50_v2", "convnext_tiny"],
)
def test_every_backbone_gives_heat_maps(backbone):
    from scenecls.classifier import build_classifier
    from scenecls.explain import GradCam

    model = build_classifier(backbone, 3, size=96, weights=None)
    images = np.random.default_rng(0).uniform(0, 255, size=(3, 96, 96, 3)).astype(np.float32)
    maps, probs = GradCam(model)(images)
    assert maps.shape == (3, 96, 96) and np.isfinite(maps).all() and 0 <= maps.min() <= maps.max() <= 1
    np.testing.assert_allclose(probs, model.predict(images, verbose=0), atol=1e-5)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("explain")
    data = write_class_folders(root / "data", 10, size=40)
    project = root / "runs"
    args = ["--data", str(data), "--backbone", "mobilenet_v2", "--weights", "none", "--image-size", "32",
            "-b", "8", "--dense", "1", "--epochs", "1", "--unfreeze", "0"]  # fmt: skip
    args += ["--project", str(project)]
    result = CliRunner().invoke(cli, ["train", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return project / "train", data


def test_explain_writes_a_heat_map_per_image_and_goes_on_past_a_bad_one(run, tmp_path):
    run_dir, data = run
    (data / "broken.jpg").write_bytes(b"not an image")
    try:
        result = CliRunner().invoke(
            cli, ["explain", str(run_dir), str(data / "alpha"), str(data / "broken.jpg"), "--format", "json"]
        )
    finally:
        (data / "broken.jpg").unlink()
    assert result.exit_code == 3, result.output  # some inputs failed
    rows = json.loads(result.stdout)
    assert len(rows) == 11 and rows[-1]["error"] and rows[-1]["written"] is None
    for row in rows[:-1]:
        assert row["error"] is None and len(row["top"]) == 3
        written = Path(row["written"])
        assert written.parent == run_dir / "explain" and written.name.endswith(".cam.png")
        with Image.open(written) as picture:
            # The photo and its overlay side by side, 448 px or more on the long side, a caption below.
            assert picture.width >= 2 * 448 and picture.height > 448
    # Again into the same folder: ours, so its maps are replaced.
    again = CliRunner().invoke(cli, ["explain", str(run_dir), str(data / "alpha" / "alpha_000.jpg")])
    assert again.exit_code == 0, again.output


def test_explain_refuses_an_export_and_a_folder_of_the_users(run, tmp_path):
    run_dir, data = run
    image = str(data / "alpha" / "alpha_000.jpg")
    exported = tmp_path / "model.tflite"
    exported.write_bytes(b"TFL3")
    result = CliRunner().invoke(cli, ["explain", str(exported), image])
    assert result.exit_code == 1 and "Keras model" in one_error_line(result)
    users = tmp_path / "mine"
    users.mkdir()
    (users / "alpha_000.cam.png").write_bytes(b"the user's own picture")
    result = CliRunner().invoke(cli, ["explain", str(run_dir), image, "--output", str(users)])
    assert result.exit_code == 2 and "did not write" in one_error_line(result)
    assert (users / "alpha_000.cam.png").read_bytes() == b"the user's own picture"


def test_plot_draws_the_highest_losses_beside_their_heat_maps(run):
    run_dir, _ = run
    result = CliRunner().invoke(cli, ["plot", str(run_dir), "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with Image.open(run_dir / "top_losses.png") as picture:
        plain = np.asarray(picture.convert("RGB"))
    result = CliRunner().invoke(cli, ["plot", str(run_dir), "--heatmaps"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with Image.open(run_dir / "top_losses.png") as picture:
        beside = np.asarray(picture.convert("RGB"))
    # The same grid, each image now beside its map (pairs are wide, so lines are lower).
    assert beside.shape[1] == plain.shape[1] and beside.shape[0] < plain.shape[0]


def test_explain_with_its_output_inside_its_input_folder_never_explains_its_own_maps(run, tmp_path):
    run_dir, data = run
    photos = tmp_path / "photos"
    shutil.copytree(data / "alpha", photos)
    count = len(list(photos.iterdir()))
    for _ in range(2):
        result = CliRunner().invoke(
            cli, ["explain", str(run_dir), str(photos), "--output", str(photos / "maps")]
        )
        assert result.exit_code == 0, result.output
    maps = sorted(p.name for p in (photos / "maps").glob("*.png"))
    assert len(maps) == count and not any(name.endswith(".cam.cam.png") for name in maps)


@pytest.mark.slow
@needs_real_photos
def test_on_real_photographs_the_map_finds_each_half_of_a_forest_and_sea_picture(tmp_path):
    """Real MobileNetV2 features and a head that tells forest from sea (the difference of their mean
    features): in pictures whose left half is a forest and right half the sea, or the other way round,
    the map of each class lies on its own half, more sharply than the classic map of the output."""
    import zipfile

    import keras

    from scenecls.classifier import build_classifier
    from scenecls.explain import GradCam
    from scenecls.heads import HeadConfig

    size = 150
    with zipfile.ZipFile(MINI) as archive:
        archive.extractall(tmp_path)
    photos = {c: sorted(tmp_path.rglob(f"seg_train/seg_train/{c}/*.jpg"))[:60] for c in ("forest", "sea")}
    load = [[np.asarray(Image.open(p).convert("RGB").resize((size, size)), np.float32) for p in photos[c]]
            for c in ("forest", "sea")]  # fmt: skip
    keras.utils.set_random_seed(0)
    model = build_classifier(
        "mobilenet_v2", 2, size=size, weights=str(WEIGHTS_FILE), head=HeadConfig(dense=0)
    )
    train = np.stack(load[0][:40] + load[1][:40])
    labels = np.repeat([0, 1], 40)
    _separating_head(model, train, labels)

    half = size // 2
    pictures, forest_left = [], []
    for i in range(10):  # unseen photos: forest | sea and sea | forest
        forest, sea = load[0][40 + i], load[1][40 + i]
        left, right = (forest, sea) if i % 2 == 0 else (sea, forest)
        pictures.append(np.concatenate([left[:, :half], right[:, half:]], axis=1))
        forest_left.append(i % 2 == 0)
    pictures = np.stack(pictures)
    for fine in (True, False):
        cam = GradCam(model, fine=fine)
        shares = []
        for label in (0, 1):  # the map of forest, then of sea, for every picture
            maps, _ = cam(pictures, np.full(len(pictures), label))
            on_left = maps[:, :, :half].sum(axis=(1, 2)) / np.maximum(maps.sum(axis=(1, 2)), 1e-9)
            own_half_left = np.array(forest_left) if label == 0 else ~np.array(forest_left)
            shares.append(np.where(own_half_left, on_left, 1 - on_left))
        share = float(np.mean(shares))
        if fine:
            fine_share = share
            assert cam.layer.name == "block_13_expand_relu" and cam.layer.output.shape[1] == 10
    assert fine_share > 0.75, fine_share  # most of each class's map lies on its own half
    assert fine_share >= share - 0.02, (fine_share, share)  # and no less than the classic map's
