"""Each supported data-set layout is recognised; anything else is a clear error."""

from __future__ import annotations

import io
import zipfile

import pytest

from scenecls.data.layout import INTEL_CLASSES, index_dataset
from scenecls.data.pipeline import prepare_data
from scenecls.errors import DataError
from tests.conftest import (
    RecordingReporter,
    file_snapshot,
    intel_like_zip,
    invoke,
    one_error_line,
    write_class_folders,
    write_train_test,
)


def test_class_folders(class_folders):
    index = index_dataset(class_folders)
    assert index.layout == "class-folders"
    assert index.classes == ["alpha", "beta", "gamma"]
    assert len(index.splits["train"]) == 30
    assert sorted(set(index.splits["train"].labels)) == [0, 1, 2]


def test_split_folders(split_dataset):
    (split_dataset / "pred").mkdir()
    index = index_dataset(split_dataset)
    assert index.layout == "splits"
    assert {k: len(v) for k, v in index.splits.items()} == {"train": 36, "val": 12, "test": 12}


def test_split_folder_with_unknown_class_is_refused(split_dataset):
    write_class_folders(split_dataset / "test", 1, classes=("delta",))
    with pytest.raises(DataError, match="delta"):
        index_dataset(split_dataset)


def test_csv_with_seed_numbering(tmp_path):
    images = write_class_folders(tmp_path / "src", 1, classes=tuple("abcdef"))
    folder = tmp_path / "set" / "train"
    folder.mkdir(parents=True)
    rows = ["image_name,label"]
    for label, name in enumerate("abcdef"):
        src = next((images / name).iterdir())
        src.rename(folder / f"{label}.jpg")
        rows.append(f"{label}.jpg,{label}")
    csv_path = tmp_path / "set" / "train.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    for target in (csv_path, csv_path.parent):
        index = index_dataset(target)
        assert index.layout == "csv"
        assert index.classes == list(INTEL_CLASSES)
        assert index.splits["train"].labels == [0, 1, 2, 3, 4, 5]


def test_csv_with_names_and_no_header(tmp_path):
    write_class_folders(tmp_path / "src", 2, classes=("x",))
    images = tmp_path / "images"
    (tmp_path / "src" / "x").rename(images)
    names = sorted(p.name for p in images.iterdir())
    (tmp_path / "labels.csv").write_text(f"{names[0]},cat\n{names[1]},dog\n")
    index = index_dataset(tmp_path / "labels.csv")
    assert index.classes == ["cat", "dog"] and index.splits["train"].labels == [0, 1]


def test_csv_whose_images_are_missing(tmp_path):
    (tmp_path / "labels.csv").write_text("image_name,label\nnope.jpg,1\n")
    with pytest.raises(DataError, match="cannot find the images"):
        index_dataset(tmp_path / "labels.csv")


@pytest.mark.parametrize("make", ["missing", "empty", "no-images", "file"])
def test_unrecognised_inputs(tmp_path, make):
    target = tmp_path / "data"
    if make == "empty":
        target.mkdir()
    elif make == "no-images":
        (target / "a").mkdir(parents=True)
        (target / "a" / "readme.txt").write_text("hi")
    elif make == "file":
        target.write_text("x")
    with pytest.raises(DataError):
        index_dataset(target)


def test_fingerprint_changes_with_files(class_folders):
    first = index_dataset(class_folders).fingerprint()
    assert index_dataset(class_folders).fingerprint() == first
    next((class_folders / "alpha").iterdir()).unlink()
    assert index_dataset(class_folders).fingerprint() != first


def test_kaggles_archive_unpacked_by_hand_is_read_as_its_splits_where_it_lies(tmp_path):
    """seg_train/seg_train/<class> and seg_test/seg_test/<class>, as the Intel archive unpacks: the
    training and test splits with the archive's classes, not two classes named seg_train and seg_test."""
    data = tmp_path / "intel"
    with zipfile.ZipFile(io.BytesIO(intel_like_zip(tmp_path))) as archive:
        archive.extractall(data)
    before = file_snapshot(data)
    index = index_dataset(data)
    assert index.layout == "splits"
    assert index.classes == ["alpha", "beta", "gamma"]
    assert {k: len(v) for k, v in index.splits.items()} == {"train": 9, "test": 6}
    assert all("/seg_test/seg_test/" in p for p in index.splits["test"].paths)
    assert index.warnings() == []
    assert file_snapshot(data) == before  # read where it lies: nothing moved or renamed


