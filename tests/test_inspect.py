"""``scenecls inspect``: duplicates (exact, near, across splits, under two labels), likely label errors,
the images' make-up, contact sheets, and an exclude list that train honours."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from scenecls.cli import cli
from scenecls.data import duplicates
from scenecls.data.facts import image_facts
from scenecls.data.pipeline import prepare_data
from scenecls.inspection.options import HASH_DISTANCE
from scenecls.label_errors import find_suspects, fold_of, out_of_fold_probabilities
from tests.conftest import (
    MINI,
    WEIGHTS_FILE,
    draw_scene,
    needs_real_photos,
    one_error_line,
    tiny,
    write_class_folders,
)

TINY = tiny(batch=None, export=True)


def _bits(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def test_hash_pairs_are_exactly_the_pairs_within_the_distance():
    """Multi-index hashing finds every pair a brute-force comparison finds, and no other."""
    rng = np.random.default_rng(0)
    hashes = [int(h) for h in rng.integers(0, 2**63, size=300, dtype=np.int64)]
    for k in range(0, 300, 10):  # plant near copies: 0-6 bits flipped
        flips = rng.choice(64, size=k % 7, replace=False)
        hashes.append(hashes[k] ^ sum(1 << int(f) for f in flips))
    for distance in (0, 2, 4, 6):
        found = sorted(duplicates.hash_pairs(hashes, distance))
        brute = sorted(
            (i, j)
            for i in range(len(hashes))
            for j in range(i + 1, len(hashes))
            if _bits(hashes[i], hashes[j]) <= distance
        )
        assert found == brute and brute


def test_feature_pairs_compare_tile_by_tile_as_a_whole_matrix_would():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(53, 8)).astype(np.float32)
    features[40] = features[3] * 2.5 + 0.01  # same direction: cosine ~1
    features[41] = features[17] + rng.normal(scale=0.05, size=8)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    sims = unit @ unit.T
    brute = sorted((i, j) for i in range(53) for j in range(i + 1, 53) if sims[i, j] >= 0.9)
    tiled = sorted((i, j) for i, j, _ in duplicates.feature_pairs(features, 0.9, block=7))
    assert tiled == brute and (3, 40) in tiled and (17, 41) in tiled


def test_groups_join_chains_of_pairs():
    assert duplicates.group(6, [(0, 3), (3, 5), (1, 2)]) == [[0, 3, 5], [1, 2]]
    assert duplicates.group(3, []) == []


def test_a_reencoded_resized_copy_hashes_alike_and_gray_images_are_told(tmp_path):
    rng = np.random.default_rng(2)
    original = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).resize((240, 240)).save(original)
    copy = tmp_path / "b.jpg"
    Image.open(original).resize((200, 200)).save(copy, quality=60)
    other = tmp_path / "c.png"
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).resize((240, 240)).save(other)
    a, b, c = image_facts(original), image_facts(copy), image_facts(other)
    assert _bits(a.dhash, b.dhash) <= HASH_DISTANCE < _bits(a.dhash, c.dhash)
    assert (a.width, a.height, b.width) == (240, 240, 200) and a.sha256 != b.sha256
    gray = tmp_path / "g.jpg"
    Image.open(original).convert("L").convert("RGB").save(gray, quality=80)
    assert image_facts(gray).gray and not a.gray


def test_confident_learning_finds_flipped_labels():
    """Three well separated clusters with 15 of 600 labels flipped: the out-of-fold head doubts them."""
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(3), 200)
    features = rng.normal(size=(600, 16)).astype(np.float32) + np.eye(3, 16)[labels] * 6
    flipped = rng.choice(600, size=15, replace=False)
    given = labels.copy()
    given[flipped] = (labels[flipped] + 1) % 3
    probs = out_of_fold_probabilities(features, given, 3, folds=5)
    suspects = find_suspects(probs, given)
    assert len(suspects) >= 12 and {s.index for s in suspects[:12]} <= set(flipped.tolist())
    assert all(s.suggested == labels[s.index] for s in suspects if s.index in set(flipped.tolist()))
    folds = fold_of(given, 5, 0)
    assert all(abs(np.sum((folds == f) & (given == c)) - 40) <= 2 for f in range(5) for c in range(3))


def _smooth_images(root: Path, per_class: int, seed: int) -> None:
    """Three classes of smooth random patterns, each tinted by its class: unlike one another (a random
    backbone's features and the hashes tell them apart), as photographs are."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(("alpha", "beta", "gamma")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pattern = rng.uniform(0, 255, (6, 6, 3))
            pattern[..., label] = np.maximum(pattern[..., label], 180)
            image = Image.fromarray(pattern.astype(np.uint8)).resize((48, 48), Image.Resampling.BICUBIC)
            image.save(root / name / f"{name}_{i:03d}.jpg", quality=92)


def _planted(root: Path) -> dict[str, Path]:
    """train/ and test/ of three classes, with a leak, a conflict, a near copy and a bad file."""
    _smooth_images(root / "train", 12, seed=1)
    _smooth_images(root / "test", 4, seed=2)
    train, test = root / "train", root / "test"
    plants = {
        "leak": test / "alpha" / "leaked.jpg",  # a training image, byte for byte, in the test split
        "conflict": train / "beta" / "relabelled.jpg",  # a training image of alpha, also under beta
        "near": train / "gamma" / "smaller.jpg",  # a gamma image re-encoded smaller
    }
    shutil.copy(train / "alpha" / "alpha_000.jpg", plants["leak"])
    shutil.copy(train / "alpha" / "alpha_001.jpg", plants["conflict"])
    Image.open(train / "gamma" / "gamma_000.jpg").resize((40, 40)).save(plants["near"], quality=70)
    (train / "gamma" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return plants


@pytest.mark.slow
def test_inspect_reports_every_kind_of_finding_and_writes_an_exclude_list_train_honours(tmp_path):
    data = tmp_path / "data"
    plants = _planted(data)
    out_dir, excluded = tmp_path / "findings", tmp_path / "exclude.txt"
    # A random backbone finds every picture like every other: only identical features count as near.
    args = [
        "inspect",
        str(data),
        *TINY,
        "--similarity",
        "0.9999",
        "--output",
        str(out_dir),
        "--format",
        "json",
        "--write-exclude",
        str(excluded),
        "--drop-label-errors",
        "2",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    counts = report["counts"]
    assert counts["unreadable"] == 1 and report["unreadable"][0]["path"].endswith("broken.jpg")
    assert counts["images"] == 3 * 16 + 3
    assert report["balance"]["train"]["beta"] == 13 and report["balance"]["test"]["alpha"] == 5
    groups = report["duplicates"]["groups"]

    def group_of(path: Path) -> dict:
        return next(g for g in groups if str(path) in {m["path"] for m in g["images"]})

    leak = group_of(plants["leak"])
    assert leak["kind"] == "exact" and leak["across_splits"] and not leak["conflicting_labels"]
    conflict = group_of(plants["conflict"])
    assert conflict["conflicting_labels"] and {m["label"] for m in conflict["images"]} == {"alpha", "beta"}
    near = group_of(plants["near"])
    assert near["kind"] == "near" and {Path(m["path"]).name for m in near["images"]} == {
        "gamma_000.jpg",
        "smaller.jpg",
    }
    assert report["label_errors"]["check"].startswith("5-fold")
    assert report["images"]["train"]["common_sizes"][0] == {"width": 48, "height": 48, "images": 37}
    # The sheets of each kind of finding, and the whole report, in the marked folder.
    for name in (
        "duplicates-within.png",
        "duplicates-across.png",
        "duplicates-conflicting.png",
        "inspection.json",
    ):
        assert (out_dir / name).is_file(), name
    assert Image.open(out_dir / "duplicates-across.png").size[0] > 128
    # The list: the training copy of the leak, the training copies of the conflict, two label doubts.
    listed = [line for line in excluded.read_text().splitlines() if not line.startswith("#")]
    assert "train/alpha/alpha_000.jpg" in listed and "test/alpha/leaked.jpg" not in listed
    assert {"train/alpha/alpha_001.jpg", "train/beta/relabelled.jpg"} <= set(listed)
    assert len(listed) == len(set(listed)) <= 2 + 2 + 1
    # train --exclude leaves them out, records the list, and the data fingerprint says so.
    runs = tmp_path / "runs"
    base = [
        "train",
        "--data",
        str(data),
        *TINY,
        "--epochs",
        "1",
        "--finetune-epochs",
        "0",
        "--project",
        str(runs),
        "--no-export",
        "-q",
    ]
    with_list = CliRunner().invoke(cli, [*base, "--name", "with", "--exclude", str(excluded)])
    assert with_list.exit_code == 0, with_list.output
    config = json.loads((runs / "with" / "config.json").read_text())
    assert config["exclude"] == str(excluded.resolve()) and config["images"]["excluded"] == len(listed)
    everything = prepare_data(data)  # what a run without the list sees
    assert config["data_fingerprint"] != everything.index.fingerprint()
    seen = config["images"]["train"] + config["images"]["val"] + config["images"]["test"]
    assert seen == len(everything.train) + len(everything.val) + len(everything.test) - len(listed)
    # A fine-tuning run keeps its parent's list (and so its parent's validation images).
    child = CliRunner().invoke(cli, ["finetune", "with", "--project", str(runs), "--finetune-epochs", "1",
                                     "--unfreeze", "1", "--name", "child", "--no-export", "-q"])  # fmt: skip
    assert child.exit_code == 0, child.output
    child_config = json.loads((runs / "child" / "config.json").read_text())
    assert child_config["exclude"] == config["exclude"] and child_config["images"] == config["images"]
    # Nothing of the user's was touched.
    assert plants["leak"].is_file() and (data / "train" / "alpha" / "alpha_000.jpg").is_file()


def test_exclude_takes_effect_in_the_split_and_in_evaluate(tmp_path):
    data = write_class_folders(tmp_path / "classes", 10)
    listing = tmp_path / "drop.txt"
    listing.write_text(
        "# mine\nalpha/alpha_000.jpg\n\n" + str(data / "beta" / "beta_001.jpg") + "\nnot/there.jpg\n"
    )
    prepared = prepare_data(data, val_split=0.2, exclude=listing)
    kept = set(prepared.train.paths) | set(prepared.val.paths)
    assert len(kept) == 28
    assert (
        str(data / "alpha" / "alpha_000.jpg") not in kept and str(data / "beta" / "beta_001.jpg") not in kept
    )
    assert prepared.index.excluded and prepared.index.fingerprint() != prepare_data(data).index.fingerprint()


def test_inspect_refuses_what_is_not_its_own_and_bad_input_in_one_line(tmp_path):
    data = write_class_folders(tmp_path / "data", 3)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    refused = CliRunner().invoke(cli, ["inspect", str(data), "--no-features", "--output", str(theirs)])
    assert refused.exit_code == 2 and "did not write" in one_error_line(refused)
    assert (theirs / "notes.txt").read_text() == "mine"
    precious = tmp_path / "list.txt"
    precious.write_text("my own list\n")
    args = [
        "inspect",
        str(data),
        "--no-features",
        "--output",
        str(tmp_path / "o"),
        "--write-exclude",
        str(precious),
    ]
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 1 and "not an exclude list" in one_error_line(refused)
    assert precious.read_text() == "my own list\n"
    for bad in (
        ["--similarity", "nan"],
        ["--similarity", "0.5"],
        ["--folds", "1"],
        ["--hash-distance", "99"],
    ):
        result = CliRunner().invoke(cli, ["inspect", str(data), *bad])
        assert result.exit_code == 2 and "Traceback" not in result.output
    for command in ("train", "lr-find", "sweep"):
        args = [command, "--data", str(data), "--exclude", str(tmp_path / "nope.txt")]
        missing = CliRunner().invoke(cli, args)
        assert missing.exit_code == 1 and "no such file" in one_error_line(missing), command
    empty = tmp_path / "empty"
    (empty / "alpha").mkdir(parents=True)
    (empty / "alpha" / "a.jpg").write_bytes(b"")
    nothing = CliRunner().invoke(
        cli, ["inspect", str(empty), "--no-features", "--output", str(tmp_path / "e")]
    )
    assert nothing.exit_code == 1 and "no readable images" in one_error_line(nothing)


def test_a_split_of_unreadable_files_only_is_reported_not_fatal(tmp_path):
    data = tmp_path / "data"
    _smooth_images(data / "train", 4, seed=3)
    for name in ("alpha", "beta"):
        (data / "test" / name).mkdir(parents=True)
        (data / "test" / name / "cut.jpg").write_bytes(b"\xff\xd8\xff")
    result = CliRunner().invoke(
        cli, ["inspect", str(data), "--no-features", "--output", str(tmp_path / "o"), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["counts"]["unreadable"] == 2 and list(report["balance"]) == ["train"]
    table = CliRunner().invoke(cli, ["inspect", str(data), "--no-features", "--output", str(tmp_path / "o")])
    assert table.exit_code == 0 and "Unreadable files (2)" in table.stdout


@pytest.mark.slow
def test_one_class_or_one_image_per_class_skips_the_label_check_with_a_word(tmp_path):
    one_class = tmp_path / "one"
    (one_class / "only").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        draw_scene(0, rng).save(one_class / "only" / f"{i}.jpg")
    singles = write_class_folders(tmp_path / "singles", 1)
    for data in (one_class, singles):
        result = CliRunner().invoke(
            cli,
            ["inspect", str(data), *TINY, "--output", str(tmp_path / f"{data.name}-out"), "--format", "json"],
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert (
            report["label_errors"]["check"].startswith("not run") and not report["label_errors"]["candidates"]
        )


def test_csv_and_table_output(tmp_path):
    data = tmp_path / "data"
    _planted(data)
    as_csv = CliRunner().invoke(
        cli, ["inspect", str(data), "--no-features", "--output", str(tmp_path / "o"), "--format", "csv"]
    )
    assert as_csv.exit_code == 0, as_csv.output
    lines = as_csv.stdout.splitlines()
    assert lines[0] == "finding,number,kind,split,label,suggested,probability,path"
    kinds = {line.split(",")[0] for line in lines[1:]}
    assert {"unreadable", "across_splits", "conflicting_labels"} <= kinds
    table = CliRunner().invoke(cli, ["inspect", str(data), "--no-features", "--output", str(tmp_path / "o")])
    assert table.exit_code == 0 and "Class balance" in table.stdout and "leaked.jpg" in table.stdout
    assert "not run (--no-features)" in table.stdout


@pytest.mark.slow
@needs_real_photos
def test_real_photographs_a_planted_crop_and_planted_wrong_labels_are_found(tmp_path):
    """Real MobileNetV2 features of real Intel photographs: a slightly cropped, re-encoded copy of a
    training image put in the test split is a near duplicate across splits, and most of 12 photographs
    moved into a wrong class folder are among the likeliest label errors."""
    data = tmp_path / "intel-mini"
    fetched = CliRunner().invoke(cli, ["-q", "fetch-data", "--from", str(MINI), "--dest", str(data)])
    assert fetched.exit_code == 0, fetched.output
    classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
    source = sorted((data / "train" / "forest").glob("*.jpg"))[0]
    image = Image.open(source)
    w, h = image.size
    cropped = data / "test" / "forest" / "cropped-copy.jpg"
    image.crop((4, 4, w - 4, h - 4)).resize((w, h)).save(cropped, quality=75)
    rng = np.random.default_rng(0)
    moved = []
    for k in range(12):  # e.g. a forest photograph filed under street
        given, true = classes[k % len(classes)], classes[(k + 2) % len(classes)]
        photo = sorted((data / "train" / true).glob("*.jpg"))[int(rng.integers(5, 100))]
        target = data / "train" / given / f"moved-{k}.jpg"
        shutil.move(photo, target)
        moved.append(str(target))
    args = [
        "inspect",
        str(data),
        "--backbone",
        "mobilenet_v2",
        "--weights",
        str(WEIGHTS_FILE),
        "--image-size",
        "160",  # near copies are still looked for at the backbone's own 150 px, where the thresholds hold
        "--output",
        str(tmp_path / "findings"),
        "--format",
        "json",
        "--top",
        "1000",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    group = next(
        g for g in report["duplicates"]["groups"] if str(cropped) in {m["path"] for m in g["images"]}
    )
    assert (
        group["kind"] == "near"
        and group["across_splits"]
        and str(source) in {m["path"] for m in group["images"]}
    )
    assert report["duplicates"]["feature_size"] == 150
    assert max(len(g["images"]) for g in report["duplicates"]["groups"]) <= 4  # no chains of look-alikes
    ranked = [c["path"] for c in report["label_errors"]["candidates"]]
    assert len(set(ranked[:40]) & set(moved)) >= 9, ranked[:40]
    assert (tmp_path / "findings" / "label-errors.png").is_file()


def test_a_marker_that_is_not_ours_or_a_marked_folder_with_a_users_files_is_refused(tmp_path):
    from scenecls.inspection import MARKER

    data = write_class_folders(tmp_path / "data", 3)
    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / MARKER).write_text("{}")
    (forged / "label-errors.png").write_bytes(b"the user's own picture")
    refused = CliRunner().invoke(cli, ["inspect", str(data), "--no-features", "--output", str(forged)])
    assert refused.exit_code == 2 and "did not write" in one_error_line(refused)
    assert (forged / "label-errors.png").read_bytes() == b"the user's own picture"

    ours = tmp_path / "ours"
    first = CliRunner().invoke(cli, ["inspect", str(data), "--no-features", "--output", str(ours)])
    assert first.exit_code == 0, first.output
    (ours / "inspection-notes.txt").write_text("the user's notes")  # a user's file in our folder
    (ours / "inspection.json").write_text("kept")
    again = CliRunner().invoke(cli, ["inspect", str(data), "--no-features", "--output", str(ours)])
    assert again.exit_code == 2 and "inspection-notes.txt" in one_error_line(again)
    assert (ours / "inspection.json").read_text() == "kept"
    (ours / "inspection-notes.txt").unlink()
    replaced = CliRunner().invoke(cli, ["inspect", str(data), "--no-features", "--output", str(ours)])
    assert replaced.exit_code == 0, replaced.output  # what it wrote itself, it may write again
    assert json.loads((ours / "inspection.json").read_text())["images"]


def test_inspect_in_the_data_set_writes_outside_it_and_our_outputs_are_never_read_as_data(
    tmp_path, monkeypatch
):
    from scenecls.paths import data_home

    data = write_class_folders(tmp_path / "data", 3)
    before = prepare_data(data).index.fingerprint()
    monkeypatch.chdir(data)
    result = CliRunner().invoke(cli, ["inspect", ".", "--no-features"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in data.iterdir()) == ["alpha", "beta", "gamma"]
    assert (data_home() / "inspect" / "data" / "inspection.json").is_file()
    # Asked to write inside it, it does; the next look at the data passes over its own sheets.
    inside = CliRunner().invoke(cli, ["inspect", ".", "--no-features", "--output", "inspect"])
    assert inside.exit_code == 0, inside.output
    assert (data / "inspect" / "inspection.json").is_file()
    shutil.copy(next((data / "alpha").iterdir()), data / "inspect" / "a-picture.jpg")
    index = prepare_data(data).index
    assert index.classes == ["alpha", "beta", "gamma"] and index.fingerprint() == before


def test_near_copies_group_only_when_each_is_near_every_other_never_by_chains():
    """A chain of pictures, each a little unlike the one before: every neighbour is near, the ends are
    not. Single-link grouping made one group of it (185 different photos on intel-mini at 96 px)."""
    steps = 40
    angles = np.linspace(0, 1.2, steps)  # neighbours 0.03 rad apart: cosine 0.9995; the ends: 0.36
    features = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    near = list(duplicates.feature_pairs(features, 0.999))
    assert duplicates.group(steps, [(i, j) for i, j, _ in near]) == [list(range(steps))]  # the chain
    groups = duplicates.near_groups(steps, [], near)
    assert groups and max(len(g) for g in groups) < steps // 4
    for members in groups:
        for a in members:
            for b in members:
                assert duplicates.cosine(features[a], features[b]) >= 0.999


def test_an_exclude_list_that_takes_much_of_a_class_needs_force(tmp_path):
    from scenecls.inspection.findings import Inspection, Item

    items = [Item("train", f"/d/a{i}.jpg", 0) for i in range(100)] + [Item("test", "/d/t.jpg", 0)]
    inspection = Inspection(Path("/d"), "class-folders", ["a"], items, [], [], [], [], "", None, {})
    assert inspection.excessive_share([f"/d/a{i}.jpg" for i in range(10)]) is None
    said = inspection.excessive_share([f"/d/a{i}.jpg" for i in range(45)])
    assert said.startswith("45 of 100 training images of class a (45%)")


@pytest.mark.slow  # inspects and trains end to end
def test_train_after_inspect_reads_the_features_inspect_computed(tmp_path):
    """inspect caches the training images' features as a default run splits them: a run with the same
    backbone, weights and size reads them back, and inspect's own features are the same either way."""
    from scenecls.data.layout import index_dataset
    from scenecls.inspection.findings import Item
    from scenecls.inspection.look import default_run_split, image_features
    from scenecls.inspection.options import InspectOptions
    from scenecls.progress import NullReporter

    data = tmp_path / "data"
    write_class_folders(data / "train", 10, seed=5, size=40)
    write_class_folders(data / "test", 3, seed=6, size=40)
    looked = CliRunner().invoke(cli, ["inspect", str(data), *TINY, "--output", str(tmp_path / "o"), "-q"])
    assert looked.exit_code == 0, looked.output
    runs = tmp_path / "runs"
    args = ["train", "--data", str(data), *TINY, "--epochs", "1", "--finetune-epochs", "0", "--no-export"]
    trained = CliRunner().invoke(cli, [*args, "--project", str(runs)])
    assert trained.exit_code == 0, trained.output
    assert "Feature cache: reusing" in trained.stderr and "Caching features" not in trained.stderr
    assert json.loads((runs / "train" / "metrics.json").read_text())["feature_cache"] == "reused"

    # The rows gathered from the run's entry and the test images' are the features of one entry of all.
    everything = prepare_data(data)
    items = [
        Item(name, path, label)
        for name, split in (("train", everything.index.splits["train"]), ("test", everything.test))
        for path, label in zip(split.paths, split.labels, strict=True)
    ]
    options = InspectOptions(backbone="mobilenet_v2", weights="none", image_size=32)
    cache = tmp_path / "cache"
    run_split = default_run_split(index_dataset(data), [])
    shared = image_features(items, 3, options, reporter=NullReporter(), cache_root=cache, run_split=run_split)
    alone = image_features(items, 3, options, reporter=NullReporter(), cache_root=cache)
    assert len(list((cache / "features").iterdir())) == 3  # the run's entry, the test images', all
    assert shared.shape == alone.shape and np.abs(alone).max() > 0
    assert np.allclose(shared, alone, rtol=1e-4, atol=1e-4 * np.abs(alone).max())
