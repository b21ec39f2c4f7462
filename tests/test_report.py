"""``scenecls report``: one self-contained HTML page, opened in a real headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from scenecls.cli import cli
from tests.conftest import one_error_line, tiny, write_class_folders, write_train_test

TINY = tiny("--dense", "1", "--epochs", "2", "--finetune-epochs", "1", "--unfreeze", "1")


def _chromium() -> str:
    """Debian's Chromium; CI installs it (.ci/run), so there its absence fails the test."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    return found


WIDTHS = (1280, 390)  # a desktop and a phone


def open_in_chromium(page_file: Path, screenshot: Path) -> dict:
    """Open ``page_file`` in headless Chromium at a desktop's width: what loaded, what the console said,
    a full screenshot; and at each of WIDTHS, how far the page is wider than the window (0: no
    horizontal scroll)."""
    from playwright.sync_api import sync_playwright

    seen: dict = {"console_errors": [], "page_errors": [], "requests": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: seen["console_errors"].append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: seen["page_errors"].append(str(error)))
            page.on("request", lambda request: seen["requests"].append(request.url))
            page.goto(page_file.resolve().as_uri(), wait_until="load")
            seen["images"] = page.evaluate(
                "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])"
            )
            seen["scripts"] = page.evaluate("document.scripts.length")
            seen["title"] = page.title()
            page.screenshot(path=str(screenshot), full_page=True)
            seen["overflow"] = {}
            for width in WIDTHS:
                page.set_viewport_size({"width": width, "height": 900})
                seen["overflow"][width] = page.evaluate(
                    "document.documentElement.scrollWidth - window.innerWidth"
                )
                page.screenshot(
                    path=str(screenshot.with_name(f"{screenshot.stem}-{width}.png")), full_page=True
                )
        finally:
            browser.close()
    return seen


def _not_blank(screenshot: Path) -> None:
    with Image.open(screenshot) as picture:
        pixels = np.asarray(picture.convert("RGB"))
    assert pixels.shape[0] > 1500  # a long page: tables and pictures
    assert (pixels < 200).any(axis=-1).mean() > 0.05  # a good part of it is drawn, not white
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # pictures, not only text


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    write_train_test(data, 12, 5)
    project = root / "runs"
    result = CliRunner().invoke(cli, ["train", "--data", str(data), *TINY, "--project", str(project)])
    assert result.exit_code == 0, result.output
    return project / "train"


@pytest.mark.slow
def test_the_report_of_a_run_opens_in_chromium_with_every_picture_and_no_error(run, tmp_path):
    page_file = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["report", str(run), "--output", str(page_file), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"report": str(page_file)}
    text = page_file.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text  # self-contained
    for heading in ("Summary", "Learning curves", "Can its confidence be trusted?", "Highest losses",
                    "Options"):  # fmt: skip
        assert f">{heading}</" in text, heading
    seen = open_in_chromium(page_file, tmp_path / "shot.png")
    assert seen["console_errors"] == [] and seen["page_errors"] == []
    assert seen["scripts"] == 0
    assert all(url.startswith(("file:", "data:")) for url in seen["requests"]), seen["requests"]
    alts = [alt for *_, alt in seen["images"]]
    pictures = ["Learning curves", "Confusion matrix", "Reliability diagram", "Accuracy against coverage"]
    for expected in [*pictures, "Highest losses"]:
        assert expected in alts, alts
    assert all(complete and width > 100 and height > 100 for complete, width, height, _ in seen["images"])
    assert seen["title"] == "train: scenecls report"
    assert seen["overflow"] == {width: 0 for width in WIDTHS}  # no horizontal scroll, phone included
    assert ">None<" not in text and ">True<" not in text and "{'" not in text  # values, not reprs
    _not_blank(tmp_path / "shot.png")
    # Made again over itself: a page of ours is replaced.
    again = CliRunner().invoke(cli, ["report", str(run), "--output", str(page_file), "--no-heatmaps"])
    assert again.exit_code == 0, again.output


def test_the_report_never_replaces_a_file_it_did_not_write(run, tmp_path):
    users = tmp_path / "notes.html"
    users.write_text("<html>the user's own page</html>")
    result = CliRunner().invoke(cli, ["report", str(run), "--output", str(users)])
    assert result.exit_code == 2 and "not a report of scenecls" in one_error_line(result)
    assert users.read_text() == "<html>the user's own page</html>"
    result = CliRunner().invoke(cli, ["report", str(run), "--output", str(tmp_path)])
    assert result.exit_code == 2 and "give a file name" in one_error_line(result)


@pytest.mark.slow
def test_the_report_of_a_sweep_shows_its_table_and_heat_maps(tmp_path):
    data = write_class_folders(tmp_path / "data", 8, size=40)
    project = tmp_path / "runs"
    grid = ["--backbones", "mobilenet_v2", "--unfreeze", "0", "--dense", "0,1", "--epochs", "1"]
    tiny = ["--weights", "none", "--image-size", "32", "-b", "8"]
    result = CliRunner().invoke(cli, ["sweep", *grid, *tiny, "--data", str(data), "--project", str(project)])
    assert result.exit_code == 0, result.output
    page_file = tmp_path / "sweep.html"
    result = CliRunner().invoke(cli, ["report", str(project / "sweep"), "--output", str(page_file)])
    assert result.exit_code == 0, result.output
    seen = open_in_chromium(page_file, tmp_path / "shot.png")
    assert seen["console_errors"] == [] and seen["page_errors"] == []
    assert [alt for *_, alt in seen["images"]] == ["heatmap_mobilenet_v2"]
    assert seen["overflow"] == {width: 0 for width in WIDTHS}
    assert all(complete and width > 100 for complete, width, *_ in seen["images"])
    text = page_file.read_text()
    assert "Results (2 runs)" in text and "mobilenet_v2-d0-u0" in text and "mobilenet_v2-d1-u0" in text
    assert "best val accuracy" in text and "best_val_accuracy" not in text and "Sweep sweep" not in text
    assert text.count(">folder (no report yet)</a>") == 2  # each run's page linked once it has one
