"""Students: ``train --unlabelled DIR --teacher RUN`` learns from a teacher's calibrated probabilities on
labelled and unlabelled images; the teacher's targets are cached; a teacher is trained first when none is
named; bad input is one line, exit 2, nothing written; the unlabelled folder is only read."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from scenecls.training.distill import confident_rows, student_targets
from tests.conftest import (
    MINI,
    WEIGHTS_FILE,
    file_snapshot,
    invoke,
    needs_real_photos,
    one_error_line,
    tiny,
    write_class_folders,
    write_train_test,
)

RECIPE = ("--dense", "1", "--epochs", "2", "--finetune-epochs", "1", "--unfreeze", "1")


def test_soft_targets_mix_labels_with_the_teacher_and_give_unlabelled_rows_the_teacher_alone():
    teacher = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    targets = student_targets(np.array([0, 0]), teacher, weight=0.25)
    assert np.allclose(targets[0], [0.75 + 0.25 * 0.6, 0.25 * 0.3, 0.25 * 0.1])
    assert np.allclose(targets[1], [0.75 + 0.25 * 0.2, 0.25 * 0.7, 0.25 * 0.1])  # the label wins
    assert np.allclose(targets[2], teacher[2])
    assert np.allclose(targets.sum(axis=1), 1.0)
    softer = student_targets(np.array([], dtype=int), teacher, weight=0.5, temperature=4.0)
    assert softer[2].max() < 0.8 and softer[2].argmax() == 2  # softened, same class
    assert np.allclose(student_targets(np.array([1]), teacher[:1], weight=0.0), [[0, 1, 0]])


def test_hard_pseudo_labels_keep_the_rows_the_teacher_is_sure_of():
    teacher = np.array([[0.95, 0.05], [0.55, 0.45], [0.1, 0.9]])
    assert confident_rows(teacher, 0.9).tolist() == [0, 2]
    assert confident_rows(teacher, 0.0).tolist() == [0, 1, 2]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> tuple[Path, Path]:
    """A labelled data set (3 classes: 10 train, 5 test images each) and a folder of 18 unlabelled images."""
    root = tmp_path_factory.mktemp("scenes")
    data = root / "data"
    write_train_test(data, 10, 5)
    staged = write_class_folders(root / "staged", 6, seed=7, size=40)
    unlabelled = root / "unlabelled"
    unlabelled.mkdir()
    for image in sorted(staged.rglob("*.jpg")):
        image.rename(unlabelled / image.name)
    shutil.rmtree(staged)
    return data, unlabelled


def _student(data: Path, project: Path, name: str, *extra: str, quiet: bool = True):
    args = ["-q"] if quiet else []
    return invoke(*args, "train", "--data", str(data), *tiny(*RECIPE), *extra, "--project", str(project),
                  "--name", name)  # fmt: skip


def _record(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())["distillation"]


@pytest.mark.slow
def test_a_student_without_a_teacher_trains_one_first_and_records_both(scenes, tmp_path):
    data, unlabelled = scenes
    project = tmp_path / "runs"
    before = file_snapshot(unlabelled)
    result = _student(
        data,
        project,
        "student",
        "--unlabelled",
        str(unlabelled),
        "--targets",
        "soft",
        "--format",
        "json",
        quiet=False,
    )
    assert result.exit_code == 0, result.output
    assert "No --teacher: training one first" in result.stderr and "now the student" in result.stderr
    assert file_snapshot(unlabelled) == before  # only read
    student, teacher = project / "student", project / "student-teacher"
    assert json.loads((teacher / "state.json").read_text())["status"] == "finished"
    assert "distillation" not in json.loads((teacher / "config.json").read_text())  # an ordinary run
    config = json.loads((student / "config.json").read_text())
    record = config["distillation"]
    assert record["teacher"] == str(teacher.absolute()) and record["teacher_trained_first"] is True
    assert record["unlabelled"] == str(unlabelled.absolute()) and record["unlabelled_images"] == 18
    assert record["unlabelled_used"] == 18 and record["targets"] == "soft"
    assert record["labelled_images"] == config["images"]["train"] == 24  # 30 less the validation split
    assert sum(record["unlabelled_by_class"].values()) == 18
    teacher_metrics = json.loads((teacher / "metrics.json").read_text())
    assert record["teacher_test_accuracy"] == teacher_metrics["test_accuracy"]
    assert json.loads(result.stdout)["distillation"]["teacher"] == record["teacher"]  # --format json too
    assert json.loads((student / "state.json").read_text())["status"] == "finished"
    # The teacher's targets are cached: its 24 labelled and 18 unlabelled images, named for the teacher.
    cache = Path(os.environ["SCENECLS_HOME"]) / "cache" / "targets"
    entries = [
        json.loads((e / "meta.json").read_text()) for e in cache.iterdir() if not e.name.startswith(".")
    ]
    assert any(e["count"] == 42 and e["teacher_name"] == "student-teacher" for e in entries)
    listed = invoke("cache", "--kind", "targets", "--format", "json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert any(
        r["kind"] == "targets" and r["state"] == "current" and "student-teacher" in r["detail"] for r in rows
    )
    # The model card and the report page show the teacher beside the student.
    card = (student / "MODEL_CARD.md").read_text()
    assert "- Teacher: a run, `student-teacher`" in card and "18 unlabelled images" in card
    assert json.loads((student / "model_card.json").read_text())["teacher"]["unlabelled_images"] == 18
    page = invoke("-q", "report", str(student))
    assert page.exit_code == 0, page.output
    html = (student / "report.html").read_text()
    assert "Teacher and student" in html and "trained first, for this student" in html
    assert "24 labelled images and 18 of the 18 unlabelled images" in html


@pytest.mark.slow
def test_a_second_student_of_the_same_teacher_reuses_its_targets_and_hard_labels_follow_confidence(
    finished_run, scenes, tmp_path
):
    data, unlabelled = scenes
    project = tmp_path / "runs"
    common = ["--unlabelled", str(unlabelled), "--teacher", str(finished_run), "--targets", "hard"]
    everything = _student(data, project, "hard-all", *common, "--pseudo-confidence", "0")
    assert everything.exit_code == 0, everything.output
    record = _record(project / "hard-all")
    assert record["unlabelled_used"] == 18 and record["teacher_trained_first"] is False
    # A teacher trained 3 epochs on random features is never 0.99 sure: no unlabelled image is kept.
    none = _student(data, project, "hard-none", *common, "--pseudo-confidence", "0.99", quiet=False)
    assert none.exit_code == 0, none.output
    assert "the student learns from the labelled images alone" in none.stderr
    assert _record(project / "hard-none")["unlabelled_used"] == 0
    assert _record(project / "hard-none")["targets_cache"] == "reused"  # the same teacher, the same images


@pytest.mark.slow
def test_a_student_on_litert_keeps_its_teachers_targets_apart_and_reuses_them(finished_run, scenes, tmp_path):
    """``--cache-runtime litert`` runs the teacher on LiteRT too: an entry of its own beside TensorFlow's
    (the two agree to rounding, not bit for bit), built once and reused by the next such student."""
    data, unlabelled = scenes
    project = tmp_path / "runs"
    common = ["--unlabelled", str(unlabelled), "--teacher", str(finished_run), "--targets", "soft"]
    runs = [
        ("on-tf", []),
        ("on-litert", ["--cache-runtime", "litert"]),
        ("again", ["--cache-runtime", "litert"]),
    ]
    for name, extra in runs:
        result = _student(data, project, name, *common, *extra)
        assert result.exit_code == 0, result.output
    # TensorFlow's entry may be an earlier test's (the same teacher and images); LiteRT's is its own.
    assert [_record(project / name)["targets_cache"] for name, _ in runs][1:] == ["built", "reused"]
    cache = Path(os.environ["SCENECLS_HOME"]) / "cache" / "targets"
    entries = {}
    for entry in (e for e in cache.iterdir() if not e.name.startswith(".")):
        meta = json.loads((entry / "meta.json").read_text())
        if meta["teacher_name"] == finished_run.name and meta["count"] == 42:
            entries[meta.get("runtime", "tensorflow")] = np.load(entry / "train.npy")
    assert sorted(entries) == ["litert", "tensorflow"]
    np.testing.assert_allclose(entries["litert"], entries["tensorflow"], atol=1e-4)


@pytest.mark.slow
def test_an_ensemble_is_a_teacher_too(finished_run, scenes, tmp_path):
    data, unlabelled = scenes
    project = tmp_path / "runs"
    twin = shutil.copytree(finished_run, tmp_path / "twin")
    made = invoke("-q", "ensemble", str(finished_run), str(twin), "--project", str(project), "--name", "both",
                  "--no-export")  # fmt: skip
    assert made.exit_code == 0, made.output
    result = _student(data, project, "from-both", "--unlabelled", str(unlabelled), "--teacher",
                      str(project / "both"), "--targets", "soft")  # fmt: skip
    assert result.exit_code == 0, result.output
    record = _record(project / "from-both")
    assert record["teacher_is_ensemble"] is True and record["unlabelled_used"] == 18


@pytest.mark.slow
def test_a_teacher_of_another_input_size_looks_at_the_images_at_its_own(
    finished_run, scenes, tmp_path, monkeypatch
):
    """A 32-pixel teacher teaches a 40-pixel student: its targets are its own probabilities at 32 pixels
    (the size it was trained at), kept under that size in the cache; the student is 40 pixels."""
    from scenecls.classifier import load_model
    from scenecls.data.layout import Split
    from scenecls.metrics import predict_split

    data, unlabelled = scenes
    home = tmp_path / "home"
    monkeypatch.setenv("SCENECLS_HOME", str(home))  # a cache of this test's own, so its entry is the one
    result = _student(data, tmp_path / "runs", "bigger", "--image-size", "40", "--unlabelled",
                      str(unlabelled), "--teacher", str(finished_run), "--targets", "soft")  # fmt: skip
    assert result.exit_code == 0, result.output
    student = tmp_path / "runs" / "bigger"
    assert json.loads((student / "config.json").read_text())["image_size"] == 40
    assert _record(student)["targets_cache"] == "built"
    [entry] = list((home / "cache" / "targets").iterdir())
    assert json.loads((entry / "meta.json").read_text())["size"] == 32
    cached = np.load(entry / "train.npy")[-18:]  # the unlabelled rows come after the labelled ones
    pool = sorted(str(p) for p in unlabelled.iterdir())
    teacher = predict_split(load_model(finished_run / "best.keras"), Split(pool, [-1] * len(pool)))
    row_order = np.lexsort(cached.T[::-1]), np.lexsort(teacher.T[::-1])  # whatever order the pool came in
    assert np.allclose(cached[row_order[0]], teacher[row_order[1]], atol=1e-5)


def test_bad_unlabelled_folders_and_teachers_are_one_line_exit_2_and_write_nothing(
    finished_run, scenes, tmp_path
):
    data, unlabelled = scenes
    teacher = finished_run
    empty = tmp_path / "empty"
    empty.mkdir()
    laid_out = write_class_folders(tmp_path / "laid-out", 2, size=24)
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "a.jpg").write_bytes(b"not a picture")
    copies = tmp_path / "copies"
    copies.mkdir()
    for image in sorted((data / "train" / "alpha").iterdir())[:3]:
        shutil.copy(image, copies / image.name)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(teacher, unfinished)
    state = json.loads((unfinished / "state.json").read_text())
    (unfinished / "state.json").write_text(json.dumps({**state, "status": "interrupted"}))
    other = tmp_path / "other-classes"
    shutil.copytree(teacher, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "classes": ["x", "y", "z"]}))
    labels = json.loads((other / "labels.json").read_text())
    (other / "labels.json").write_text(json.dumps({**labels, "classes": ["x", "y", "z"]}))
    cases = [
        (["--unlabelled", str(tmp_path / "missing")], "is not a folder"),
        (["--unlabelled", str(empty)], "holds no images"),
        (["--unlabelled", str(laid_out)], "class folders"),
        (["--unlabelled", str(data)], "holds labelled images"),
        (["--unlabelled", str(data / "train")], "holds labelled images"),
        (["--unlabelled", str(data / "train" / "alpha")], "holds labelled images"),
        (["--unlabelled", str(unreadable)], "can be read"),
        (["--unlabelled", str(copies)], "holds the labelled images themselves"),
        (["--unlabelled", str(unlabelled), "--teacher", str(unfinished)], "has not finished"),
        (["--unlabelled", str(unlabelled), "--teacher", str(other)], "other classes"),
        (["--unlabelled", str(unlabelled), "--teacher", str(tmp_path)], "not a run folder"),
        (["--unlabelled", str(unlabelled), "--teacher", str(teacher), "--mixup", "0.2"], "--mixup"),
        (["--unlabelled", str(unlabelled), "--pseudo-confidence", "1.5"], "--pseudo-confidence"),
    ]
    for extra, said in cases:
        bad_project = tmp_path / "bad-runs"
        before = file_snapshot(unlabelled)
        result = invoke("train", "--data", str(data), *tiny(*RECIPE), *extra,
                        "--project", str(bad_project), "--name", "bad")  # fmt: skip
        assert result.exit_code == 2, (extra, result.output)
        assert said in one_error_line(result), (extra, result.output)
        assert not (bad_project / "bad").exists() and not (bad_project / "bad-teacher").exists(), extra
        assert file_snapshot(unlabelled) == before


@pytest.mark.slow  # trains a student end to end
def test_a_student_without_unlabelled_images_is_distillation_on_the_labelled_ones(
    finished_run, scenes, tmp_path
):
    data, _ = scenes
    # --targets chooses for unlabelled images; on labelled ones alone, distillation is soft whatever it says.
    result = _student(data, tmp_path / "runs", "kd", "--teacher", str(finished_run), "--targets", "hard")
    assert result.exit_code == 0, result.output
    record = _record(tmp_path / "runs" / "kd")
    assert record["unlabelled"] is None and record["unlabelled_used"] == 0 and record["labelled_images"] == 24
    assert record["targets"] == "soft"


@pytest.mark.slow
def test_a_student_resumed_after_its_unlabelled_images_changed_is_refused(
    finished_run, scenes, tmp_path, monkeypatch
):
    from tests.conftest import ctrl_c_at_batch

    data, unlabelled = scenes
    mine = tmp_path / "unlabelled"
    shutil.copytree(unlabelled, mine)
    with ctrl_c_at_batch(monkeypatch, 3):
        interrupted = _student(data, tmp_path / "runs", "cut", "--unlabelled", str(mine), "--teacher",
                               str(finished_run))  # fmt: skip
    assert interrupted.exit_code == 130, interrupted.output
    run = tmp_path / "runs" / "cut"
    state_before = (run / "state.json").read_bytes()
    shutil.copy(next(mine.iterdir()), mine / "one-more.jpg")
    refused = invoke("train", "--resume", str(run))
    assert refused.exit_code != 0
    assert "the unlabelled images changed" in one_error_line(refused)
    assert (run / "state.json").read_bytes() == state_before  # left as it was
    (mine / "one-more.jpg").unlink()
    resumed = invoke("-q", "train", "--resume", str(run))
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((run / "state.json").read_text())["status"] == "finished"


@pytest.mark.slow
@needs_real_photos
def test_a_student_of_real_photographs_learns_what_its_teacher_knows(tmp_path):
    """Real MobileNetV2 weights on intel-mini: a student whose labelled targets are the teacher's alone
    (``--distill-weight 1``) still learns the scenes, so each row got its own image's targets; the
    unlabelled images are the ``pred/`` folder fetch-data places inside the data set."""
    data = tmp_path / "intel-mini"
    fetched = invoke("-q", "fetch-data", "--from", str(MINI), "--dest", str(data))
    assert fetched.exit_code == 0, fetched.output
    recipe = ["--backbone", "mobilenet_v2", "--weights", str(WEIGHTS_FILE), "--image-size", "96",
              "--dense", "0", "--epochs", "4", "--finetune-epochs", "0", "--no-export",
              "--project", str(tmp_path / "runs")]  # fmt: skip
    teacher = invoke("-q", "train", "--data", str(data), *recipe, "--name", "teacher", "--format", "json")
    assert teacher.exit_code == 0, teacher.output
    taught = json.loads(teacher.stdout)["test_accuracy"]
    student = invoke("-q", "train", "--data", str(data), *recipe, "--name", "student", "--format", "json",
                     "--unlabelled", str(data / "pred"), "--teacher", str(tmp_path / "runs" / "teacher"),
                     "--targets", "soft", "--distill-weight", "1", "--seed", "1")  # fmt: skip
    assert student.exit_code == 0, student.output
    summary = json.loads(student.stdout)
    assert summary["distillation"]["unlabelled_used"] == 102
    assert summary["distillation"]["teacher_agreement_on_labels"] >= 0.8
    assert taught >= 0.8 and summary["test_accuracy"] >= taught - 0.05, (taught, summary["test_accuracy"])
