"""Pictures of how training went, drawn with matplotlib's object API on the Agg canvas (no display,
no global pyplot state), each written to a PNG file whose path is returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scenecls.data.images import ImageReadError, load_rgb
from scenecls.files import atomic_path

RIGHT, WRONG = "#1a7f37", "#cf222e"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp)
    return path


def _phase_starts(history: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
    starts, previous = [], None
    for row in history:
        if row["phase"] != previous and previous is not None:
            starts.append((row["epoch"], row["phase"]))
        previous = row["phase"]
    return starts


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def plot_curves(history: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Accuracy and loss per epoch, train and validation, with the start of fine-tuning marked."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure(11, 4.2)
    epochs = [row["epoch"] for row in history]
    for ax, metric in zip(figure.subplots(1, 2), ("accuracy", "loss"), strict=True):
        ax.plot(epochs, [row[metric] for row in history], "o-", label=f"train {metric}")
        if any(row[f"val_{metric}"] is not None for row in history):  # none with --val-split 0
            ax.plot(epochs, [_nan(row[f"val_{metric}"]) for row in history], "o-", label=f"val {metric}")
        for epoch, phase in _phase_starts(history):
            ax.axvline(epoch - 0.5, color="grey", linestyle="--", linewidth=1)
            ax.annotate(
                f"{phase} starts",
                (epoch - 0.5, 1),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12),
                textcoords="offset points",
                fontsize=8,
                color="grey",
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_confusion(
    confusion: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str = ""
) -> Path:
    """The confusion matrix as a heatmap of row-normalised rates, annotated with counts."""
    matrix = np.asarray(confusion, dtype=np.float64)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4.5, 0.7 * len(classes) + 2)
    figure = _figure(size + 1, size)
    ax = figure.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, label="fraction of the true class")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            colour = "white" if rates[i, j] > 0.5 else "black"
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", color=colour, fontsize=8)
    ax.set_title(title or "Confusion matrix")
    return _save(figure, path)


def _image_grid(
    rows: Sequence[dict[str, Any]], path: Path, title: str, caption, picture=None, line_height: float = 3.2
) -> Path:
    picture = picture or (lambda row: load_rgb(row["path"]))
    columns = min(4, max(1, len(rows)))
    lines = max(1, -(-len(rows) // columns))
    figure = _figure(3 * columns, line_height * lines)
    axes = np.atleast_1d(figure.subplots(lines, columns)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, row in zip(axes, rows, strict=False):
        try:
            ax.imshow(picture(row))
        except ImageReadError:
            ax.text(0.5, 0.5, "unreadable", ha="center", transform=ax.transAxes)
        text, colour = caption(row)
        ax.set_title(text, fontsize=9, color=colour)
    figure.suptitle(title)
    return _save(figure, path)


def plot_samples(rows: Sequence[dict[str, Any]], path: Path, count: int = 16, seed: int = 0) -> Path:
    """A grid of predictions, half right and half wrong where there are enough of each."""
    rng = np.random.default_rng(seed)
    right = [r for r in rows if r["true"] == r["predicted"]]
    wrong = [r for r in rows if r["true"] != r["predicted"]]
    n_wrong = min(len(wrong), count // 2)
    n_right = min(len(right), count - n_wrong)
    n_wrong = min(len(wrong), count - n_right)
    chosen = [right[i] for i in sorted(rng.choice(len(right), n_right, replace=False))] if n_right else []
    chosen += [wrong[i] for i in sorted(rng.choice(len(wrong), n_wrong, replace=False))] if n_wrong else []

    def caption(row):
        ok = row["true"] == row["predicted"]
        text = f"{row['predicted']} {row['confidence']:.0%}" + ("" if ok else f"\n(true: {row['true']})")
        return text, RIGHT if ok else WRONG

    return _image_grid(chosen, path, "Sample predictions (green right, red wrong)", caption)


def top_losses(rows: Sequence[dict[str, Any]], count: int = 12) -> list[dict[str, Any]]:
    """The ``count`` rows of highest loss, highest first."""
    return sorted(rows, key=lambda r: r["loss"], reverse=True)[:count]


def plot_top_losses(
    rows: Sequence[dict[str, Any]], path: Path, count: int = 12, heatmaps: dict[str, np.ndarray] | None = None
) -> Path:
    """The images the model got most wrong, highest loss first; with ``heatmaps`` (path -> the image
    with its Grad-CAM map over it, see :func:`scenecls.explain.blend`), each beside its heat map."""
    worst = top_losses(rows, count)

    def caption(row):
        text = f"{row['predicted']} / {row['true']}\nloss {row['loss']:.2f}, p {row['confidence']:.2f}"
        return text, RIGHT if row["true"] == row["predicted"] else WRONG

    def picture(row):
        image = load_rgb(row["path"])
        heat = (heatmaps or {}).get(row["path"])
        if heat is None:
            return image
        from PIL import Image

        resized = np.asarray(Image.fromarray(image).resize((heat.shape[1], heat.shape[0])))
        return np.concatenate([resized, np.full((heat.shape[0], 4, 3), 255, np.uint8), heat], axis=1)

    title = "Highest losses (predicted / true)" + (", with where the model looked" if heatmaps else "")
    # An image beside its map is twice as wide as high: lines half as high keep the pictures' size.
    return _image_grid(worst, path, title, caption, picture, line_height=2.0 if heatmaps else 3.2)


def plot_compare(histories: dict[str, Sequence[dict[str, Any]]], path: Path) -> Path:
    """Several runs' validation accuracy and loss overlaid."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure(11, 4.2)
    for ax, metric in zip(figure.subplots(1, 2), ("val_accuracy", "val_loss"), strict=True):
        for label, history in histories.items():
            ax.plot(
                [r["epoch"] for r in history], [_nan(r[metric]) for r in history], "o-", label=label,
                markersize=3,
            )  # fmt: skip
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric.replace("_", " "))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle("Runs compared")
    return _save(figure, path)


