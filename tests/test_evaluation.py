"""Metric arithmetic and input expansion, without a model."""

from __future__ import annotations

import numpy as np
import pytest

from scenecls.metrics import evaluate_predictions
from scenecls.predict import expand_inputs


def test_metrics_by_hand():
    classes = ["a", "b", "c"]
    labels = np.array([0, 0, 0, 1, 1, 2])
    # predictions:     0  1  0  1  1  0
    probs = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.3, 0.6, 0.1],
            [0.5, 0.2, 0.3],
            [0.1, 0.7, 0.2],
            [0.2, 0.5, 0.3],
            [0.5, 0.1, 0.4],
        ]
    )
    ev = evaluate_predictions(probs, labels, classes, top_k=2)
    assert ev.accuracy == pytest.approx(4 / 6)
    assert ev.confusion == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    a, b, c = ev.per_class
    assert (a["precision"], a["recall"], a["support"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3), 3)
    assert (b["precision"], b["recall"]) == (pytest.approx(2 / 3), 1.0)
    assert (c["precision"], c["recall"], c["f1"]) == (0.0, 0.0, 0.0)
    assert b["f1"] == pytest.approx(0.8)
    assert ev.macro["recall"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert ev.weighted["recall"] == pytest.approx((2 / 3 * 3 + 1 * 2 + 0) / 6)
    # top-2: sample 2 (true a: 0.3 is 2nd), sample 5 (true c: 0.4 is 2nd) now count
    assert ev.top_k_accuracy == pytest.approx(6 / 6)
    expected_loss = -np.mean(np.log([0.8, 0.3, 0.5, 0.7, 0.5, 0.4]))
    assert ev.loss == pytest.approx(expected_loss)


def test_top_k_is_capped_by_the_number_of_classes():
    ev = evaluate_predictions(np.array([[0.4, 0.6]]), np.array([0]), ["x", "y"], top_k=5)
    assert ev.top_k == 2 and ev.top_k_accuracy == 1.0 and ev.accuracy == 0.0


def test_expand_inputs(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/1.jpg", "d/sub/2.png", "d/notes.txt", "x.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    found = expand_inputs(
        [
            str(tmp_path / "d"),
            str(tmp_path / "*.jpg"),
            str(tmp_path / "nope.jpg"),
            str(tmp_path / "empty"),
            "-",
        ],
        stdin=[f"{tmp_path / 'x.jpg'}\n", "\n"],
    )
    assert found == [
        (str(tmp_path / "d" / "1.jpg"), None),
        (str(tmp_path / "d" / "sub" / "2.png"), None),
        (str(tmp_path / "x.jpg"), None),
        (str(tmp_path / "nope.jpg"), "no such file"),
        (str(tmp_path / "empty"), "no images in folder"),
        (str(tmp_path / "x.jpg"), None),
    ]
