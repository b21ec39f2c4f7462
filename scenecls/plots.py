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
SWEEP_SPAN = 0.1  # the least range of accuracies a sweep's heat map spreads its colours over
MIN_BIN_IMAGES = 20  # a reliability point of fewer images is noise: neighbouring bins are merged


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


def best_epoch(history: Sequence[dict[str, Any]]) -> int | None:
    """The epoch whose validation accuracy is highest (the first of equals), as training keeps it in
    ``best.keras``; None without validation images. For a history without its run's record: a run's
    own ``best_epoch`` (its state) is the one to mark."""
    scored = [(row["val_accuracy"], -row["epoch"]) for row in history if row.get("val_accuracy") is not None]
    return -max(scored)[1] if scored else None


def plot_curves(
    history: Sequence[dict[str, Any]], path: Path, title: str = "", best: int | None = None
) -> Path:
    """Accuracy and loss per epoch, train and validation, with the start of fine-tuning and the best
    epoch marked: ``best``, the run's recorded one (the model kept), else :func:`best_epoch`."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure(11, 4.2)
    epochs = [row["epoch"] for row in history]
    best = best or best_epoch(history)
    kept = next((row for row in history if row["epoch"] == best), None)
    for ax, metric in zip(figure.subplots(1, 2), ("accuracy", "loss"), strict=True):
        ax.plot(epochs, [row[metric] for row in history], "o-", label=f"train {metric}")
        if any(row[f"val_{metric}"] is not None for row in history):  # none with --val-split 0
            ax.plot(epochs, [_nan(row[f"val_{metric}"]) for row in history], "o-", label=f"val {metric}")
        if kept is not None and kept[f"val_{metric}"] is not None:  # none with --val-split 0
            ax.plot([best], [kept[f"val_{metric}"]], "*", color="#bf8700", markersize=14, zorder=5,
                    label=f"best: epoch {best} (kept)")  # fmt: skip
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


def sample_rows(rows: Sequence[dict[str, Any]], count: int = 16, seed: int = 0) -> tuple[list, str]:
    """Predictions drawn at random in the run's own proportion of right and wrong (at least one wrong
    when there is any), so that the picture looks neither better nor worse than the run; and its title."""
    rng = np.random.default_rng(seed)
    right = [r for r in rows if r["true"] == r["predicted"]]
    wrong = [r for r in rows if r["true"] != r["predicted"]]
    shown = min(count, len(rows))
    n_wrong = min(len(wrong), max(1 if wrong else 0, round(shown * len(wrong) / max(len(rows), 1))))
    n_right = min(len(right), shown - n_wrong)
    chosen = [right[i] for i in sorted(rng.choice(len(right), n_right, replace=False))] if n_right else []
    chosen += [wrong[i] for i in sorted(rng.choice(len(wrong), n_wrong, replace=False))] if n_wrong else []
    accuracy = len(right) / max(len(rows), 1)
    title = (
        f"{len(chosen)} sample predictions in the run's proportion ({accuracy:.0%} right): "
        f"{n_right} right (green), {n_wrong} wrong (red)"
    )
    return chosen, title


def plot_samples(rows: Sequence[dict[str, Any]], path: Path, count: int = 16, seed: int = 0) -> Path:
    """A grid of :func:`sample_rows`, each captioned with its prediction (and the truth when wrong)."""
    chosen, title = sample_rows(rows, count, seed)

    def caption(row):
        ok = row["true"] == row["predicted"]
        text = f"{row['predicted']} {row['confidence']:.0%}" + ("" if ok else f"\n(true: {row['true']})")
        return text, RIGHT if ok else WRONG

    return _image_grid(chosen, path, title, caption)


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
    figure = _figure(max(5.5, 1.2 * len(unfreeze) + 3), 0.8 * len(dense) + 2.2)
    ax = figure.subplots()
    finite = grid[np.isfinite(grid)]
    # The colours span at least SWEEP_SPAN: a grid within 0.4 points is not painted from dark to light.
    high = float(finite.max()) if finite.size else 1.0
    low = min(float(finite.min()), high - SWEEP_SPAN) if finite.size else 0.0
    image = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=low, vmax=high)
    label = what if seeds == 1 else f"{what}, mean of {seeds} seeds"
    figure.colorbar(image, ax=ax, label=label)
    ax.set_xticks(range(len(unfreeze)), unfreeze)
    ax.set_yticks(range(len(dense)), dense)
    ax.set_xlabel("unfrozen blocks")
    ax.set_ylabel("dense layers")
    middle = (low + high) / 2
    for i in range(len(dense)):
        for j in range(len(unfreeze)):
            if np.isfinite(grid[i, j]):
                colour = "black" if grid[i, j] > middle else "white"
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", color=colour, fontsize=9)
    ax.set_title(
        f"{backbone}: {label.replace('val', 'validation')}\ncolours span {low:.3f} to {high:.3f}", fontsize=10
    )
    return _save(figure, path)


def plot_reliability(calibration: dict[str, Any], path: Path, title: str = "") -> Path:
    """The reliability diagram: per confidence bin, the accuracy against the mean confidence (on the
    diagonal when calibrated), as the model is and, when known, before its temperature."""
    figure = _figure(5.5, 6.2)
    ax = figure.subplots()
    ax.plot(
        [0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated (accuracy = confidence)"
    )
    shown = [("as is", calibration, "#0969da", "o-")]
    if calibration.get("before"):
        shown = [("before (T = 1)", calibration["before"], "#bc4c00", "s--"),
                 (f"T = {calibration['temperature']:.2f}", calibration, "#0969da", "o-")]  # fmt: skip
    for label, scores, colour, style in shown:
        bins = merged_bins(scores["bins"])
        ax.plot([row["confidence"] for row in bins], [row["accuracy"] for row in bins], style, color=colour,
                label=f"{label}: ECE {scores['ece']:.3f}")  # fmt: skip
        if label != "before (T = 1)":  # the counts once: the images are the same
            for row in bins:
                ax.annotate(f"{row['count']}", (row["confidence"], row["accuracy"]), xytext=(-6, 2),
                            textcoords="offset points", ha="right", fontsize=7, color=colour)  # fmt: skip
    ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="confidence", ylabel="accuracy",
           title=title or "Reliability")  # fmt: skip
    ax.grid(alpha=0.3)
    # Below the axes, where it cannot hide a point.
    note = f"each point: the images of one confidence range, at least {MIN_BIN_IMAGES} (the number beside)"
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1, fontsize=8, frameon=False,
              title=note, title_fontsize=7)  # fmt: skip
    return _save(figure, path)


def merged_bins(bins: Sequence[dict[str, Any]], least: int = MIN_BIN_IMAGES) -> list[dict[str, Any]]:
    """The equal-width reliability bins merged with their neighbours until each holds ``least`` images
    (the last merges into the one before when too small), with count-weighted confidence and accuracy:
    300 images in 15 bins zig-zag between 0 and 1, the same images in bins of 20 or more do not."""
    merged: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    for row in bins:
        if row["count"]:
            pending.append(row)
        if sum(r["count"] for r in pending) >= least:
            merged.append(_merge(pending))
            pending = []
    if pending:  # too few left for a point of their own: they join the last one
        merged = [*merged[:-1], _merge([*merged[-1:], *pending])]
    return merged


def _merge(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    count = sum(r["count"] for r in rows)
    return {
        "low": rows[0]["low"],
        "high": rows[-1]["high"],
        "count": count,
        "confidence": sum(r["confidence"] * r["count"] for r in rows) / count,
        "accuracy": sum(r["accuracy"] * r["count"] for r in rows) / count,
    }


def plot_risk_coverage(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Accuracy against coverage, answering the most confident images first: what a confidence floor
    (``predict --min-confidence``) buys in accuracy and costs in answers."""
    confidence = np.array([float(row["confidence"]) for row in rows])
    correct = np.array([row["true"] == row["predicted"] for row in rows])
    order = np.argsort(-confidence, kind="stable")
    answered = np.arange(1, len(rows) + 1)
    figure = _figure(6, 4.8)
    ax = figure.subplots()
    curve = np.cumsum(correct[order]) / answered
    ax.plot(answered / max(len(rows), 1), curve, color="#0969da", label="answering the most confident first")
    marked = False
    for floor in (0.5, 0.8, 0.9):
        kept = confidence >= floor
        if kept.any():
            label = None if marked else "--min-confidence P: the images answered and their accuracy"
            ax.plot(kept.mean(), correct[kept].mean(), "o", color="#bc4c00", label=label)
            ax.annotate(f"P = {floor:g}", (kept.mean(), correct[kept].mean()), xytext=(-8, -14),
                        textcoords="offset points", ha="right", fontsize=8, color="#bc4c00")  # fmt: skip
            marked = True
    # The accuracy axis starts at a round value below the lowest point, and says so: a curve between
    # 0.9 and 1 drawn on 0..1 would be a flat line.
    bottom = max(0.0, np.floor((float(curve.min()) if len(curve) else 0.0) * 20) / 20 - 0.05)
    ax.set(xlim=(0, 1.02), ylim=(bottom, 1.005), xlabel="coverage (share of images answered)",
           ylabel=f"accuracy on those answered (axis from {bottom:.2f})",
           title=title or "Accuracy against coverage")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
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