def plot_sweep_heatmap(rows: Sequence[dict[str, Any]], backbone: str, path: Path) -> Path:
    """Best validation accuracy of one backbone's runs: dense layers down, unfrozen blocks across; the
    mean over a cell's seeds when the sweep has several. Runs without validation (``--val-split 0``)
    show their test accuracy instead."""
    mine = [r for r in rows if r["backbone"] == backbone]
    metric, what = "best_val_accuracy", "best val accuracy"
    if all(r[metric] is None for r in mine):
        metric, what = "test_accuracy", "test accuracy"
    dense = sorted({int(r["dense"]) for r in mine})
    unfreeze = sorted(
        {str(r["unfreeze"]) for r in mine}, key=lambda u: (not u.isdigit(), int(u) if u.isdigit() else 0, u)
    )
    cells: dict[tuple[int, int], list[float]] = {}
    for r in mine:
        if r[metric] is not None:
            cell = (dense.index(int(r["dense"])), unfreeze.index(str(r["unfreeze"])))
            cells.setdefault(cell, []).append(float(r[metric]))
    grid = np.full((len(dense), len(unfreeze)), np.nan)
    for cell, values in cells.items():
        grid[cell] = float(np.mean(values))
    seeds = max((len(v) for v in cells.values()), default=1)
    figure = _figure(1.2 * len(unfreeze) + 3, 0.8 * len(dense) + 2)
    ax = figure.subplots()
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    label = what if seeds == 1 else f"{what}, mean of {seeds} seeds"
    figure.colorbar(image, ax=ax, label=label)
    ax.set_xticks(range(len(unfreeze)), unfreeze)
    ax.set_yticks(range(len(dense)), dense)
    ax.set_xlabel("unfrozen blocks")
    ax.set_ylabel("dense layers")
    finite = grid[np.isfinite(grid)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i in range(len(dense)):
        for j in range(len(unfreeze)):
            if np.isfinite(grid[i, j]):
                colour = "black" if grid[i, j] > middle else "white"
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", color=colour, fontsize=9)
    ax.set_title(f"{backbone}: {label.replace('val', 'validation')}")
    return _save(figure, path)


def plot_reliability(calibration: dict[str, Any], path: Path, title: str = "") -> Path:
    """The reliability diagram: per confidence bin, the accuracy against the mean confidence (on the
    diagonal when calibrated), as the model is and, when known, before its temperature."""
    figure = _figure(5.5, 5.2)
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    shown = [("as is", calibration, "#0969da", "o-")]
    if calibration.get("before"):
        shown = [("before (T = 1)", calibration["before"], "#bc4c00", "s--"),
                 (f"T = {calibration['temperature']:.2f}", calibration, "#0969da", "o-")]  # fmt: skip
    for label, scores, colour, style in shown:
        bins = [row for row in scores["bins"] if row["count"]]
        ax.plot([row["confidence"] for row in bins], [row["accuracy"] for row in bins], style, color=colour,
                label=f"{label}: ECE {scores['ece']:.3f}")  # fmt: skip
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=title or "Reliability")
    ax.legend(loc="upper left")
    return _save(figure, path)


def plot_risk_coverage(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Accuracy against coverage, answering the most confident images first: what a confidence floor
    (``predict --min-confidence``) buys in accuracy and costs in answers."""
    confidence = np.array([float(row["confidence"]) for row in rows])
    correct = np.array([row["true"] == row["predicted"] for row in rows])
    order = np.argsort(-confidence, kind="stable")
    answered = np.arange(1, len(rows) + 1)
    figure = _figure(6, 4.5)
    ax = figure.subplots()
    ax.plot(answered / max(len(rows), 1), np.cumsum(correct[order]) / answered, color="#0969da")
    for floor in (0.5, 0.8, 0.9):
        kept = confidence >= floor
        if kept.any():
            ax.plot(kept.mean(), correct[kept].mean(), "o", color="#bc4c00")
            ax.annotate(f" {floor:g}", (kept.mean(), correct[kept].mean()), fontsize=8)
    ax.set(xlim=(0, 1.02), xlabel="coverage (share of images answered)", ylabel="accuracy on those answered",
           title=title or "Accuracy against coverage")  # fmt: skip
    ax.grid(alpha=0.3)
    return _save(figure, path)


def plot_lr_find(result, path: Path) -> Path:
    """Loss against learning rate (log scale) from the range test, the suggested rate marked."""
    figure = _figure(6.5, 4.2)
    ax = figure.subplots()
    ax.plot(result.lrs[: len(result.losses)], result.losses, color="#0969da")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    for value, label, colour in (
        (result.suggestion, f"suggested {result.suggestion:.1e}", RIGHT),
        (result.min_loss_lr, f"lowest loss {result.min_loss_lr:.1e}", "#6e7781"),
        (result.edge_lr, f"edge {result.edge_lr:.1e}", "#bf8700"),
    ):
        ax.axvline(value, color=colour, linestyle="--", linewidth=1, label=label)
    ax.legend(loc="best")
    ax.set_title(f"Learning-rate range test ({result.phase})")
    return _save(figure, path)
