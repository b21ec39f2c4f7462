"""Head checkpoints: a frozen-backbone phase saves only the head and its optimizer, and loses nothing."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from scenecls import runs
from scenecls.caches.features import head_model
from scenecls.classifier import build_classifier, load_model
from scenecls.errors import SceneclsError
from scenecls.heads import HeadConfig
from scenecls.training.checkpoints import BEST_HEAD, LAST_HEAD, HeadCheckpoints, load_head, save_head

FEATURES = np.random.default_rng(0).normal(size=(24, 768)).astype("float32")
LABELS = np.arange(24) % 3


def classifier(dense: int = 2):
    keras.utils.set_random_seed(0)
    return build_classifier(
        "convnext_tiny", 3, size=32, weights=None, head=HeadConfig(dense=dense, units=8, dropout=0.0)
    )


def trainer_of(model):
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    trainer = head_model(model)
    trainer.compile(optimizer=model.optimizer, loss=model.loss)
    return trainer


def fit(trainer, epochs: int = 1) -> None:
    trainer.fit(FEATURES, LABELS, batch_size=8, epochs=epochs, verbose=0, shuffle=False)


@pytest.fixture(scope="module")
def trained():
    """A classifier whose head trained 2 epochs on features; the head checkpoint is in a fresh folder."""
    model = classifier()
    trainer = trainer_of(model)
    fit(trainer, 2)
    return model, trainer


def test_a_head_checkpoint_restores_weights_and_optimizer_state(trained, tmp_path):
    model, trainer = trained
    save_head(trainer, tmp_path / LAST_HEAD)
    assert (tmp_path / LAST_HEAD).stat().st_size < 200_000  # the head only, not the 28M-weight backbone

    other = classifier()
    other_trainer = trainer_of(other)  # its optimizer is not even built yet
    load_head(other_trainer, tmp_path / LAST_HEAD)
    for mine, theirs in zip(trainer.weights, other_trainer.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    assert int(other.optimizer.iterations) == int(model.optimizer.iterations) == 6
    for mine, theirs in zip(model.optimizer.variables, other.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    # Training on from the restored state is training on from the original one (no dropout: no RNG).
    fit(trainer)
    fit(other_trainer)
    np.testing.assert_allclose(
        trainer.predict(FEATURES, verbose=0), other_trainer.predict(FEATURES, verbose=0)
    )


def test_a_head_checkpoint_of_another_head_is_refused(trained, tmp_path):
    save_head(trained[1], tmp_path / LAST_HEAD)
    wider = trainer_of(classifier(dense=3))
    with pytest.raises(SceneclsError, match="does not fit"):
        load_head(wider, tmp_path / LAST_HEAD)
    (tmp_path / "damaged.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(SceneclsError, match="cannot read"):
        load_head(wider, tmp_path / "damaged.npz")


def test_model_files_are_written_once_per_phase_from_the_best_and_last_heads(tmp_path, monkeypatch):
    from scenecls.training import checkpoints as module

    saves = []
    original_save = module.save_model
    monkeypatch.setattr(
        module, "save_model", lambda model, path: saves.append(path.name) or original_save(model, path)
    )
    model = classifier()
    trainer = trainer_of(model)
    head = HeadCheckpoints(model, trainer, tmp_path)
    head.begin(resumed=False)
    assert saves == [runs.LAST]  # the model the head checkpoints belong to
    outputs = []
    for epoch in range(4):
        fit(trainer)
        head.save_last()
        outputs.append(trainer.predict(FEATURES, verbose=0))
        if epoch == 1:
            head.save_best()
    assert saves == [runs.LAST] and head.pending
    fit(trainer)  # an epoch in progress when Ctrl-C came: not in any file
    head.finish(best_in_phase=True, continue_from_best=False)
    assert saves == [runs.LAST, runs.BEST, runs.LAST] and not head.pending
    best, last = load_model(tmp_path / runs.BEST), load_model(tmp_path / runs.LAST, compile=True)
    np.testing.assert_allclose(head_model(best).predict(FEATURES, verbose=0), outputs[1], atol=1e-6)
    np.testing.assert_allclose(head_model(last).predict(FEATURES, verbose=0), outputs[3], atol=1e-6)
    assert int(last.optimizer.iterations) == 4 * 3
    head.discard()
    assert not (tmp_path / LAST_HEAD).exists() and not (tmp_path / BEST_HEAD).exists()


def _archive_contents(path) -> tuple[bytes, dict[str, bytes]]:
    """A ``.keras`` file's architecture and every array of its weights file, by name."""
    import io
    import zipfile

    import h5py

    arrays: dict[str, bytes] = {}

    def keep(name: str, item) -> None:
        if isinstance(item, h5py.Dataset):
            arrays[name] = item[()].tobytes()

    with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as h5:
        h5.visititems(keep)
        return archive.read("config.json"), arrays


def test_a_model_file_holds_what_keras_itself_writes(trained, tmp_path):
    """save_model keeps Keras's skip lists between saves (see classifier._cache_keras_skipsets): the file
    is the one Keras writes without them, every layer's and the optimizer's arrays under the same names."""
    import threading

    from scenecls.classifier import save_model

    model, _ = trained
    own = tmp_path / "own.keras"
    saved = threading.Thread(target=model.save, args=(own,))  # a new thread: Keras's state as at start
    saved.start()
    saved.join()
    save_model(model, tmp_path / "ours.keras")
    save_model(model, tmp_path / "again.keras")  # the second save reads the kept lists
    architecture, arrays = _archive_contents(own)
    assert len(arrays) > 100 and any(name.startswith("optimizer") for name in arrays)
    assert _archive_contents(tmp_path / "ours.keras") == (architecture, arrays)
    assert _archive_contents(tmp_path / "again.keras") == (architecture, arrays)


def test_new_logits_are_written_into_the_file_and_nothing_else_changes(trained, tmp_path):
    """Calibration's temperature goes into the saved file in place: the last layer's two arrays change,
    every other array (the optimizer's state too) and the architecture stay, the checksum follows."""
    import os

    from scenecls.checksums import checksum_matches
    from scenecls.classifier import PREDICTIONS, rewrite_weights, save_model

    model, _ = trained
    path = save_model(model, tmp_path / "best.keras")
    architecture, arrays = _archive_contents(path)
    old = model.get_layer(PREDICTIONS).get_weights()
    new = [old[0] / 1.7, old[1] / 1.7]
    assert rewrite_weights(path, old, new)
    assert checksum_matches(path)
    loaded = load_model(path, compile=True)
    for got, want in zip(loaded.get_layer(PREDICTIONS).get_weights(), new, strict=True):
        np.testing.assert_array_equal(got, want)
    architecture_after, arrays_after = _archive_contents(path)
    changed = sorted(name for name in arrays if arrays[name] != arrays_after[name])
    assert architecture_after == architecture and arrays_after.keys() == arrays.keys()
    assert len(changed) == 2 and not any(name.startswith("optimizer") for name in changed), changed
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)
    for got, want in zip(loaded.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

    # Arrays the file does not hold (or holds twice): nothing is written, and the caller is told.
    stamp, content = os.stat(path).st_mtime_ns, path.read_bytes()
    assert not rewrite_weights(path, [np.full_like(old[0], 0.5)], [old[0]])
    values = [np.asarray(weight) for weight in model.weights]
    twice = next(
        v for v in values if sum(v.shape == w.shape and v.tobytes() == w.tobytes() for w in values) > 1
    )
    assert not rewrite_weights(path, [twice], [twice + 1])  # e.g. two layer norms' untrained offsets
    assert os.stat(path).st_mtime_ns == stamp and path.read_bytes() == content
