"""The fine-tuning activation cache: the split is the classifier, entries are keyed, checked and rebuilt,
and fine-tuning on them trains (and saves, and resumes) the ordinary whole model."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from scenecls import files, runs
from scenecls.caches import activations, store
from scenecls.caches.listing import list_entries
from scenecls.caches.store import CacheInputs
from scenecls.classifier import build_classifier, find_backbone, load_model
from scenecls.cli import cli
from scenecls.data.augment import AugmentConfig
from scenecls.data.pipeline import finite_dataset_warnings_silenced, make_dataset, prepare_data
from scenecls.models import folding
from scenecls.models.registry import get_spec
from scenecls.paths import cache_dir
from scenecls.progress import NullReporter
from scenecls.training.sources import crop_resize, flip_half
from scenecls.unfreeze import UnfreezePolicy, apply_unfreeze
from tests.conftest import ctrl_c_at_batch, invoke, tiny, write_class_folders, write_train_test

pytestmark = pytest.mark.slow  # trains several models: left out of the fast lane (-m "not slow")

# Runs train the tiny MobileNetV2: the tests ask which source a phase trains on and what it saves, not
# how well it learns (ConvNeXt's cut, whose residual sums are operations, is checked on its own below).
TINY = tiny()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    return write_train_test(root, 16, 6)


def _split(backbone: str, unfreeze: int, size: int = 32):
    import keras

    keras.utils.set_random_seed(0)
    model = build_classifier(backbone, 3, size=size, weights="none")
    inner = find_backbone(model)
    blocks = get_spec(backbone).block_map(inner)
    apply_unfreeze(inner, blocks, UnfreezePolicy("blocks", unfreeze), model=model)
    index = activations.cut_index(blocks, UnfreezePolicy("blocks", unfreeze))
    return model, inner, activations.split_classifier(model, inner, index)


@pytest.mark.parametrize(
    ("backbone", "unfreeze"), [("mobilenet_v2", 5), ("convnext_tiny", 1)], ids=["mobilenet_v2", "convnext"]
)
def test_upper_of_lower_is_the_classifier_and_trains_its_layers(backbone, unfreeze):
    """ConvNeXt's residual sums are operations, not layers: its cut must still be the block's input."""
    model, inner, cut = _split(backbone, unfreeze)
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    whole = np.asarray(model(images, training=False))
    assert np.allclose(np.asarray(cut.upper(cut.lower(images))), whole, atol=1e-5)
    # The upper part is made of the classifier's own variables: exactly the trainable ones.
    assert {v.path for v in cut.upper.trainable_variables} == {v.path for v in model.trainable_variables}
    assert not cut.lower.trainable_variables
    index = activations.cut_index(get_spec(backbone).block_map(inner), UnfreezePolicy("blocks", unfreeze))
    assert cut.layer == inner.layers[index].name and inner.layers[index].trainable
    assert not inner.layers[index - 1].trainable


def test_cut_only_where_something_below_stays_frozen():
    _, inner, _ = _split("mobilenet_v2", 1)
    blocks = get_spec("mobilenet_v2").block_map(inner)
    assert activations.cut_index(blocks, UnfreezePolicy("all")) is None
    assert activations.cut_index(blocks, UnfreezePolicy("layers", 10)) is None
    assert activations.cut_index(blocks, UnfreezePolicy("blocks", len(blocks.blocks))) is None
    assert activations.cut_index(blocks, UnfreezePolicy("blocks", 3)) < activations.cut_index(
        blocks, UnfreezePolicy("blocks", 1)
    )


def test_entries_are_built_reused_keyed_and_rebuilt_when_damaged(tmp_path, monkeypatch):
    monkeypatch.setattr(folding, "FOLD_FROM", 0)  # the build folds its batch norms, as with real data sets
    root = write_class_folders(tmp_path / "data", 6, size=32)
    data = prepare_data(root, val_split=0.25, seed=0)
    _, inner, cut = _split("mobilenet_v2", 2)
    cache = tmp_path / "cache"
    augment = AugmentConfig()

    def entry(cut_models=cut, copies=2, **kwargs):
        inputs = CacheInputs(data.train, data.val, (32, 32), 4, augment, copies, seed=0)
        return activations.load_or_build(cut_models, inner, inputs, cache_root=cache, **kwargs)

    built = entry()
    assert not built.reused and built.train.dtype == np.float16 and isinstance(built.train, np.memmap)
    assert built.train.shape == (2, len(data.train), *cut.shape) and built.val.shape == (
        len(data.val),
        *cut.shape,
    )
    # The un-augmented validation activations are the lower part's output, to float16's precision: a
    # random MobileNetV2 gives values near 1e-9 here, which only the entry's scale keeps from underflowing.
    with finite_dataset_warnings_silenced():
        images = np.concatenate([x for x, _ in make_dataset(data.val, (32, 32), 4)])
    expected = np.asarray(cut.lower(images))
    assert 0 < np.abs(expected).max() < 1e-6
    assert built.scale > 1e6 and np.log2(built.scale).is_integer()
    assert np.allclose(built.read(built.val), expected, rtol=2e-3, atol=np.abs(expected).max() * 1e-3)
    assert not np.array_equal(built.train[0], built.train[1])  # two different augmented copies
    assert entry().reused

    # Anything the activations depend on is in the key: copies, and the cut.
    assert not entry(copies=1).reused
    _, _, lower_cut = _split("mobilenet_v2", 3)
    assert lower_cut.layer != cut.layer
    inputs = CacheInputs(data.train, data.val, (32, 32), 4, augment, copies=2, seed=0)
    assert activations.cache_key(inner, lower_cut, inputs)[0] != built.key

    # A damaged entry fails its checksum: rebuilt (with a warning), never used.
    with open(built.folder / "train.npy", "r+b") as handle:
        handle.seek(-7, os.SEEK_END)
        handle.write(b"garbage")
    warnings = []

    class Recorder(NullReporter):
        def warn(self, message: str) -> None:
            warnings.append(message)

    rebuilt = entry(reporter=Recorder())
    assert not rebuilt.reused and "stale or damaged" in warnings[0]
    assert np.array_equal(rebuilt.val, built.val)
    assert entry().reused
    # A worker of a cluster only looks: no entry, no build.
    assert entry(copies=3, build=False) is None
    assert not any(p.name.endswith(".building") for p in (cache / "activations").iterdir())


def test_storage_scale_is_a_power_of_two_leaving_headroom():
    assert activations.storage_scale(np.zeros((2, 3))) == 1.0
    assert activations.storage_scale(np.array([np.inf])) == 1.0
    for peak in (3e-12, 0.7, 6.0, 900.0, 1e6):
        scale = activations.storage_scale(np.array([[-peak, peak / 3]]))
        assert np.log2(scale).is_integer()
        assert 65504 / 128 < peak * scale <= 65504 / 64


def test_values_beyond_float16_after_the_first_batch_are_stored_as_float32(tmp_path, monkeypatch):
    root = write_class_folders(tmp_path / "data", 6, size=32)
    data = prepare_data(root, val_split=0.25, seed=0)
    _, inner, cut = _split("mobilenet_v2", 2)
    from scenecls import classifier

    original = classifier.inference_function
    calls = {"n": 0}

    def growing(model, batch_size, **options):
        forward = original(model, batch_size, **options)

        def run(images):
            calls["n"] += 1
            return forward(images) * (1.0 if calls["n"] == 1 else 1e12)  # later batches far larger

        return run

    monkeypatch.setattr(classifier, "inference_function", growing)
    messages = []

    class Recorder(NullReporter):
        def log(self, message: str) -> None:
            messages.append(message)

    inputs = CacheInputs(data.train, data.val, (32, 32), 4, AugmentConfig(), copies=1, seed=0)
    entry = activations.load_or_build(cut, inner, inputs, cache_root=tmp_path / "cache", reporter=Recorder())
    assert entry.train.dtype == np.float32 and entry.scale == 1.0
    # The later batches, a trillion times the first, are kept (the first batch's scale would overflow).
    assert np.isfinite(entry.train).all() and np.abs(entry.read(entry.val)).max() > 1.0
    assert any("float32" in m for m in messages)


def test_an_interrupted_build_leaves_nothing_and_an_abandoned_one_is_cleared(tmp_path, monkeypatch):
    root = write_class_folders(tmp_path / "data", 6, size=32)
    data = prepare_data(root, val_split=0.25, seed=0)
    _, inner, cut = _split("mobilenet_v2", 2)
    cache = tmp_path / "cache"
    parent = cache / "activations"
    parent.mkdir(parents=True)
    host = files.host_name()
    dead = parent / f".0123abcd.{host}-999999999.building"  # no such process
    dead.mkdir()
    (dead / "train.npy").write_bytes(b"half")
    alive = parent / f".4567cdef.{host}-{os.getppid()}.building"  # a build still running elsewhere
    alive.mkdir()
    # Another machine's builds (a shared cache folder): kept unless a day old.
    recent = parent / ".89abcdef.other_host-1.building"
    recent.mkdir()
    stale = parent / ".fedcba98.other_host-2.building"
    stale.mkdir()
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(stale, (two_days_ago, two_days_ago))

    def build():
        inputs = CacheInputs(data.train, data.val, (32, 32), 4, AugmentConfig(), copies=1, seed=0)
        return activations.load_or_build(cut, inner, inputs, cache_root=cache)

    original = activations._fill
    calls = {"n": 0}

    def ctrl_c_in_the_second_fill(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        original(*args)

    monkeypatch.setattr(activations, "_fill", ctrl_c_in_the_second_fill)
    with pytest.raises(KeyboardInterrupt):
        build()
    # No entry and no staging folder of ours; the abandoned ones are gone.
    assert sorted(p.name for p in parent.iterdir()) == sorted([alive.name, recent.name])
    monkeypatch.setattr(activations, "_fill", original)
    assert not build().reused and build().reused
    assert alive.is_dir() and recent.is_dir()


def test_fine_tuning_on_cached_activations_trains_and_saves_the_whole_model(data, tmp_path):
    project = tmp_path / "runs"
    args = ["--data", str(data), *TINY, "--epochs", "1", "--finetune-epochs", "2", "--unfreeze", "1,2",
            "--dropout", "0"]  # fmt: skip
    result = invoke("-q", "train", *args, "--project", str(project), "--format", "json")
    assert result.exit_code == 0, result.output
    run = project / "train"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["activation_cache"] == {"finetune1": "built", "finetune2": "built"}  # a cut per stage
    # The last epoch's validation loss, computed on cached activations, is the saved whole model's on images.
    history = runs.read_history(run / "history.csv")
    assert [r["phase"] for r in history] == ["head", "finetune1", "finetune1", "finetune2", "finetune2"]
    model = load_model(run / "last.keras", compile=True)
    prepared = prepare_data(data, val_split=0.2, seed=0)
    with finite_dataset_warnings_silenced():
        loss, accuracy = model.evaluate(make_dataset(prepared.val, (32, 32), 8), verbose=0)[:2]
    assert loss == pytest.approx(history[-1]["val_loss"], rel=2e-2, abs=1e-3)
    assert accuracy == pytest.approx(history[-1]["val_accuracy"], abs=1e-6)
    assert int(model.optimizer.iterations) >= 2 * 5  # the optimizer's state went with the model

    again = invoke("-q", "train", *args, "--project", str(project), "--name", "again", "--format", "json")
    assert again.exit_code == 0, again.output
    reused = json.loads((project / "again" / "metrics.json").read_text())["activation_cache"]
    assert reused == {"finetune1": "reused", "finetune2": "reused"}
    assert json.loads(again.stdout)["best_val_accuracy"] == json.loads(result.stdout)["best_val_accuracy"]
    # `scenecls cache` lists real entries as usable, and reading one counts as a use
    entries = [e for e in list_entries(cache_dir(), ["activations"]) if e.state == "current"]
    assert sum(e.used > e.created for e in entries) >= 2


@pytest.mark.parametrize(
    "options",
    [["--no-cache"], ["--finetune-copies", "0"], ["--unfreeze", "all"], ["--mixup", "0.2"]],
    ids=["no-cache", "copies-0", "unfreeze-all", "mixup"],
)
def test_fine_tuning_runs_on_images_when_the_cache_does_not_apply(data, tmp_path, options):
    project = tmp_path / "runs"
    args = [
        "--data",
        str(data),
        *TINY,
        "--epochs",
        "1",
        "--finetune-epochs",
        "1",
        "--unfreeze",
        "1",
        *options,
    ]
    result = invoke("-q", "train", *args, "--project", str(project))
    assert result.exit_code == 0, result.output
    metrics = json.loads((project / "train" / "metrics.json").read_text())
    assert metrics["activation_cache"] == {}
    assert (metrics["feature_cache"] == "off") == (options == ["--no-cache"])


def test_resume_in_a_cached_fine_tuning_phase_repeats_the_uninterrupted_epochs(data, tmp_path, monkeypatch):
    """Each epoch reads its copy in its own seeded order (and flips and crops its maps its own way), so after
    --resume (optimizer state from last.keras, the same cache entry) the epochs are the ones an
    uninterrupted run trains."""
    args = [*TINY, "--data", str(data), "--dropout", "0", "--epochs", "1", "--finetune-epochs", "3",
            "--unfreeze", "1", "--seed", "3", "--finetune-map-aug", "crop,flip"]  # fmt: skip
    straight = invoke("train", *args, "--project", str(tmp_path / "a"))
    assert straight.exit_code == 0, straight.output

    with ctrl_c_at_batch(monkeypatch, 12):  # 5 batches an epoch: batch 2 of the 2nd fine-tuning epoch
        assert invoke("train", *args, "--project", str(tmp_path / "b")).exit_code == 130
    state = json.loads((tmp_path / "b" / "train" / "state.json").read_text())
    assert state["status"] == "interrupted" and state["epoch"] == 2
    assert invoke("train", "--resume", str(tmp_path / "b" / "train")).exit_code == 0

    a = runs.read_history(tmp_path / "a" / "train" / "history.csv")
    b = runs.read_history(tmp_path / "b" / "train" / "history.csv")
    assert [r["epoch"] for r in b] == [1, 2, 3, 4]
    for key in ("loss", "val_loss", "val_accuracy"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-4, abs=1e-6), key
    metrics = json.loads((tmp_path / "b" / "train" / "metrics.json").read_text())
    assert metrics["activation_cache"] == {"finetune": "reused"}
    assert (
        json.loads((tmp_path / "b" / "train" / "config.json").read_text())["finetune_map_aug"] == "flip,crop"
    )


def test_flip_half_mirrors_a_seeded_half_of_the_maps():
    maps = np.random.default_rng(0).normal(size=(64, 3, 4, 2)).astype(np.float32)
    flipped = flip_half(maps.copy(), np.random.default_rng([1, 2, 3]))
    mirrored = [i for i in range(len(maps)) if not np.array_equal(flipped[i], maps[i])]
    assert 16 < len(mirrored) < 48
    for i in range(len(maps)):
        np.testing.assert_array_equal(flipped[i], maps[i][:, ::-1] if i in mirrored else maps[i])
    np.testing.assert_array_equal(flip_half(maps.copy(), np.random.default_rng([1, 2, 3])), flipped)


def test_crop_resize_zooms_and_shifts_each_map_within_its_bounds():
    maps = np.random.default_rng(0).normal(size=(16, 10, 10, 3)).astype(np.float32)
    np.testing.assert_allclose(crop_resize(maps, np.random.default_rng(1), smallest=1.0), maps, atol=1e-6)
    # a ramp along the width stays a ramp, its slope the window's share of the map (0.8 to 1)
    ramp = np.tile(np.arange(10, dtype=np.float32)[None, None, :, None], (16, 10, 1, 2))
    cropped = crop_resize(ramp, np.random.default_rng(2))
    slopes = np.diff(cropped, axis=2)[:, :, 1:-1]  # inside: the edge samples may be clamped to the map
    assert cropped.dtype == np.float32 and cropped.shape == ramp.shape
    assert slopes.min() >= 0.8 - 1e-5 and slopes.max() <= 1.0 + 1e-5
    assert np.allclose(slopes, slopes[:, :, :1], atol=1e-5)  # linear: one slope per map
    assert cropped[:, :, 0].min() >= 0 and cropped[:, :, -1].max() <= 9
    assert len(np.unique(slopes[:, 0, 0, 0].round(4))) > 8  # a window of its own for each map


def test_no_room_for_the_cache_fine_tunes_on_images_and_says_so(data, tmp_path, monkeypatch):
    import shutil as shutil_module

    real = shutil_module.disk_usage

    def nearly_full(path):
        usage = real(path)
        return usage._replace(free=100 * 1024**2)  # below the 512 MiB that must stay free

    monkeypatch.setattr(files.shutil, "disk_usage", nearly_full)  # where check_free_space asks
    project = tmp_path / "runs"
    # A seed of its own: other tests' entries (one cache folder for the session) have other weights.
    result = invoke("train", "--data", str(data), *TINY, "--epochs", "1", "--finetune-epochs", "1",
                    "--unfreeze", "1", "--seed", "11", "--project", str(project))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "not enough disk space for the activation cache" in result.stderr
    assert "fine-tuning on images instead" in result.stderr
    metrics = json.loads((project / "train" / "metrics.json").read_text())
    assert metrics["activation_cache"] == {}
    assert [r["phase"] for r in runs.read_history(project / "train" / "history.csv")] == ["head", "finetune"]


@pytest.mark.parametrize(
    ("errno_name", "reason"), [("ENOSPC", "No space left on device"), ("EFBIG", "File too large")]
)
def test_a_disk_that_fills_while_building_falls_back_to_images_and_keeps_nothing_half_written(
    data, tmp_path, monkeypatch, errno_name, reason
):
    """A full disk or a file-size limit while the cache is written: one warning that names the cache,
    the room it needs and what to do; fine-tuning goes on from the images; no half entry is left."""
    import errno

    def full(fd, offset, length):
        raise OSError(getattr(errno, errno_name), reason)

    monkeypatch.setattr(store.os, "posix_fallocate", full, raising=False)  # every cache's reservation
    project = tmp_path / "runs"
    args = ["train", "--data", str(data), *TINY, "--epochs", "1", "--finetune-epochs", "1",
            "--unfreeze", "1", "--seed", "12", "--project", str(project)]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    warning = next(line for line in result.stderr.splitlines() if "activation cache could not be" in line)
    assert reason in warning and "it needs" in warning and "fine-tuning on images instead" in warning
    state = json.loads((project / "train" / "state.json").read_text())
    assert state["status"] == "finished" and state["epoch"] == 2
    cache = Path(os.environ["SCENECLS_HOME"]) / "cache" / "activations"
    assert cache.is_dir() and not list(cache.glob(".*.building"))  # the staging folder is gone


def test_ctrl_c_while_building_the_cache_is_an_interrupted_run_that_resumes(data, tmp_path, monkeypatch):
    """As in a sweep stopped mid-build: no half entry is left, and the resumed run builds a whole one."""

    def interrupted(*args):  # Ctrl-C as the first copy's activations are being written
        raise KeyboardInterrupt

    project = tmp_path / "runs"
    args = ["--data", str(data), *TINY, "--epochs", "1", "--finetune-epochs", "1", "--unfreeze", "1",
            "--seed", "13"]  # fmt: skip
    # The head's features cached first, so that the activations are built on their own, in phase 2 (a run
    # with neither cache builds both in phase 1: see test_one_pass.py).
    features_only = invoke("-q", "train", *args, "--finetune-epochs", "0", "--project", str(tmp_path / "f"))
    assert features_only.exit_code == 0, features_only.output
    monkeypatch.setattr(activations, "_fill", interrupted)
    result = invoke("-q", "train", *args, "--project", str(project))
    assert result.exit_code == 130
    assert f"scenecls train --resume {project / 'train'}" in result.stderr
    state = json.loads((project / "train" / "state.json").read_text())
    assert state["status"] == "interrupted" and state["epoch"] == 1  # the head epoch is kept
    cache = Path(os.environ["SCENECLS_HOME"]) / "cache" / "activations"
    before = set(cache.iterdir())
    assert not [p for p in before if p.name.endswith(".building")]

    monkeypatch.undo()
    resumed = invoke("train", "--resume", str(project / "train"), "--format", "json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["epochs"] == 2
    metrics = json.loads((project / "train" / "metrics.json").read_text())
    assert metrics["activation_cache"] == {"finetune": "built"}
    assert len(set(cache.iterdir()) - before) == 1  # one whole entry, built by the resumed run


def test_an_unknown_map_augmentation_is_a_usage_error(data):
    result = CliRunner().invoke(cli, ["train", "--data", str(data), "--finetune-map-aug", "flip,rotate"])
    assert result.exit_code == 2 and "rotate is not one of none, flip, crop" in result.output
