"""Exclude lists that go too far are said, not trained on: a list that empties a class, the training split
or the whole set is refused; one that empties val/ says where validation comes from instead. Names that
are not UTF-8 or hold a newline are written and read back the same way."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from scenecls.data.exclude import read_exclude, write_exclude
from scenecls.data.pipeline import prepare_data
from scenecls.errors import DataError
from tests.conftest import RecordingReporter, write_class_folders


def _listing(tmp_path: Path, lines: list[str]) -> Path:
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def test_a_list_that_removes_every_training_image_of_a_class_is_refused(tmp_path):
    data = write_class_folders(tmp_path / "data", 4)
    listing = _listing(tmp_path, [f"alpha/alpha_{i:03d}.jpg" for i in range(4)])
    with pytest.raises(DataError, match="removed every training image of class alpha"):
        prepare_data(data, exclude=listing)


def test_a_list_that_removes_everything_says_so(tmp_path):
    data = write_class_folders(tmp_path / "data", 2)
    everything = [f"{c}/{c}_{i:03d}.jpg" for c in ("alpha", "beta", "gamma") for i in range(2)]
    with pytest.raises(DataError, match="removed every image of"):
        prepare_data(data, exclude=_listing(tmp_path, everything))


def test_a_list_that_empties_val_says_validation_is_split_off_train(tmp_path):
    root = tmp_path / "data"
    write_class_folders(root / "train", 6, seed=1)
    write_class_folders(root / "val", 1, seed=2)
    listing = _listing(tmp_path, [f"val/{c}/{c}_000.jpg" for c in ("alpha", "beta", "gamma")])
    reporter = RecordingReporter()
    prepared = prepare_data(root, exclude=listing, reporter=reporter)
    assert prepared.val_source == "split" and len(prepared.val)
    assert any("removed every image of the val/ folder" in w for w in reporter.warnings)


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse names that are not UTF-8")
def test_names_that_are_not_utf8_or_hold_a_newline_go_through_a_list_and_back(tmp_path):
    data = write_class_folders(tmp_path / "data", 3)
    odd = [os.fsdecode(b"caf\xe9.jpg"), "two\nlines.jpg", "back\\slash.jpg"]
    source = data / "alpha" / "alpha_000.jpg"
    for name in odd:
        (data / "alpha" / name).write_bytes(source.read_bytes())
    listing = tmp_path / "odd.txt"
    written = write_exclude(listing, [str(data / "alpha" / n) for n in odd], data, why="test")
    assert written == 3
    assert read_exclude(listing, data) == {os.path.normpath(str(data / "alpha" / n)) for n in odd}
    prepared = prepare_data(data, exclude=listing, val_split=0)
    assert prepared.index.left_out == 3 and not set(odd) & {Path(p).name for p in prepared.train.paths}


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse names that are not UTF-8")
def test_a_contact_sheet_draws_names_with_a_newline_or_a_raw_byte_on_one_line(tmp_path):
    from PIL import Image

    from scenecls.contact_sheets import Tile, _printable, draw_sheet

    data = write_class_folders(tmp_path / "data", 1)
    source = data / "alpha" / "alpha_000.jpg"
    names = ["two\nlines.jpg", os.fsdecode(b"caf\xe9.jpg"), "tab\there.jpg"]
    for name in names:
        (data / "alpha" / name).write_bytes(source.read_bytes())
    tiles = [Tile(str(data / "alpha" / name), (name, "alpha")) for name in names]
    target = draw_sheet([tiles], f"group of {names[0]}", tmp_path / "sheet.png", row_labels=[names[1]])
    with Image.open(target) as sheet:
        assert sheet.size[0] > 3 * 128
    assert [_printable(name) for name in names] == ["two\\nlines.jpg", "caf\\xe9.jpg", "tab\\there.jpg"]
