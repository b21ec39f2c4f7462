"""One self-contained HTML page per run (or sweep): everything worth seeing, in a file that opens anywhere.

The page holds its pictures inline (PNG as ``data:`` addresses), its style in a ``<style>`` element and
no script at all, so it needs no network, no server and nothing beside it: a file to mail, attach to a
ticket or keep with the run. For a run: its summary and options, learning curves, per-class table,
confusion matrix, reliability diagram, accuracy against coverage, and the highest losses (beside their
Grad-CAM heat maps when the model is given). For a sweep: its results table and heat maps.

The page is made from the run folder's files; evaluating the run first (when it has no
``evaluation.json``) and the heat maps are the caller's (the command's) to do, so this module needs
no TensorFlow.
"""

from __future__ import annotations

import base64
import html
import os
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from scenecls import __version__, plots, runs
from scenecls.errors import UsageError
from scenecls.files import check_output_file, read_head

PAGE = "report.html"  # a run's or sweep's page, in its folder unless --output says otherwise
GENERATOR = f"scenecls report {__version__}"
MARK = '<meta name="generator" content="scenecls report'  # how a page of ours starts its head

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #1f2328; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
td, th { padding: 0.25em 0.7em; border: 1px solid #d0d7de; }
th { background: #f6f8fa; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; border: 1px solid #d0d7de; margin: 0.3em 0; }
.muted { color: #656d76; }
details { margin: 0.5em 0 1em; }
.pair { display: flex; gap: 1em; flex-wrap: wrap; }
.pair img { max-width: calc(50% - 0.5em); }
.wide { overflow-x: auto; max-width: 100%; }
p, h1, table.kv td { overflow-wrap: anywhere; }  /* long paths wrap; numbers and headings do not */
@media (max-width: 700px) {
  body { margin: 1em 0.6em; font-size: 14px; }
  .pair img { max-width: 100%; }
}
"""


def is_sweep_folder(folder: Path) -> bool:
    return (folder / "results.json").is_file() and not (folder / runs.CONFIG).is_file()


def write_report(folder: Path, output: Path, *, heatmaps: dict[str, Any] | None = None) -> Path:
    """The page for the run or sweep in ``folder``, written to ``output`` (atomically). ``output`` may
    replace only a page this wrote (its ``generator`` mark): any other file is refused."""
    check_output(output)
    here = output.absolute().parent  # links to other runs' pages are relative to this page
    body = _sweep_page(folder, here) if is_sweep_folder(folder) else _run_page(folder, heatmaps, here)
    title = html.escape(f"{runs.run_label(folder)}: scenecls report")
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head>{MARK} {__version__}">\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>{STYLE}</style></head>\n<body>\n{body}\n"
        f'<p class="muted">Made by {GENERATOR} on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>\n'
        f"</body></html>\n"
    )
    runs.write_atomic(output, page)
    return output


def check_output(output: Path) -> None:
    """Refuse an ``output`` that is a folder, a link, a device or FIFO, or a file this did not write."""
    check_output_file(output, "--output")
    if output.exists():
        start = read_head(output).decode("utf-8", errors="replace")
        if MARK not in start:
            raise UsageError(f"--output {output} exists and is not a report of scenecls: give a new file")


# ------------------------------------------------------------------------------------------ a run


def _run_page(run_dir: Path, heatmaps: dict[str, Any] | None, here: Path) -> str:
    run = runs.Run(run_dir)
    config, metrics, evaluation = run.recorded, run.optional(runs.METRICS), run.optional(runs.EVALUATION)
    state = run.state.to_dict() if run.has(runs.STATE) else {}
    rows = runs.read_rows_csv(run_dir / runs.PREDICTIONS) if run.has(runs.PREDICTIONS) else []
    history = run.history
    parts = [
        f"<h1>{html.escape(runs.run_label(run_dir))}</h1>",
        f'<p class="muted">{html.escape(str(run_dir))}</p>',
        _summary(config, metrics, state),
    ]
    members = (config.get("ensemble") or {}).get("members") or []
    if members:
        parts.append(_members(members, metrics, here))
    if config.get("distillation"):
        parts.append(_teacher(config["distillation"], config, metrics, here))
    with tempfile.TemporaryDirectory(prefix="scenecls-report-") as scratch:
        draw = _drawer(Path(scratch))
        if history:
            best = state.get("best_epoch")  # the run's own record of the model it kept
            parts += [
                "<h2>Learning curves</h2>",
                draw(lambda p: plots.plot_curves(history, p, best=best), "Learning curves"),
            ]
        if evaluation:
            parts.append(_evaluation(evaluation, rows, draw, heatmaps))
        else:
            parts.append(
                '<p class="muted">Not evaluated yet: no per-class table, confusion matrix or calibration.</p>'
            )
    parts.append(_options(config))
    return "\n".join(parts)


def _summary(config: dict, metrics: dict, state: dict) -> str:
    calibration = metrics.get("calibration") or {}
    test = calibration.get("test", {})
    not_applied = calibration.get("not_applied")
    cells = [
        ("status", state.get("status", "-")),
        ("backbone", config.get("backbone")),
        ("data", config.get("data_resolved") or config.get("data")),
        ("classes", ", ".join(config.get("classes", []))),
        (
            "images (train / val / test)",
            " / ".join(str(config.get("images", {}).get(k, "-")) for k in ("train", "val", "test")),
        ),
        ("best validation accuracy", _number(metrics.get("best_val_accuracy"))),
        ("best epoch", _best_epoch(metrics)),
        ("test accuracy", _number(metrics.get("test_accuracy"))),
        (
            "temperature",
            _number(metrics.get("temperature"), 3) + (f" (left at 1: {not_applied})" if not_applied else ""),
        ),
        (
            "test ECE before / after calibration",
            f"{_number(test.get('before', {}).get('ece'))} / {_number(test.get('after', {}).get('ece'))}"
            if test
            else "-",
        ),
        ("epochs", metrics.get("epochs", state.get("epoch", "-"))),
        ("seconds", _number(metrics.get("seconds"), 0)),
    ]
    if config.get("ensemble"):  # it did not train: no epochs of its own
        cells = [c for c in cells if c[0] not in ("best validation accuracy", "best epoch", "epochs")]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(human(v))}</td></tr>" for k, v in cells)
    return f'<h2>Summary</h2><div class="wide"><table class="kv">{rows}</table></div>'


def _best_epoch(metrics: dict) -> str:
    epoch, phase = metrics.get("best_epoch"), metrics.get("best_phase")
    if not epoch:
        return "-"
    return f"{epoch} ({phase})" if phase else str(epoch)


def _members(members: list[str], metrics: dict, here: Path) -> str:
    """An ensemble's members side by side: each one's recipe and test accuracy, linked to its page."""
    rows = [["member", "backbone", "seed", "test accuracy", "page"]]
    accuracies = metrics.get("member_test_accuracy") or []
    for i, member in enumerate(members):
        folder = Path(member)
        recorded = runs.Run(folder).optional(runs.CONFIG) if folder.is_dir() else {}
        accuracy = accuracies[i] if i < len(accuracies) else None
        link = _page_link(folder, here)
        rows.append([folder.name, recorded.get("backbone"), recorded.get("seed"), accuracy, link])
    ensemble = ["ensemble", "", "", metrics.get("test_accuracy"), ""]
    return f"<h2>Members ({len(members)})</h2>" + _table([*rows, ensemble], raw_columns={4})


def _teacher(record: dict, config: dict, metrics: dict, here: Path) -> str:
    """A student's teacher beside it: what each is and scores on the test images, and what it learnt from."""
    teacher = Path(record.get("teacher") or "")
    kind = "ensemble" if record.get("teacher_is_ensemble") else "run"
    made = " (trained first, for this student)" if record.get("teacher_trained_first") else ""
    rows = [
        ["", "model", "test accuracy", "page"],
        [
            f"teacher ({kind}){made}",
            record.get("teacher_backbone"),
            record.get("teacher_test_accuracy"),
            _page_link(teacher, here) if teacher.is_dir() else "-",
        ],
        ["student (this run)", config.get("backbone"), metrics.get("test_accuracy"), ""],
    ]
    used, found = record.get("unlabelled_used", 0), record.get("unlabelled_images")
    if record.get("unlabelled"):
        source = (
            f"{_count(record.get('labelled_images'))} labelled images and {_count(used)} of the "
            f"{_count(found)} unlabelled images in "
            f"{record['unlabelled']} ({record.get('targets')} targets"
            + (
                f"; {record['unlabelled_copies_of_labelled']} copies of labelled images left out"
                if record.get("unlabelled_copies_of_labelled")
                else ""
            )
            + ")"
        )
    else:
        source = f"{_count(record.get('labelled_images'))} labelled images, with the teacher's probabilities"
    by_class = record.get("unlabelled_by_class") or {}
    classes = ", ".join(f"{name} {n}" for name, n in by_class.items())
    return (
        "<h2>Teacher and student</h2>"
        + _table(rows, raw_columns={3})
        + f"<p>Learnt from {html.escape(source)}.</p>"
        + (
            f'<p class="muted">The teacher\'s classes of the unlabelled images: {html.escape(classes)}</p>'
            if classes
            else ""
        )
    )


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _page_link(folder: Path, here: Path) -> str:
    """A link to the report page in ``folder``, relative to this page; the folder when it has none yet."""
    page = folder / PAGE
    target = page if page.is_file() else folder
    try:
        relative = os.path.relpath(target, here)
    except ValueError:  # another drive
        relative = str(target)
    label = "report" if page.is_file() else "folder (no report yet)"
    return f'<a href="{html.escape(Path(relative).as_posix())}">{label}</a>'


def _options(config: dict) -> str:
    hidden = ("classes", "unfreeze_reports", "versions", "ensemble", "distillation")
    shown = {k: v for k, v in config.items() if k not in hidden}
    rows = "".join(
        f"<tr><th>{html.escape(str(k).replace('_', ' '))}</th><td>{html.escape(human(v))}</td></tr>"
        for k, v in sorted(shown.items())
    )
    versions = ", ".join(f"{k} {v}" for k, v in (config.get("versions") or {}).items())
    return (
        f"<h2>Options</h2><details><summary>Every option of the run ({len(shown)})</summary>"
        f'<div class="wide"><table class="kv">{rows}</table></div></details>'
        f'<p class="muted">{html.escape(versions)}</p>'
    )


def human(value: Any) -> str:
    """A recorded value as a person reads it: no Python reprs (``None``, ``True``, ``{'a': 1}``)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{str(k).replace('_', ' ')} {human(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(human(v) for v in value) or "-"
    return str(value)


def _evaluation(evaluation: dict, rows: list[dict], draw: Callable, heatmaps: dict | None) -> str:
    split, classes = evaluation.get("split", ""), evaluation.get("classes", [])
    parts = [
        f"<h2>On the {html.escape(split)} split ({evaluation.get('images', 0)} images)</h2>",
        f"<p>Accuracy <b>{_number(evaluation.get('accuracy'))}</b>, top-{evaluation.get('top_k')} "
        f"{_number(evaluation.get('top_k_accuracy'))}, loss {_number(evaluation.get('loss'))}.</p>",
    ]
    table = [["class", "precision", "recall", "f1", "support"]]
    table += [
        [r["class"], r["precision"], r["recall"], r["f1"], r["support"]]
        for r in evaluation.get("per_class", [])
    ]
    parts.append(_table(table))
    title = f"{split} accuracy {evaluation.get('accuracy', 0):.4f}"
    parts.append(
        draw(
            lambda p: plots.plot_confusion(evaluation["confusion"], classes, p, title=title),
            "Confusion matrix",
        )
    )
    calibration = evaluation.get("calibration")
    if calibration:
        parts.append("<h2>Can its confidence be trusted?</h2>")
        before = calibration.get("before")
        now = f"after (T = {calibration['temperature']:.3f})" if before else "as is"
        scores = [["score", *(["before (T = 1)"] if before else []), now]]
        for name, key in (
            ("expected calibration error", "ece"),
            ("negative log-likelihood", "nll"),
            ("Brier score", "brier"),
        ):
            scores.append([name, *([before[key]] if before else []), calibration[key]])
        parts.append(_table(scores))
        coverage = [["min confidence", "coverage", "accuracy"]]
        coverage += [
            [r["min_confidence"], r["coverage"], r["accuracy"]] for r in evaluation.get("coverage", [])
        ]
        parts.append(
            '<div class="pair">'
            + draw(lambda p: plots.plot_reliability(calibration, p), "Reliability diagram")
            + (draw(lambda p: plots.plot_risk_coverage(rows, p), "Accuracy against coverage") if rows else "")
            + "</div>"
        )
        parts.append(
            "<p>Accuracy against coverage: below a floor, <code>predict --min-confidence</code> "
            "answers <code>unknown</code>.</p>" + _table(coverage)
        )
    if rows:
        parts.append("<h2>Highest losses</h2>")
        parts.append(draw(lambda p: plots.plot_top_losses(rows, p, heatmaps=heatmaps), "Highest losses"))
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------ a sweep


SWEEP_COLUMNS = {  # results.json's fields as the page heads them; the rest are in results.csv
    "run": "run",
    "backbone": "backbone",
    "dense": "dense",
    "unfreeze": "unfrozen blocks",
    "seed": "seed",
    "best_val_accuracy": "best val accuracy",
    "test_accuracy": "test accuracy",
    "epochs": "epochs",
    "seconds": "seconds",
}


def _sweep_page(folder: Path, here: Path) -> str:
    rows = runs.read_json(folder / "results.json")
    if not isinstance(rows, list):
        raise UsageError(f"{folder / 'results.json'} is not a sweep's results table")
    parts = [
        f"<h1>Sweep of {len(rows)} runs</h1>",
        f'<p class="muted">{html.escape(str(folder))}; every column in results.csv beside it</p>',
        f"<h2>Results ({len(rows)} runs)</h2>",
    ]
    if rows:
        columns = [c for c in SWEEP_COLUMNS if c in rows[0]]
        table = [[SWEEP_COLUMNS[c] for c in columns] + ["page"]]
        for row in rows:
            cells = [row.get(c) for c in columns]
            if isinstance(cells[-1], float) and columns[-1] == "seconds":
                cells[-1] = round(cells[-1])
            table.append([*cells, _page_link(folder / str(row.get("run")), here)])
        parts.append(_table(table, raw_columns={len(table[0]) - 1}))
    for picture in sorted(folder.glob("heatmap_*.png")):
        parts += [
            f"<h2>Heat map: {html.escape(picture.stem.removeprefix('heatmap_'))}</h2>",
            _img(picture.read_bytes(), picture.stem),
        ]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------ helpers


def _drawer(scratch: Path) -> Callable[[Callable[[Path], Path], str], str]:
    """``draw(plot, alt)``: the ``<img>`` of what ``plot(path)`` draws, inline."""
    count = iter(range(10_000))

    def draw(plot: Callable[[Path], Path], alt: str) -> str:
        path = plot(scratch / f"figure{next(count)}.png")
        return _img(path.read_bytes(), alt)

    return draw


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _table(rows: list[list[Any]], raw_columns: set[int] = frozenset()) -> str:
    """A table, headings first; cells of ``raw_columns`` are HTML already (links)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in rows[0])
    body = "".join(
        "<tr>"
        + "".join(f"<td>{v}</td>" if i in raw_columns else _cell(v) for i, v in enumerate(row))
        + "</tr>"
        for row in rows[1:]
    )
    return f'<div class="wide"><table><tr>{head}</tr>{body}</table></div>'


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return f"<td>{human(value)}</td>"
    if isinstance(value, int | float):
        return f'<td class="n">{_number(value)}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def _number(value: Any, places: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    return str(value) if isinstance(value, int) else f"{value:.{places}f}"
