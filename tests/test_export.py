"""`scenecls export` and exported models in `predict` and `evaluate`: every format round-trips and agrees
with the Keras model, the SavedModel serves encoded bytes, a .tflite predict never imports TensorFlow,
and damaged or mismatched files are one-line errors."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import foreign_lines, invoke, one_error_line, tiny, write_class_folders

pytestmark = pytest.mark.slow  # trains several models: left out of the fast lane (-m "not slow")

TINY = tiny(export=True)


def predict_in_a_fresh_process(*args: str) -> tuple[int, str, dict[str, bool]]:
    """``scenecls predict ARGS --format json`` in a new interpreter: exit code, stdout, and whether
    TensorFlow and Keras were imported."""
    code = (
        "import json, sys\n"
        "from click.testing import CliRunner\n"
        "from scenecls.cli import cli\n"
        f"result = CliRunner().invoke(cli, ['predict', *{list(args)!r}, '--format', 'json'])\n"
        "report = {'code': result.exit_code, 'stdout': result.stdout,\n"
        "          'imported': {m: m in sys.modules for m in ('tensorflow', 'keras')}}\n"
        "print(json.dumps(report))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    return report["code"], report["stdout"], report["imported"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    data = write_class_folders(root / "data", 8, seed=3, size=40)
    result = invoke(
        "train", "--data", str(data), *TINY, "--epochs", "1", "--finetune-epochs", "0",
        "--project", str(root / "runs"), "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return Path(json.loads(result.stdout)["run_dir"])


def test_training_writes_a_checked_best_tflite_that_predict_uses(run):
    """By default a run ends with best.tflite beside best.keras; predict on the run uses it (no
    TensorFlow), and --keras still gives best.keras, with the same answers."""
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["export"]["tflite"] == "best.tflite" and metrics["export"]["top1_agreement"] == 1.0
    assert (run / "best.tflite").stat().st_mtime >= (run / "best.keras").stat().st_mtime
    image = next((run.parent.parent / "data").rglob("*.jpg"))
    code, stdout, imported = predict_in_a_fresh_process(str(image), "--project", str(run.parent))
    assert code == 0 and imported == {"tensorflow": False, "keras": False}
    fast = json.loads(stdout)[0]
    keras = invoke("predict", str(image), "--project", str(run.parent), "--keras", "--format", "json")
    slow = json.loads(keras.stdout)[0]
    assert fast["label"] == slow["label"]
    assert fast["confidence"] == pytest.approx(slow["confidence"], abs=1e-4)


@pytest.fixture(scope="module")
def exported(run) -> dict[str, Path]:
    paths = {}
    for fmt in ("tflite", "onnx", "savedmodel", "openvino"):
        # --to names the model format and --format the output; the old spellings (--format tflite,
        # --json) stay as aliases: savedmodel is exported with them.
        new = ["--to", fmt, "--format", "json"] if fmt != "savedmodel" else ["--format", fmt, "--json"]
        result = invoke("-q", "export", str(run), *new)
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["parity"]["top1_agreement"] == 1.0 and report["parity"]["max_abs_diff"] < 1e-4
        paths[fmt] = Path(report["path"])
    return paths


@pytest.mark.parametrize("fmt", ["tflite", "onnx", "savedmodel", "openvino"])
def test_each_format_predicts_as_the_keras_model(run, exported, fmt):
    images = sorted(str(p) for p in (run.parent.parent / "data").rglob("*.jpg"))[:10]
    keras = invoke("predict", *images, "--model", str(run), "--format", "json")
    other = invoke("predict", *images, "--model", str(exported[fmt]), "--format", "json")
    assert keras.exit_code == 0 and other.exit_code == 0, other.output
    for a, b in zip(json.loads(keras.stdout), json.loads(other.stdout), strict=True):
        assert a["label"] == b["label"]
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-4)


def test_labels_and_metadata_go_beside_the_model(run, exported):
    classes = json.loads((run / "labels.json").read_text())["classes"]
    assert (run / "labels.txt").read_text().split() == classes
    meta = json.loads((run / "best.tflite.json").read_text())
    assert meta["classes"] == classes and meta["input"]["height"] == 32
    assert "0-255" in meta["input"]["pixels"]
    assert (exported["savedmodel"] / "labels.txt").is_file() and (
        exported["savedmodel"] / "metadata.json"
    ).is_file()


def test_a_tflite_has_a_serving_default_signature_that_answers_as_keras(run, exported):
    """LiteRT's signature runner, as apps call a .tflite: ``serving_default`` takes ``pixels`` (0-255)
    and gives the Keras model's probabilities."""
    from ai_edge_litert.interpreter import Interpreter

    from scenecls.classifier import load_model

    interpreter = Interpreter(str(exported["tflite"]))
    assert interpreter.get_signature_list() == {
        "serving_default": {"inputs": ["pixels"], "outputs": ["output_0"]}
    }
    pixels = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    (probabilities,) = interpreter.get_signature_runner("serving_default")(pixels=pixels).values()
    expected = load_model(run / "best.keras").predict(pixels, verbose=0)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_savedmodel_serves_encoded_jpeg_and_png_bytes(run, exported):
    import tensorflow as tf

    from scenecls.classifier import load_model

    served = tf.saved_model.load(str(exported["savedmodel"]))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    encoded = []
    for image, fmt in zip(pixels, ("PNG", "JPEG"), strict=True):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=fmt, quality=100)
        encoded.append(buffer.getvalue())
    out = served.signatures["serving_default"](image_bytes=tf.constant(encoded))
    keras = load_model(run / "best.keras")
    expected = np.asarray(keras(pixels.astype(np.float32)))
    probabilities = out["probabilities"].numpy()
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities[0], expected[0], atol=1e-5)  # PNG: the very same pixels
    np.testing.assert_allclose(probabilities[1], expected[1], atol=0.05)  # JPEG: lossy, close
    classes = json.loads((run / "labels.json").read_text())["classes"]
    ids = out["class_ids"].numpy().tolist()
    assert [n.decode() for n in out["class_names"].numpy()] == [classes[i] for i in ids]
    raw = served.signatures["serve_pixels"](pixels=tf.constant(pixels.astype(np.float32)))
    np.testing.assert_allclose(raw["probabilities"].numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("fmt", ["tflite", "onnx", "openvino"])
def test_exported_predict_imports_no_tensorflow(run, exported, fmt):
    image = next((run.parent.parent / "data").rglob("*.jpg"))
    code, stdout, imported = predict_in_a_fresh_process(str(image), "--model", str(exported[fmt]))
    assert code == 0 and json.loads(stdout)[0]["label"], stdout
    assert imported == {"tensorflow": False, "keras": False}


def test_evaluate_an_exported_model(run, exported):
    data = run.parent.parent / "data"
    result = invoke("evaluate", str(exported["tflite"]), "--data", str(data), "--format", "json")
    assert result.exit_code == 0, result.output
    keras = invoke("evaluate", str(run), "--data", str(data), "--format", "json")
    assert json.loads(result.stdout)["accuracy"] == pytest.approx(json.loads(keras.stdout)["accuracy"])
    assert (run / "evaluation.best.tflite.json").is_file() and (run / "evaluation.json").is_file()


def test_an_openvino_export_is_a_checked_folder_and_a_changed_one_is_refused(run, exported, tmp_path):
    folder = exported["openvino"]
    assert folder.name == "best_openvino" and folder.parent == run
    assert {p.name for p in folder.iterdir()} >= {"model.xml", "model.bin", "labels.txt", "metadata.json"}
    image = next((run.parent.parent / "data").rglob("*.jpg"))
    # Its graph file alone names the model too, and evaluate finds its run from it.
    by_graph = invoke("predict", str(image), "--model", str(folder / "model.xml"), "--format", "json")
    by_folder = invoke("predict", str(image), "--model", str(folder), "--format", "json")
    assert json.loads(by_graph.stdout) == json.loads(by_folder.stdout)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    weights = bytearray((copy / "model.bin").read_bytes())
    weights[100] ^= 0xFF
    (copy / "model.bin").write_bytes(bytes(weights))
    result = invoke("predict", str(image), "--model", str(copy))
    assert result.exit_code == 1 and "model.bin" in one_error_line(result)
    (copy / "model.bin").unlink()
    result = invoke("predict", str(image), "--model", str(copy))
    assert "an OpenVINO model is its .xml and .bin together" in one_error_line(result)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "model.xml").write_text("<net>not really</net>")
    (damaged / "model.bin").write_bytes(b"\x00" * 64)
    result = invoke("predict", str(image), "--model", str(damaged))
    assert result.exit_code == 1 and "cannot load" in one_error_line(result)


