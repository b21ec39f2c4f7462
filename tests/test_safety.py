"""Models from elsewhere are untrusted code until checked: a SavedModel whose graph reads or writes files
is refused (every backbone's own export is not), a .keras file whose zip would unpack to gigabytes is
refused before it is read, and one that holds code says so in words a user can act on."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from scenecls.cli import cli
from scenecls.errors import ModelError
from scenecls.models.registry import backbone_names
from scenecls.safety import check_keras_archive, check_savedmodel
from tests.conftest import one_error_line, write_class_folders


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(path)
    return path


def _savedmodel_that_writes(folder: Path, victim: Path, *, raw_save: bool = False) -> Path:
    """A SavedModel with the ``serve_pixels`` signature that predict uses, which also writes a file."""
    import tensorflow as tf

    class Evil(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32, name="pixels")])
        def serve_pixels(self, pixels):
            if raw_save:  # the checkpoint op, outside the saver: writes a file where it is told
                tf.raw_ops.SaveV2(
                    prefix=str(victim), tensor_names=["x"], shape_and_slices=[""], tensors=[tf.constant(1.0)]
                )
            else:
                tf.io.write_file(str(victim), tf.strings.as_string(tf.shape(pixels)[0]))
            logits = tf.zeros([tf.shape(pixels)[0], 3])
            return {"probabilities": tf.nn.softmax(logits)}

    module = Evil()
    tf.saved_model.save(module, str(folder), signatures={"serve_pixels": module.serve_pixels})
    return folder


@pytest.mark.parametrize("raw_save", [False, True], ids=["write_file", "SaveV2"])
def test_a_savedmodel_with_file_ops_is_refused_unless_trusted(tmp_path, image, raw_save):
    victim = tmp_path / "written_by_the_model"
    model = _savedmodel_that_writes(tmp_path / "evil", victim, raw_save=raw_save)
    data = write_class_folders(tmp_path / "data", 2, size=32)
    for command in (
        ["predict", str(image), "--model", str(model)],
        ["evaluate", str(model), "--data", str(data)],
    ):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 1
        line = one_error_line(result)
        assert "refused the SavedModel" in line and "--trust-model" in line
        assert not list(tmp_path.glob("written_by_the_model*"))
    trusted = CliRunner().invoke(cli, ["predict", str(image), "--model", str(model), "--trust-model"])
    assert trusted.exit_code == 0, trusted.output
    if not raw_save:
        assert victim.read_text() == "1"  # it did run what it holds: that is what trusting it means


@pytest.mark.slow
@pytest.mark.parametrize("backbone", backbone_names())
def test_every_backbones_own_savedmodel_passes_the_check(tmp_path, backbone):
    from scenecls.classifier import build_classifier
    from scenecls.export import export_model
    from scenecls.models.registry import get_spec

    spec = get_spec(backbone)
    model = build_classifier(spec, 3, size=max(32, spec.min_size), weights=None)
    check_savedmodel(export_model(model, ["a", "b", "c"], "savedmodel", tmp_path / "sm"))


def test_a_keras_file_whose_config_would_unpack_to_gigabytes_is_refused_unread(tmp_path, image):
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.0"}))
        archive.writestr("config.json", " " * (65 * 1024**2))
    assert bomb.stat().st_size < 1024**2
    with pytest.raises(ModelError, match=r"config\.json would unpack to 65\.0 MiB"):
        check_keras_archive(bomb)
    result = CliRunner().invoke(cli, ["predict", str(image), "--model", str(bomb)])
    assert result.exit_code == 1 and "refused" in one_error_line(result)


def test_a_keras_file_with_a_lambda_layer_is_refused_in_plain_words(tmp_path, image):
    import keras

    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Lambda(lambda x: x[:, 0, 0, :])(inputs)
    model = keras.Model(inputs, outputs, name="scenecls_mobilenet_v2")
    path = tmp_path / "code.keras"
    model.save(path)
    result = CliRunner().invoke(cli, ["predict", str(image), "--model", str(path)])
    assert result.exit_code == 1
    assert "the model holds code (a Lambda layer)" in one_error_line(result)


def test_a_zip_of_many_entries_or_damaged_is_not_a_model(tmp_path):
    crowded = tmp_path / "crowded.keras"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(1001):
            archive.writestr(f"{i}.txt", "")
    crowded.write_bytes(buffer.getvalue())
    with pytest.raises(ModelError, match="1001 entries"):
        check_keras_archive(crowded)


def _lying_zip(path: Path, member: str, size: int, declared: int) -> None:
    """A zip whose ``member`` holds ``size`` zero bytes but whose headers (both the local one and the
    central directory's) declare ``declared`` bytes, with the CRC of what it declares: Python's own reader
    then accepts it, after inflating the whole member in one step."""
    import struct
    import zlib

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.0"}))
        archive.writestr(member, bytes(size))
    data = bytearray(path.read_bytes())
    crc = zlib.crc32(bytes(declared))
    name = member.encode()
    for signature, crc_at, size_at in ((b"PK\x03\x04", 14, 22), (b"PK\x01\x02", 16, 24)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            name_at = start + (30 if signature == b"PK\x03\x04" else 46)
            if data[name_at : name_at + len(name)] == name:
                struct.pack_into("<I", data, start + crc_at, crc)
                struct.pack_into("<I", data, start + size_at, declared)
            start += 4
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("member", ["config.json", "model.weights.h5"])
def test_a_member_that_inflates_past_its_declared_size_is_refused_in_bounded_memory(tmp_path, member):
    """The sizes a zip declares are the maker's word: a 1 MB file whose 100-byte member inflates to
    256 MiB is refused after inflating at most a step past the declared size, never the whole member."""
    import tracemalloc

    bomb = tmp_path / "liar.keras"
    _lying_zip(bomb, member, 256 * 1024**2, 100)
    assert bomb.stat().st_size < 1024**2
    with zipfile.ZipFile(bomb) as archive:  # Python's reader believes it (and would inflate it whole)
        assert archive.getinfo(member).file_size == 100
    tracemalloc.start()
    try:
        with pytest.raises(ModelError, match=rf"{member} unpacks to more than the 100 B it declares"):
            check_keras_archive(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024**2


def test_a_truthful_zip_of_a_real_model_passes_the_inflation_check(tmp_path):
    import keras

    from scenecls.classifier import build_classifier, save_model

    keras.backend.clear_session()
    model = build_classifier("mobilenet_v2", 3, size=32, weights=None)
    check_keras_archive(save_model(model, tmp_path / "ok.keras"))
