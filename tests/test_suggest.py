"""``scenecls suggest``: the unlabelled images to label next, chosen for the model's doubt and for being
unlike what is labelled and each other; copies of labelled images never; the unlabelled folder only read."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scenecls.errors import UsageError
from scenecls.suggest import choose, copies_of_labelled, hash_lookalikes, suggest
from tests.conftest import file_snapshot, invoke, one_error_line, tiny, write_class_folders, write_train_test


def test_choose_takes_doubtful_images_from_different_places_not_one_cluster_twice():
    # Six doubtful images: four nearly the same (one cluster), one elsewhere, one near a labelled image;
    # two confident ones far from everything.
    features = np.array([[1, 0, 0], [1, 0.01, 0], [1, 0, 0.01], [1, 0.01, 0.01], [0, 1, 0], [0, 0, 1],
                         [0.7, 0.7, 0], [0.7, 0, 0.7]], dtype=np.float32)  # fmt: skip
    doubtful, sure = [0.5, 0.45, 0.05], [0.98, 0.01, 0.01]
    probabilities = np.array([doubtful] * 6 + [sure] * 2, dtype=np.float32)
    labelled = np.array([[0, 0, 1]], dtype=np.float32)  # image 5 is a labelled one's twin
    picked = choose(probabilities, features, labelled, 2, pool_factor=3)
    assert len(picked) == 2 and 4 in picked
    assert 5 not in picked and 6 not in picked and 7 not in picked  # near a labelled one; sure ones
    assert len(set(picked) & {0, 1, 2, 3}) == 1  # one of the cluster, not two


def test_the_uncertain_strategy_takes_the_smallest_margins_first_whatever_their_features():
    # Margins 0.30, 0.10, 0.02, 0.20, 0.90: images 2 and 1 are the least sure, and twins in the features.
    features = np.array([[0, 1], [1, 0], [1, 0.001], [0.7, 0.7], [0, 1]], dtype=np.float32)
    probabilities = np.array([[0.65, 0.35], [0.55, 0.45], [0.51, 0.49], [0.6, 0.4], [0.95, 0.05]], np.float32)
    labelled = np.array([[0, 1]], dtype=np.float32)
    assert choose(probabilities, features, labelled, 3, strategy="uncertain") == [2, 1, 3]
    diverse = choose(probabilities, features, labelled, 2, pool_factor=2, strategy="diverse")
    assert len(set(diverse) & {1, 2}) == 1  # k-centre takes one of the twins, not both


def test_an_unknown_strategy_from_the_library_is_refused_before_anything_is_read_or_written(tmp_path):
    with pytest.raises(UsageError, match="--strategy nearest: choose one of diverse, uncertain"):
        suggest(tmp_path / "no-run", tmp_path, output=tmp_path / "out", strategy="nearest")
    assert not (tmp_path / "out").exists()


def test_copies_of_labelled_images_are_found_by_bytes_and_by_features(tmp_path):
    labelled = tmp_path / "labelled.jpg"
    labelled.write_bytes(b"\xff\xd8 the same picture")
    pool = [tmp_path / "copy.jpg", tmp_path / "other.jpg", tmp_path / "twin.jpg"]
    pool[0].write_bytes(labelled.read_bytes())
    pool[1].write_bytes(b"\xff\xd8 another picture!")  # the same size, other bytes
    pool[2].write_bytes(b"x")
    features = np.array([[1, 0], [0, 1], [0.999, 0.02]], dtype=np.float32)
    mask = copies_of_labelled(pool, features, [str(labelled)], np.array([[1.0, 0.0]], np.float32))
    assert mask.tolist() == [True, False, True]


def test_same_bytes_takes_digests_a_survey_already_computed_instead_of_reading_again(tmp_path):
    """suggest's survey reads each image's SHA-256 already: the same-bytes check uses it (a digest
    given is trusted, so a file whose given digest is a labelled one's counts as a copy)."""
    from scenecls.data.unlabelled import file_digest, same_bytes

    labelled, other = tmp_path / "labelled.jpg", tmp_path / "other.jpg"
    labelled.write_bytes(b"\xff\xd8 one picture")
    other.write_bytes(b"\xff\xd8 two picture")  # the same size, other bytes
    assert same_bytes([other], [str(labelled)]).tolist() == [False]
    known = {str(other): file_digest(str(labelled))}
    assert same_bytes([other], [str(labelled)], known).tolist() == [True]


def test_a_pool_asks_each_folder_once_whether_it_holds_our_output(tmp_path, monkeypatch):
    """Whether a folder is one of our output folders is asked per folder, not per image: the question
    lists the folder, so asked per image it grows with the square of a one-folder pool."""
    from scenecls import files
    from scenecls.data.unlabelled import pool_images

    for folder in ("a", "b", "b/sheet"):
        (tmp_path / folder).mkdir(parents=True)
        for number in range(4):
            Image.new("RGB", (8, 8)).save(tmp_path / folder / f"{number}.jpg")
    (tmp_path / "b" / "sheet" / ".scenecls-suggest").write_text("written by scenecls suggest\n")
    asked = []
    real = files.holds_our_output
    monkeypatch.setattr(files, "holds_our_output", lambda folder: asked.append(folder) or real(folder))
    found = pool_images(tmp_path, ["alpha", "beta"], [])
    assert sorted(asked) == sorted([tmp_path / "a", tmp_path / "b", tmp_path / "b" / "sheet"])
    assert [p.relative_to(tmp_path).parts[0] for p in found] == ["a"] * 4  # b holds our output folder


def test_a_lookalike_by_hash_is_a_copy_only_when_the_features_confirm_it(tmp_path):
    """A labelled image saved again is close in hash and features; calm seas share hashes but not
    features: the hash finds candidates, the features (from HASH_CONFIRMATION) decide."""
    labelled = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    pool = [tmp_path / f"{i}.jpg" for i in range(4)]
    for i, path in enumerate(pool):
        path.write_bytes(b"\xff\xd8" + bytes([i]))
    angle = np.arccos([0.95, 0.8, 0.95, 0.999])  # cosine with labelled image 0
    features = np.stack([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)
    lookalikes = hash_lookalikes([0b1011, 0b1011, None, 0xFF00], [0b1001, 0xFFFF])
    assert lookalikes == {0: [0], 1: [0]}  # 1 bit apart; 0xFF00 is 8 bits from 0xFFFF, None never alike
    mask = copies_of_labelled(pool, features, [], labelled, lookalikes=lookalikes)
    # 0: alike and confirmed; 1: alike, features too far; 2: no lookalike, 0.95 < 0.97; 3: features alone
    assert mask.tolist() == [True, False, False, True]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A tiny run whose features mean something: ConvNeXt-T, even with random weights, separates the
    generated scenes at 32 px (MobileNetV2's random features all but vanish, so every image would look
    a copy of every other)."""
    data = tmp_path_factory.mktemp("data")
    write_train_test(data, 10, 5)
    project = tmp_path_factory.mktemp("runs")
    recipe = tiny("--dense", "1", "--epochs", "3", "--finetune-epochs", "0", backbone="convnext_tiny")
    result = invoke("-q", "train", "--data", str(data), *recipe, "--project", str(project), "--name", "seen")
    assert result.exit_code == 0, result.output
    return project / "seen"


def collage(rng: np.random.Generator, size: int = 40) -> Image.Image:
    """An image unlike the generated scenes: rectangles of random colours."""
    pixels = np.zeros((size, size, 3), np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
    for _ in range(4):
        top, left = rng.integers(0, size - 8, 2)
        pixels[top : top + int(rng.integers(6, 20)), left : left + int(rng.integers(6, 20))] = rng.integers(
            0, 255, 3
        )
    return Image.fromarray(pixels)


@pytest.fixture
def pool(tmp_path, finished_run) -> Path:
    """Unlabelled images: 18 collages, one byte copy of a labelled image, one saved again, one unreadable
    file."""
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for i in range(18):
        collage(rng).save(folder / f"photo_{i:02d}.jpg", quality=92)
    data = Path(json.loads((finished_run / "config.json").read_text())["data"])
    labelled = sorted((data / "train").rglob("*.jpg"))
    shutil.copy(labelled[0], folder / "already_labelled.jpg")
    with Image.open(labelled[1]) as image:  # the same picture saved again: other bytes, the same hash
        image.save(folder / "saved_again.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not whole")
    return folder


@pytest.mark.slow
def test_suggest_writes_its_csv_sheet_and_class_folders_and_leaves_the_pool_alone(
    finished_run, pool, tmp_path
):
    before = file_snapshot(pool)
    output = tmp_path / "to-label"
    result = invoke("suggest", str(finished_run), str(pool), "--budget", "5", "--output", str(output),
                    "--format", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pool"] == 21 and report["unreadable"] == 1 and report["copies_of_labelled"] == 2
    chosen = report["suggestions"]
    assert [s["rank"] for s in chosen] == [1, 2, 3, 4, 5] and len({s["path"] for s in chosen}) == 5
    assert not any(
        Path(s["path"]).name in ("already_labelled.jpg", "saved_again.png", "broken.jpg") for s in chosen
    )
    classes = json.loads((finished_run / "labels.json").read_text())["classes"]
    for s in chosen:
        assert s["suggested"] in classes and 0 < s["confidence"] <= 1 and 0 <= s["margin"] <= 1
    with open(output / "suggestions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["path"] for row in rows] == [s["path"] for s in chosen]
    assert (output / "suggestions.png").stat().st_size > 1000
    links = sorted(p for p in output.rglob("*.jpg"))
    assert len(links) == 5 and all(p.is_symlink() for p in links)
    assert {os.path.realpath(p) for p in links} == {str(Path(s["path"]).resolve()) for s in chosen}
    for link in links:
        assert link.parent.name in classes and link.name.split("-", 1)[1] == Path(os.path.realpath(link)).name
    assert "1 of the unlabelled images could not be read" in result.stderr
    assert file_snapshot(pool) == before

    # Again, with copies: its own folder is replaced whole; the pool is still untouched.
    result = invoke("-q", "suggest", str(finished_run), str(pool), "--budget", "3", "--output", str(output),
                    "--copy", "--format", "csv")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "rank,path,suggested,confidence,margin"
    files = sorted(p for p in output.rglob("*.jpg"))
    assert len(files) == 3 and not any(p.is_symlink() for p in files)
    assert file_snapshot(pool) == before

    # By uncertainty alone: every image that may be suggested, least sure first; a budget takes the front.
    def uncertain(budget: int) -> dict:
        output = tmp_path / f"uncertain-{budget}"
        result = invoke("-q", "suggest", str(finished_run), str(pool), "--budget", str(budget), "--strategy",
                        "uncertain", "--output", str(output), "--format", "json")  # fmt: skip
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    everything, front = uncertain(18), uncertain(4)
    assert everything["strategy"] == front["strategy"] == "uncertain" and report["strategy"] == "diverse"
    margins = [s["margin"] for s in everything["suggestions"]]
    assert len(margins) == 18 and margins == sorted(margins)
    assert [s["path"] for s in front["suggestions"]] == [s["path"] for s in everything["suggestions"][:4]]
    assert file_snapshot(pool) == before


@pytest.mark.slow
def test_a_copy_saved_again_is_found_by_its_hash_when_the_features_alone_would_not_say(
    finished_run, pool, tmp_path, monkeypatch
):
    """With the features-alone rule out of reach, the picture saved as PNG is still left out: its hash
    matches a labelled image's and the features confirm it (past the unreadable file, which shifts the
    rows the features come in)."""
    import functools

    from scenecls import suggest

    monkeypatch.setattr(
        suggest, "copies_of_labelled", functools.partial(suggest.copies_of_labelled, threshold=1.01)
    )
    result = invoke("suggest", str(finished_run), str(pool), "--budget", "5", "--output",
                    str(tmp_path / "out"), "--format", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["copies_of_labelled"] == 2 and report["unreadable"] == 1
    assert "saved_again.png" not in {Path(s["path"]).name for s in report["suggestions"]}


def test_bad_input_is_one_line_exit_2_and_nothing_written(finished_run, pool, tmp_path):
    data = Path(json.loads((finished_run / "config.json").read_text())["data"])
    empty = tmp_path / "empty"
    empty.mkdir()
    laid_out = write_class_folders(tmp_path / "laid-out", 2, seed=3, size=40)
    unfinished = shutil.copytree(finished_run, tmp_path / "unfinished")
    state = json.loads((unfinished / "state.json").read_text())
    (unfinished / "state.json").write_text(json.dumps({**state, "status": "interrupted"}))
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    cases = [
        ([str(finished_run), str(empty)], "holds no images"),
        ([str(finished_run), str(data)], "holds labelled images"),
        ([str(finished_run), str(data / "train")], "holds labelled images"),
        ([str(finished_run), str(laid_out)], "is laid out in class folders"),
        (
            [str(finished_run), str(pool), "--budget", "500"],
            "is more than the 21 unlabelled images there are",
        ),
        ([str(unfinished), str(pool)], "has not finished training (interrupted)"),
        (
            [str(finished_run), str(pool), "--budget", "3", "--output", str(pool / "out")],
            "which is only read",
        ),
    ]
    for args, message in cases:
        output = tmp_path / "never"
        result = invoke("suggest", *args, *([] if "--output" in args else ["--output", str(output)]))
        assert result.exit_code == 2, (args, result.output)
        assert message in one_error_line(result), (args, result.stderr)
        assert not output.exists()
    result = invoke("suggest", str(finished_run), str(pool), "--budget", "3", "--output", str(users))
    assert result.exit_code == 2 and "did not write" in one_error_line(result)
    assert sorted(p.name for p in users.iterdir()) == ["notes.txt"]
    assert not (pool / "out").exists()