def test_a_split_folder_is_unwrapped_only_from_a_folder_of_its_own_name(tmp_path):
    write_class_folders(tmp_path / "a" / "train" / "train", 2)
    assert index_dataset(tmp_path / "a").classes == ["alpha", "beta", "gamma"]
    write_class_folders(tmp_path / "b" / "train" / "other", 2)  # a class called "other" with sub-folders
    index = index_dataset(tmp_path / "b")
    assert index.classes == ["other"]


def test_class_folders_that_hold_the_same_sub_folders_are_named_in_a_warning(tmp_path):
    for site in ("site_a", "site_b"):
        write_class_folders(tmp_path / "grouped" / site, 2, classes=("forest", "sea"))
    index = index_dataset(tmp_path / "grouped")
    assert index.classes == ["site_a", "site_b"]
    assert index.shared_subfolders == ["forest", "sea"]
    (warning,) = index.warnings()
    assert "site_a, site_b" in warning and "(forest, sea)" in warning

    reporter = RecordingReporter()
    prepare_data(tmp_path / "grouped", reporter=reporter, cache_root=tmp_path / "cache")
    assert reporter.warnings == [warning]

    # Sub-folders of other names, or one shared name per class (a "misc" folder), are classes' own.
    write_class_folders(tmp_path / "own" / "forest", 2, classes=("pines", "oaks"))
    write_class_folders(tmp_path / "own" / "sea", 2, classes=("calm", "misc"))
    write_class_folders(tmp_path / "own" / "street", 2, classes=("misc",))
    own = index_dataset(tmp_path / "own")
    assert own.classes == ["forest", "sea", "street"] and own.warnings() == []


def test_inspect_says_so_too(tmp_path):
    for site in ("site_a", "site_b"):
        write_class_folders(tmp_path / "grouped" / site, 2, classes=("forest", "sea"))
    result = invoke("inspect", str(tmp_path / "grouped"), "--no-features", "--output", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    assert "hold folders of the same names (forest, sea)" in " ".join(result.stderr.split())


def test_split_folders_are_found_whatever_the_case_of_their_names(tmp_path):
    write_class_folders(tmp_path / "set" / "Training", 3, seed=1)
    write_class_folders(tmp_path / "set" / "Testing", 2, seed=2)
    index = index_dataset(tmp_path / "set")
    assert index.layout == "splits" and index.classes == ["alpha", "beta", "gamma"]
    assert {k: len(v) for k, v in index.splits.items()} == {"train": 9, "test": 6}

    write_class_folders(tmp_path / "set" / "training", 1, seed=3)  # which one is meant?
    with pytest.raises(DataError, match="has both Training and training: keep one folder per split"):
        index_dataset(tmp_path / "set")


def test_a_lone_folder_around_a_data_set_is_read_through(tmp_path):
    write_class_folders(tmp_path / "outer" / "photos", 2)
    index = index_dataset(tmp_path / "outer")
    assert index.classes == ["alpha", "beta", "gamma"] and index.root == tmp_path / "outer" / "photos"
    assert index.identity() == index_dataset(tmp_path / "outer" / "photos").identity()

    write_train_test(tmp_path / "around" / "intel", 2, 1)
    assert set(index_dataset(tmp_path / "around").splits) == {"train", "test"}
    write_class_folders(tmp_path / "deep" / "archive" / "photos", 1)
    assert index_dataset(tmp_path / "deep").classes == ["alpha", "beta", "gamma"]

    # A lone class folder with images of its own, or with one class folder inside, stays one class.
    write_class_folders(tmp_path / "one" / "only", 2, classes=("inner",))
    assert index_dataset(tmp_path / "one").classes == ["only"]
    write_class_folders(tmp_path / "own", 2, classes=("only",))
    write_class_folders(tmp_path / "own" / "only", 1, classes=("alpha", "beta"))
    assert index_dataset(tmp_path / "own").classes == ["only"]


def test_an_archive_given_as_data_is_told_how_to_unpack(intel_zip, tmp_path):
    with pytest.raises(DataError, match=r"is an archive; .*scenecls fetch-data --from .* --dest FOLDER"):
        index_dataset(intel_zip)
    for command in ("train", "sweep"):  # before weights are looked for (xception's are not here)
        result = invoke(command, "--data", str(intel_zip), "--project", str(tmp_path / "runs"))
        assert result.exit_code != 0 and "is an archive" in one_error_line(result)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    result = invoke("inspect", str(intel_zip), "--output", str(tmp_path / "findings"))
    assert result.exit_code != 0 and "is an archive" in one_error_line(result)
    assert not (tmp_path / "findings").exists()
