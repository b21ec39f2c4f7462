"""CSV data sets of image_name,label: recognised beside their images, their labels read as the seed read
them, their bad rows refused with their line."""

from __future__ import annotations

from pathlib import Path

import pytest

from scenecls.errors import DataError
from tests.conftest import write_class_folders

# ---------------------------------------------------------------------------------------- CSV


@pytest.fixture
def csv_set(tmp_path) -> Path:
    """``train.csv`` beside ``images/`` holding 0.jpg ... 5.jpg."""
    source = write_class_folders(tmp_path / "src", 1, size=8, classes=tuple("abcdef"))
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    for number, name in enumerate("abcdef"):
        next((source / name).iterdir()).rename(root / "images" / f"{number}.jpg")
    return root


def write_csv(root: Path, rows: list[str]) -> Path:
    path = root / "train.csv"
    path.write_text("image_name,label\n" + "\n".join(rows) + "\n")
    return path


def test_csv_folder_with_an_images_folder_is_recognised(csv_set):
    from scenecls.data.layout import INTEL_CLASSES, index_dataset

    write_csv(csv_set, [f"{n}.jpg,{n}" for n in range(6)])
    index = index_dataset(csv_set)
    assert index.layout == "csv" and index.classes == list(INTEL_CLASSES)


def test_csv_label_subsets_keep_the_intel_names(csv_set):
    from scenecls.data.layout import INTEL_CLASSES, index_dataset

    write_csv(csv_set, ["0.jpg,0", "2.jpg,2", "5.jpg,5"])
    index = index_dataset(csv_set)
    assert index.classes == list(INTEL_CLASSES)
    assert [INTEL_CLASSES[i] for i in index.splits["train"].labels] == ["buildings", "glacier", "street"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["0.jpg,0", "1.jpg,"], "train.csv:3: 1.jpg has an empty label"),
        (["0.jpg,0", "1.jpg,7x"], "train.csv:3: label '7x' is not a class number"),
        (["0.jpg,0", "../../../etc/passwd.jpg,1"], "lies outside"),
        (["0.jpg,0", "/etc/hosts.jpg,1"], "lies outside"),
    ],
)
def test_bad_csv_rows_are_refused_with_their_line(csv_set, rows, message):
    from scenecls.data.layout import index_dataset

    write_csv(csv_set, rows)
    with pytest.raises(DataError, match=message.replace(".", r"\.").replace("'", ".")):
        index_dataset(csv_set / "train.csv")