@pytest.mark.parametrize("suffix", [".tflite", ".onnx"])
def test_damaged_exported_files_are_one_line_errors(run, tmp_path, suffix):
    bad = tmp_path / f"model{suffix}"
    bad.write_bytes(b"\x00 not a model at all" * 10)
    image = next((run.parent.parent / "data").rglob("*.jpg"))
    result = invoke("predict", str(image), "--model", str(bad))
    assert result.exit_code == 1
    assert "cannot load" in one_error_line(result)


def test_labels_that_do_not_fit_an_exported_model_are_refused(run, exported, tmp_path):
    copy = tmp_path / "model.tflite"
    copy.write_bytes(exported["tflite"].read_bytes())
    (tmp_path / "labels.txt").write_text("one\ntwo\n")
    image = next((run.parent.parent / "data").rglob("*.jpg"))
    result = invoke("predict", str(image), "--model", str(copy))
    assert result.exit_code == 1
    assert "labels name 2" in one_error_line(result)


def test_export_refuses_to_overwrite_something_else(run, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    result = invoke("export", str(run), "--format", "savedmodel", "--output", str(folder), "--parity", "0")
    assert result.exit_code == 2
    assert "not a SavedModel" in one_error_line(result)
    assert (folder / "notes.txt").read_text() == "keep me"


def test_failed_parity_check_exits_1_and_keeps_the_file(run, tmp_path, monkeypatch):
    from scenecls import export

    monkeypatch.setitem(export.THRESHOLDS, "tflite", 1.01)  # no export can agree more than always
    target = tmp_path / "strict.tflite"
    result = invoke("export", str(run), "--format", "tflite", "--output", str(target))
    assert result.exit_code == 1
    assert "disagrees" in one_error_line(result)
    assert target.is_file()


def test_tta_averages_each_image_with_its_mirror_image(run, exported):
    from scenecls.runtimes import FlipAveraged, load_runtime

    runtime = load_runtime(exported["tflite"])
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    expected = (runtime.predict(images) + runtime.predict(images[:, :, ::-1, :].copy())) / 2
    np.testing.assert_allclose(FlipAveraged(runtime).predict(images), expected, atol=1e-6)
    symmetric = (images + images[:, :, ::-1, :]) / 2  # its own mirror image: TTA changes nothing
    np.testing.assert_allclose(
        FlipAveraged(runtime).predict(symmetric), runtime.predict(symmetric), atol=1e-5
    )
    data = run.parent.parent / "data"
    plain = invoke("evaluate", str(exported["tflite"]), "--data", str(data), "--format", "json")
    tta = invoke("evaluate", str(exported["tflite"]), "--data", str(data), "--tta", "--format", "json")
    assert plain.exit_code == tta.exit_code == 0, tta.output
    assert (run / "evaluation.best.tflite.tta.json").is_file()
    image = next(data.rglob("*.jpg"))
    flipped = invoke("predict", str(image), "--model", str(exported["tflite"]), "--tta", "--format", "json")
    assert flipped.exit_code == 0 and json.loads(flipped.stdout)[0]["label"]


# ------------------------------------------------------------- what --output may replace (never a user's)


def test_a_folder_holding_a_saved_model_pb_of_a_user_is_not_replaced(run, tmp_path):
    """A folder with a ``saved_model.pb`` (even empty) that this tool did not export is refused whole."""
    folder = tmp_path / "project"
    folder.mkdir()
    for name, text in {"saved_model.pb": "", "train.py": "print(1)", "NOTES.md": "mine"}.items():
        (folder / name).write_text(text)
    result = invoke("export", str(run), "--format", "savedmodel", "--output", str(folder), "--parity", "0")
    assert result.exit_code == 2
    assert "not a SavedModel folder that scenecls exported" in one_error_line(result)
    assert sorted(p.name for p in folder.iterdir()) == ["NOTES.md", "saved_model.pb", "train.py"]


def test_a_users_tflite_file_and_side_files_are_not_overwritten(run, tmp_path):
    """``--output x.tflite`` replaces only an export of ours; ``labels.txt`` and ``x.tflite.json`` of a
    user beside a new output are never written over; a file with the same class names is fine."""
    users = tmp_path / "users.tflite"
    users.write_bytes(b"my own model")
    result = invoke("export", str(run), "--format", "tflite", "--output", str(users), "--parity", "0")
    assert result.exit_code == 2 and "not a .tflite file that scenecls exported" in one_error_line(result)
    assert users.read_bytes() == b"my own model"

    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    result = invoke("export", str(run), "--format", "tflite", "--output", str(tmp_path / "new.tflite"))
    assert result.exit_code == 2 and "labels.txt exists with other class names" in one_error_line(result)
    assert (tmp_path / "labels.txt").read_text() == "cat\ndog\n" and not (tmp_path / "new.tflite").exists()

    side = tmp_path / "other"
    side.mkdir()
    (side / "new.tflite.json").write_text('{"mine": true}')
    result = invoke("export", str(run), "--format", "tflite", "--output", str(side / "new.tflite"))
    assert result.exit_code == 2 and "did not write it" in one_error_line(result)
    assert (side / "new.tflite.json").read_text() == '{"mine": true}'

    same = tmp_path / "same"
    same.mkdir()
    (same / "labels.txt").write_text((run / "labels.txt").read_text())
    result = invoke(
        "export", str(run), "--format", "tflite", "--output", str(same / "m.tflite"), "--parity", "0"
    )
    assert result.exit_code == 0, result.output


def test_an_export_of_ours_is_replaced_and_its_labels_rewritten(run, tmp_path):
    """Exporting twice to one path replaces the first export (file and folder); the labels.txt the
    first wrote may be rewritten by the second."""
    for fmt, name in (("tflite", "m.tflite"), ("savedmodel", "m_savedmodel")):
        target = tmp_path / name
        for _ in range(2):
            result = invoke("export", str(run), "--format", fmt, "--output", str(target), "--parity", "0")
            assert result.exit_code == 0, result.output
        meta = json.loads(
            ((target / "metadata.json") if fmt == "savedmodel" else Path(f"{target}.json")).read_text()
        )
        assert meta["written_by"] == "scenecls export"
    (tmp_path / "labels.txt").write_text("changed by hand\n")  # no longer what our export recorded
    result = invoke("export", str(run), "--format", "tflite", "--output", str(tmp_path / "m.tflite"))
    assert result.exit_code == 2 and "labels.txt exists" in one_error_line(result)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_links_and_files_in_the_way_of_output_are_one_line_refusals(run, tmp_path):
    real = tmp_path / "real_savedmodel"
    assert (
        invoke("export", str(run), "--format", "savedmodel", "--output", str(real), "--parity", "0").exit_code
        == 0
    )
    link = tmp_path / "link_sm"
    link.symlink_to(real)
    result = invoke("export", str(run), "--format", "savedmodel", "--output", str(link), "--parity", "0")
    assert result.exit_code == 2 and "is a link" in one_error_line(result)
    assert link.is_symlink() and (real / "saved_model.pb").is_file()
    (tmp_path / "afile").write_text("x")
    result = invoke(
        "export", str(run), "--format", "tflite", "--output", str(tmp_path / "afile" / "m.tflite")
    )
    assert result.exit_code == 2 and "is a file, not a folder" in one_error_line(result)


def test_staging_of_a_killed_export_is_removed_by_the_next(run, tmp_path):
    from scenecls import files

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    abandoned = tmp_path / f".m.tflite.{files.host_name()}-{int(done.stdout)}.export"
    abandoned.mkdir()
    (abandoned / files.STAGING_MARKER).write_text("")
    users = tmp_path / ".m.tflite.backup"
    users.mkdir()
    result = invoke(
        "export", str(run), "--format", "tflite", "--output", str(tmp_path / "m.tflite"), "--parity", "0"
    )
    assert result.exit_code == 0, result.output
    assert not abandoned.exists() and users.is_dir()


def _flip_bytes(path: Path, count: int = 20) -> None:
    """Change ``count`` bytes in the middle of ``path``: still a file of the same size and kind."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0x5A
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as fresh as it was


def test_every_model_file_records_its_checksum_when_written(run, exported):
    from scenecls.checksums import checksum_path, file_sha256, recorded_checksum

    for path in (
        run / "best.keras",
        run / "last.keras",
        run / "best.tflite",
        exported["tflite"],
        exported["onnx"],
    ):
        assert recorded_checksum(path) == file_sha256(path), path
        assert (
            checksum_path(path).read_text() == f"{file_sha256(path)}  {path.name}\n"
        )  # sha256sum -c reads it


def test_a_changed_best_tflite_is_passed_over_for_best_keras_with_one_warning(run, tmp_path):
    copy = tmp_path / "runs" / run.name
    shutil.copytree(run, copy)
    _flip_bytes(copy / "best.tflite")
    image = next((run.parent.parent / "data").rglob("*.jpg"))
    result = invoke("predict", str(image), "--project", str(copy.parent), "--format", "json")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "SHA-256" in line]
    assert len(warnings) == 1 and "best.tflite" in warnings[0] and "using best.keras" in warnings[0]
    keras = invoke("predict", str(image), "--project", str(run.parent), "--keras", "--format", "json")
    assert json.loads(result.stdout)[0]["confidence"] == pytest.approx(
        json.loads(keras.stdout)[0]["confidence"]
    )
    named = invoke("predict", str(image), "--model", str(copy / "best.tflite"))
    assert named.exit_code == 1 and "SHA-256 differs" in one_error_line(named)


def test_a_changed_best_keras_is_refused(run, tmp_path):
    copy = tmp_path / "runs" / run.name
    shutil.copytree(run, copy)
    _flip_bytes(copy / "best.keras")
    image = next((run.parent.parent / "data").rglob("*.jpg"))
    result = invoke("predict", str(image), "--project", str(copy.parent), "--keras")
    assert result.exit_code == 1
    assert "not the file scenecls wrote" in one_error_line(result)


def test_no_foreign_lines_leak_from_an_int8_export_evaluate_or_predict(run, tmp_path):
    """Each command in a process of its own, as a user runs it: stdout holds only the result, and
    stderr only scenecls's own lines."""
    image = next(Path(json.loads((run / "config.json").read_text())["data"]).rglob("*.jpg"))
    commands = [
        ["export", str(run), "--to", "tflite", "--quantize", "int8", "--representative-images", "8",
         "--parity", "0", "--output", str(tmp_path / "int8.tflite"), "--format", "json"],
        ["evaluate", str(run), "--format", "json"],
        ["predict", str(image), "--model", str(run / "best.keras"), "--format", "json"],
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    for args in commands:
        done = subprocess.run(
            [sys.executable, "-m", "scenecls", *args], capture_output=True, text=True, timeout=300, env=env
        )
        assert done.returncode == 0, (args[0], done.stderr[-2000:])
        json.loads(done.stdout)  # nothing but the result on stdout
        leaked = foreign_lines(done.stderr)
        assert not leaked, (args[0], leaked)


def _other_commands(group: str, run: Path, tmp_path: Path) -> list[list[str]]:
    """The commands of one group: those that make runs, those that read a finished one (a copy of the
    module's, which they write into), those that need no run."""
    data = run.parent.parent / "data"
    project = tmp_path / "runs"
    if group == "making runs":
        fresh, child = str(project / "fresh"), str(project / "child")
        return [
            ["train", "--data", str(data), *TINY, "--no-export", "--project", str(project), "--epochs", "1",
             "--finetune-epochs", "1", "--unfreeze", "1", "--name", "fresh"],
            ["finetune", fresh, "--finetune-epochs", "1", "--unfreeze", "2", "--no-export", "--project",
             str(project), "--name", "child"],
            ["ensemble", fresh, child, "--project", str(project), "--name", "both"],
            ["lr-find", "--run", fresh, "--steps", "10", "--format", "json"],
        ]  # fmt: skip
    if group == "reading a run":
        copy = str(shutil.copytree(run, project / run.name))
        unlabelled = tmp_path / "unlabelled"
        unlabelled.mkdir()
        rng = np.random.default_rng(5)
        for number in range(4):  # noise: unlike the labelled scenes, so none is left out as a copy of one
            pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(unlabelled / f"{number}.jpg")
        return [
            ["calibrate", copy],
            ["plot", copy],
            ["report", copy],
            ["explain", copy, str(next(data.rglob("*.jpg"))), "--format", "json"],
            ["suggest", copy, str(unlabelled), "--budget", "2", "--output", str(tmp_path / "suggested"),
             "--format", "json"],
        ]  # fmt: skip
    return [
        ["sweep", "--data", str(data), "--backbones", "mobilenet_v2", *TINY[2:], "--dense", "0,1",
         "--dry-run", "--project", str(project)],
        ["inspect", str(data), *TINY, "--output", str(tmp_path / "inspect"), "--format", "json"],
        ["cache", "--format", "json"],
        ["backbones", "--format", "json"],
        ["fetch-data", "--from", str(data), "--dest", str(tmp_path / "copy"), "--format", "json"],
    ]  # fmt: skip


@pytest.mark.slow  # each command in a process of its own
@pytest.mark.parametrize("group", ["making runs", "reading a run", "without a run"])
def test_no_foreign_lines_leak_from_any_other_command(run, tmp_path, group):
    """Every other command that imports TensorFlow (or might), as a user runs it: stderr holds only
    scenecls's own lines. In three groups, which can run side by side."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    for args in _other_commands(group, run, tmp_path):
        done = subprocess.run(
            [sys.executable, "-m", "scenecls", *args], capture_output=True, text=True, timeout=300, env=env,
            cwd=tmp_path,  # whatever a command writes beside it stays in the test's folder
        )  # fmt: skip
        assert done.returncode == 0, (args[0], done.stderr[-2000:])
        leaked = foreign_lines(done.stderr)
        assert not leaked, (args[0], leaked)
