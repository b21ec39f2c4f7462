"""``predict`` on videos (encoded here with PyAV: two scenes and a known cut) and on image URLs (served on
127.0.0.1): rows per sampled frame, scene segments, damaged files, limits on what a URL may send."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scenecls.data.images import ImageReadError
from scenecls.data.remote import fetch_image_bytes
from scenecls.video import Sample, segments
from tests.conftest import foreign_lines, invoke, one_error_line

FPS = 10


def encode(path: Path, scenes: list[tuple[np.ndarray, float]]) -> Path:
    """A video of ``scenes`` (a still frame shown for so many seconds each), at high quality."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height = scenes[0][0].shape[1], scenes[0][0].shape[0]
        stream.pix_fmt, stream.bit_rate = "yuv420p", 4_000_000
        for pixels, seconds in scenes:
            for _ in range(round(seconds * FPS)):
                for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


COLOURS = ("red", "green", "blue")


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory) -> Path:
    """A LiteRT model that answers a frame's dominant colour (red, green or blue), with its labels.txt:
    a classifier whose right answers are known for any frame, so that the cut is checked exactly."""
    import keras
    import tensorflow as tf

    inputs = keras.Input((32, 32, 3))
    mean = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", use_bias=False, name="colour")(mean)
    model = keras.Model(inputs, outputs)
    model.get_layer("colour").set_weights([np.eye(3, dtype=np.float32) / 20])
    folder = tmp_path_factory.mktemp("colour")
    (folder / "colour.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    (folder / "labels.txt").write_text("".join(f"{name}\n" for name in COLOURS))
    return folder / "colour.tflite"


def still(colour: str, size: int = 48) -> np.ndarray:
    """A frame mostly of one colour, with some texture."""
    pixels = np.random.default_rng(COLOURS.index(colour)).integers(0, 60, (size, size, 3)).astype(np.uint8)
    pixels[..., COLOURS.index(colour)] += 180
    return pixels


@pytest.fixture(scope="module")
def two_scenes() -> tuple[dict, dict]:
    return {"pixels": still("red"), "label": "red"}, {"pixels": still("blue"), "label": "blue"}


def predict_json(*args: str):
    result = invoke("-q", "predict", *args, "--format", "json")
    return result, json.loads(result.stdout) if result.stdout.strip() else None


@pytest.mark.slow
def test_frames_are_sampled_and_the_scenes_cut_where_the_video_cuts(colour_model, two_scenes, tmp_path):
    a, b = two_scenes
    video = encode(tmp_path / "drive.mkv", [(a["pixels"], 3.0), (b["pixels"], 3.0)])
    result, rows = predict_json(str(video), "--model", str(colour_model))
    assert result.exit_code == 0, result.output
    assert [row["time"] for row in rows] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert [row["label"] for row in rows] == [a["label"]] * 3 + [b["label"]] * 3
    assert all(row["path"] == str(video) and row["error"] is None for row in rows)

    result, rows = predict_json(str(video), "--model", str(colour_model), "--every", "0.5")
    assert [row["time"] for row in rows] == [i / 2 for i in range(12)]

    result, found = predict_json(str(video), "--model", str(colour_model), "--segments")
    assert result.exit_code == 0
    assert [(s["start"], s["end"], s["label"], s["samples"]) for s in found] == [
        (0.0, 3.0, a["label"], 3),
        (3.0, 6.0, b["label"], 3),
    ]
    assert all(0 < s["confidence"] <= 1 for s in found)
    # CSV: a time column beside each image's columns; an image among videos has none.
    result = invoke("-q", "predict", str(video), "--model", str(colour_model), "--format", "csv")
    assert result.stdout.splitlines()[0] == "path,time,label,confidence,error"
    assert result.stdout.splitlines()[4].startswith(f"{video},3.0,{b['label']},")


@pytest.mark.slow
def test_a_damaged_video_gives_the_rows_it_could_read_one_error_and_exit_3(
    colour_model, two_scenes, tmp_path
):
    a, b = two_scenes
    whole = encode(tmp_path / "whole.mkv", [(a["pixels"], 3.0), (b["pixels"], 3.0)])
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    result, rows = predict_json(str(cut), "--model", str(colour_model))
    assert result.exit_code == 3
    readable, damaged = rows[:-1], rows[-1]
    assert readable and all(row["error"] is None for row in readable)
    assert [row["label"] for row in readable] == [a["label"]] * len(readable)
    assert damaged["error"].startswith("truncated: its frames end at") and damaged["label"] is None
    result = invoke("predict", str(cut), "--model", str(colour_model), "--format", "csv")
    assert result.exit_code == 3 and "Traceback" not in result.output
    assert "Warning: 1 of 1 input could be classified only up to a damaged part" in result.stderr

    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    result, rows = predict_json(str(text), "--model", str(colour_model))
    assert result.exit_code == 4 and len(rows) == 1
    assert rows[0]["error"] == "not a readable video (invalid data)"

    result = invoke("-q", "predict", str(text), str(whole), "--model", str(colour_model), "--segments")
    assert result.exit_code == 3
    result = invoke("predict", str(whole), "photo.jpg", "--model", str(colour_model), "--segments")
    assert result.exit_code == 2 and "--segments takes videos only" in result.stderr


@pytest.mark.slow
def test_no_foreign_lines_leak_from_predict_on_a_whole_or_a_damaged_video(colour_model, two_scenes, tmp_path):
    """As a user runs it, in a process of its own: LiteRT's delegate line and FFmpeg's complaints about
    a damaged file stay out of stderr, which holds only scenecls's own lines."""
    a, b = two_scenes
    whole = encode(tmp_path / "whole.mkv", [(a["pixels"], 2.0), (b["pixels"], 2.0)])
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), env.get("PYTHONPATH")]))
    for video, code in ((whole, 0), (cut, 3)):
        done = subprocess.run(
            [sys.executable, "-m", "scenecls", "predict", str(video), "--model", str(colour_model),
             "--segments", "--format", "json"],
            capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == code, done.stderr[-2000:]
        json.loads(done.stdout)  # nothing but the result on stdout
        assert not foreign_lines(done.stderr), (video.name, done.stderr)


def test_segments_vote_away_a_lone_frame_and_keep_a_real_scene():
    def samples(labels: str) -> list[Sample]:
        return [Sample("v.mp4", float(i), label, 0.9, [(label, 0.9)], scores={label: 0.9})
                for i, label in enumerate(labels)]  # fmt: skip

    found = segments(samples("AABAABBBB"), every=1.0, smooth=3)
    assert [(s.start, s.end, s.label, s.samples) for s in found] == [(0.0, 5.0, "A", 5), (5.0, 9.0, "B", 4)]
    found = segments(samples("AABAA"), every=1.0, smooth=1, end=4.6)
    assert [(s.start, s.end, s.label) for s in found] == [(0.0, 2.0, "A"), (2.0, 3.0, "B"), (3.0, 4.6, "A")]
    errors = [Sample("v.mp4", 0.0, error="not a readable video")]
    assert segments(errors, every=1.0) == []


def test_without_pyav_a_video_names_the_extra(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 100)
    code = "import sys; sys.modules['av'] = None; from scenecls.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", code, "predict", str(video), "--project", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == "Error: predicting on videos needs PyAV: pip install 'scenecls[video]'"


# ------------------------------------------------------------------------------------------------ URLs
def test_a_url_gives_its_image_and_refuses_pages_giants_and_errors(http_server):
    base, state = http_server
    photo = (Path(__file__).parent / "conftest.py").read_bytes()  # any bytes: the check is the caller's
    state.files["/photo.jpg"], state.content_type["/photo.jpg"] = photo, "image/jpeg"
    assert fetch_image_bytes(base + "/photo.jpg") == photo
    state.files["/page"], state.content_type["/page"] = b"<html></html>", "text/html; charset=utf-8"
    with pytest.raises(ImageReadError, match="not an image: the server sent text/html"):
        fetch_image_bytes(base + "/page")
    state.endless["/huge.jpg"] = 2_000_000_000
    with pytest.raises(
        ImageReadError, match=r"too large: 2,000,000,000 bytes, over the 20,000,000-byte limit"
    ):
        fetch_image_bytes(base + "/huge.jpg")
    state.endless["/stream.jpg"] = 0  # no declared length: cut off once past the limit
    with pytest.raises(ImageReadError, match="too large: over the 1,000,000-byte limit"):
        fetch_image_bytes(base + "/stream.jpg", max_bytes=1_000_000)
    with pytest.raises(ImageReadError, match="HTTP 404"):
        fetch_image_bytes(base + "/missing.jpg")


@pytest.mark.slow
def test_predict_takes_urls_beside_files_one_row_each(colour_model, http_server, tmp_path):
    from PIL import Image

    base, state = http_server
    photo = tmp_path / "green.png"
    Image.fromarray(still("green")).save(photo)
    state.files["/a.jpg"], state.content_type["/a.jpg"] = photo.read_bytes(), "image/jpeg"
    state.files["/index.html"], state.content_type["/index.html"] = b"<html/>", "text/html"
    result, rows = predict_json(
        base + "/a.jpg", str(photo), base + "/index.html", "--model", str(colour_model)
    )
    assert result.exit_code == 3
    assert [row["path"] for row in rows] == [base + "/a.jpg", str(photo), base + "/index.html"]
    assert rows[0]["label"] == rows[1]["label"] and rows[0]["confidence"] == pytest.approx(
        rows[1]["confidence"]
    )
    assert rows[2]["error"] == "not an image: the server sent text/html"


def test_labels_that_name_another_number_of_classes_are_one_line(colour_model, tmp_path):
    import shutil

    model = Path(shutil.copy(colour_model, tmp_path / "colour.tflite"))
    (tmp_path / "labels.txt").write_text("red\ngreen\n")
    photo = tmp_path / "red.png"
    from PIL import Image

    Image.fromarray(still("red")).save(photo)
    result = invoke("predict", str(photo), "--model", str(model))
    assert result.exit_code == 1
    assert "predicts 3 classes but its labels name 2" in one_error_line(result)
