"""Test accuracy against seconds, one point per recipe: the plot of "Time to accuracy".

Run: python benchmarks/time_to_accuracy.py ROWS.json [ROWS.json ...] [--point "LABEL=SECONDS:ACCURACY"]
                                          [--label RECIPE=TEXT] [--out time-to-accuracy.png] [--title TEXT]

Each ROWS.json is what ``accuracy.py --json`` wrote (best measured with ``--fresh-caches``, so that the
seconds are end to end). Per recipe, the point is the mean over its seeds of the run's seconds and of its
test accuracy; the error bars are one standard deviation across the seeds in each direction. ``--point``
adds a single measured point without error bars (the seed's own pipeline from ``seed_pipeline.py``). The
table the plot is drawn from is printed too, so that the figure can be checked against numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def summarise(rows: list[dict]) -> list[dict]:
    """Per recipe, in the order first seen: seeds, mean and sd of the seconds and of the test accuracy."""
    by_recipe: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_recipe[row["recipe"]].append(row)
    summary = []
    for recipe, mine in by_recipe.items():
        seconds = [r["seconds"] for r in mine]
        tests = [r["test"] for r in mine]
        summary.append({
            "recipe": recipe,
            "seeds": sorted(r["seed"] for r in mine),
            "seconds": statistics.mean(seconds),
            "seconds_sd": statistics.stdev(seconds) if len(seconds) > 1 else 0.0,
            "test": statistics.mean(tests),
            "test_sd": statistics.stdev(tests) if len(tests) > 1 else 0.0,
        })  # fmt: skip
    return summary


def parse_point(text: str) -> dict:
    """``LABEL=SECONDS:ACCURACY`` as a summary row with no spread."""
    label, _, numbers = text.rpartition("=")
    seconds, _, accuracy = numbers.partition(":")
    return {"recipe": label, "seeds": [], "seconds": float(seconds), "seconds_sd": 0.0,
            "test": float(accuracy), "test_sd": 0.0}  # fmt: skip


def plot(summary: list[dict], out: Path, title: str, labels: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    markers = "osD^vP*X<>"
    for index, row in enumerate(summary):
        seeds = f" ({len(row['seeds'])} seeds)" if row["seeds"] else " (1 run)"
        axes.errorbar(row["seconds"], row["test"] * 100, xerr=row["seconds_sd"], yerr=row["test_sd"] * 100,
                      fmt=markers[index % len(markers)], capsize=3, label=labels.get(row["recipe"],
                      row["recipe"]) + seeds)  # fmt: skip
    axes.legend(fontsize=8, loc="lower left")
    axes.set_xscale("log")
    axes.set_xlabel("seconds per run, end to end (log scale)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("rows", nargs="+", type=Path, help="JSON files written by accuracy.py --json")
    parser.add_argument("--point", action="append", default=[], help="LABEL=SECONDS:ACCURACY, drawn as is")
    parser.add_argument("--out", type=Path, default=Path("time-to-accuracy.png"))
    parser.add_argument("--label", action="append", default=[], help="RECIPE=TEXT: the legend's name for it")
    parser.add_argument("--title", default="Test accuracy against time, intel-dev, MobileNetV2, 2 CPU cores")
    args = parser.parse_args()
    rows = [row for path in args.rows for row in json.loads(path.read_text())]
    summary = summarise(rows) + [parse_point(p) for p in args.point]
    print("| recipe | seeds | seconds (mean ± sd) | test accuracy (mean ± sd) |")
    print("|---|---|---|---|")
    for row in summary:
        seeds = ", ".join(map(str, row["seeds"])) or "1 run"
        print(f"| {row['recipe']} | {seeds} | {row['seconds']:.0f} ± {row['seconds_sd']:.0f} | "
              f"{row['test']:.4f} ± {row['test_sd']:.4f} |")  # fmt: skip
    labels = dict(text.split("=", 1) for text in args.label)
    plot(summary, args.out, args.title, labels)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
