"""Accuracy of named training recipes on real images, with real weights, over several seeds.

Run: python benchmarks/accuracy.py [--recipes seed,default] [--seeds 0,1] [--data intel-dev]
                                   [--weights PATH] [--markdown] [--tta] [--ensemble]
                                   [--fresh-caches] [--json FILE]

A recipe is a set of `scenecls train` options; each runs as a user runs it (`scenecls train ... --seed S`
in a fresh process) on the data's own test split, then the table gives, per recipe and seed, the best
validation accuracy, the test accuracy and the seconds of each phase, and per recipe the mean test
accuracy and its spread (max - min) over the seeds. `--data` is intel-dev (the default: unpacked from
../shared with `fetch-data --from`), intel-mini, or a folder; `--weights` defaults to the shared real
MobileNetV2 weights. `--tta` also evaluates each run's best model with `scenecls evaluate --tta`;
`--ensemble` averages each recipe's seeds with `scenecls ensemble` and gives that model's test accuracy.
`--fresh-caches` gives every run an empty SCENECLS_HOME, so that each builds its feature and activation
caches as a user's first run does (the seconds are then end to end; without it, later runs reuse what
earlier ones cached). `--json FILE` also writes the rows, for `time_to_accuracy.py` to plot.
Tune recipes on intel-dev only: its test part is the test set.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
from pathlib import Path

from _common import SHARED_WEIGHTS, machine, named_dataset, run_scenecls

BASE = ["--backbone", "mobilenet_v2", "--no-export"]
# The seed's augmentation ranges (ImageDataGenerator's rotation 40, shifts 0.2, zoom 0.2, shear 0.2
# degrees, flips); the defaults are gentler.
SEED_AUGMENTATION = ["--rotation", "40", "--shift", "0.2", "--zoom", "0.2", "--shear", "0.2", "--flip"]

RECIPES: dict[str, list[str]] = {
    # The seed's training: fresh augmentation in every epoch of phase 1 (no feature cache), then fine-tuning.
    "seed": ["--no-cache", "--finetune-lr", "1e-4", "--lr-schedule", "constant", *SEED_AUGMENTATION],
    # Today's defaults: phase 1 on cached, un-augmented features, then fine-tuning on cached activations
    # below the unfrozen blocks, of 2 augmented copies of each image.
    "default": [],
    # The seed's rates and augmentation, the defaults until cosine decay from 2e-4 measured better:
    # every table in benchmarks/README.md before "The fine-tuning rate and its schedule" ran on them.
    "seed-rates": ["--finetune-lr", "1e-4", "--lr-schedule", "constant", *SEED_AUGMENTATION],
    # Today's rates with the seed's augmentation: the defaults until gentler augmentation measured better.
    "seed-aug": SEED_AUGMENTATION,
    # Fine-tuning on images, freshly augmented every epoch (the default before the activation cache).
    "finetune-images": ["--finetune-copies", "0"],
    # Fewer or more augmented copies in the activation cache.
    "finetune-copies-1": ["--finetune-copies", "1"],
    "finetune-copies-4": ["--finetune-copies", "4"],
    # Cached activation maps flipped left-right or cropped at random every epoch.
    "finetune-flip": ["--finetune-map-aug", "flip"],
    "finetune-crop": ["--finetune-map-aug", "crop"],
    "finetune-copies-4-flip": ["--finetune-copies", "4", "--finetune-map-aug", "flip"],
    "size-224-flip": ["--image-size", "224", "--finetune-map-aug", "flip"],
    # Fewer copies, more epochs; the same copies, more epochs.
    "finetune-copies-1-epochs-15": ["--finetune-copies", "1", "--finetune-epochs", "15"],
    "finetune-copies-2-epochs-15": ["--finetune-copies", "2", "--finetune-epochs", "15"],
    # A smaller head than the seed's 3 dense layers (the sweep's other columns).
    "dense-1": ["--dense", "1"],
    "dense-2": ["--dense", "2"],
    # Deeper fine-tuning: the last 8 or 10 of MobileNetV2's 18 blocks (the cut moves down with them).
    "unfreeze-8": ["--unfreeze", "8"],
    "unfreeze-10": ["--unfreeze", "10"],
    # Shallower fine-tuning: the last 3 blocks (the cut at 5x5, each step about 1.7x as fast as at 5).
    "unfreeze-3": ["--unfreeze", "3"],
    # Only the last block fine-tuned, on the activation cache and on images.
    "unfreeze-1": ["--unfreeze", "1"],
    "unfreeze-1-images": ["--unfreeze", "1", "--finetune-copies", "0"],
    # Phase 1 on cached features with 2 augmented copies besides each image (the phase-1/2 shock).
    "cache-aug-2": ["--cache-aug", "2"],
    "cache-aug-1": ["--cache-aug", "1"],
    # A lower fine-tuning rate.
    "finetune-lr-5e-5": ["--finetune-lr", "5e-5"],
    # Cosine decay of each phase's rate.
    "cosine": ["--lr-schedule", "cosine"],
    "finetune-lr-2e-4-cosine": ["--finetune-lr", "2e-4", "--lr-schedule", "cosine"],
    "finetune-lr-3e-4-cosine": ["--finetune-lr", "3e-4", "--lr-schedule", "cosine"],
    "finetune-lr-2e-4": ["--finetune-lr", "2e-4"],
    "finetune-20-cosine": ["--finetune-epochs", "20", "--lr-schedule", "cosine"],
    # A wider head: 3 x 256 units instead of the seed's 3 x 64.
    "units-256": ["--units", "256"],
    # ImageNet's own input size: the 150-pixel images upscaled to 224.
    "size-224": ["--image-size", "224"],
    # The same, fine-tuning on freshly augmented images instead of the activation cache.
    "size-224-images": ["--image-size", "224", "--finetune-copies", "0"],
    # Each phase's rate rising from 0 over its first epoch (a gentler start of fine-tuning).
    "warmup-1": ["--warmup-epochs", "1"],
    # Label smoothing.
    "label-smoothing-0.1": ["--label-smoothing", "0.1"],
    # lr-find's suggestion for the head phase on intel-dev (3.9e-3 against the default 1e-3).
    "head-lr-4e-3": ["--lr", "4e-3"],
    # Twice the fine-tuning epochs.
    "finetune-20": ["--finetune-epochs", "20"],
    # Shorter schedules (the cosine decays to 0 over each phase, whatever its length): time to accuracy.
    "finetune-10": ["--finetune-epochs", "10"],
    "finetune-6": ["--finetune-epochs", "6"],
    "finetune-4": ["--finetune-epochs", "4"],
    "head-5": ["--epochs", "5"],
    "head-3": ["--epochs", "3"],
    "head-5-finetune-6": ["--epochs", "5", "--finetune-epochs", "6"],
    "head-5-finetune-4": ["--epochs", "5", "--finetune-epochs", "4"],
    "head-3-finetune-4": ["--epochs", "3", "--finetune-epochs", "4"],
    # Early stopping on validation accuracy: each phase stops after 2 epochs without a better one (the
    # cosine still planned over 10 epochs) and goes on from its best.
    "patience-2": ["--patience", "2"],
    # The whole backbone fine-tuned at a low rate.
    "unfreeze-all-3e-5": ["--unfreeze", "all", "--finetune-lr", "3e-5"],
    # MixUp and CutMix (batch-level blending of images and labels; MixUp of the features in phase 1).
    "mixup-0.2": ["--mixup", "0.2"],
    "cutmix-1.0": ["--cutmix", "1.0"],
    # A moving average of the weights (about 500 steps, 3 epochs of intel-dev) validated and saved.
    "ema-0.998": ["--ema", "0.998"],
    # Every training image trained on, none held out for validation: the last epoch is the model.
    "all-data": ["--val-split", "0"],
    "all-data-ema-0.998": ["--val-split", "0", "--ema", "0.998"],
    "all-data-cosine": ["--val-split", "0", "--lr-schedule", "cosine"],
    # The moving average at the ImageNet input size.
    "ema-0.998-size-224": ["--ema", "0.998", "--image-size", "224"],
    # The two that scored best alone (seed 0), together.
    "size-224-head-lr-4e-3": ["--image-size", "224", "--lr", "4e-3"],
    # Gentler augmentation than the seed's (rotation 40, shift 0.2, zoom 0.2): upright scenes.
    # aug-light is today's default, spelled out.
    "aug-light": ["--rotation", "10", "--shift", "0.1", "--zoom", "0.1"],
    "aug-no-rotation": ["--rotation", "0", "--shift", "0.2", "--zoom", "0.2"],
    "aug-flip-only": ["--rotation", "0", "--shift", "0", "--zoom", "0", "--shear", "0"],
    # A real shear: the default's 0.2 is the seed's ImageDataGenerator value, which it reads as degrees.
    "shear-10": ["--shear", "10"],
    "shear-0": ["--shear", "0"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipes", default="seed,default")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--data", default="intel-dev")
    parser.add_argument("--weights", default=str(SHARED_WEIGHTS))
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument(
        "--tta", action="store_true", help="also evaluate each run's best model on test with --tta"
    )
    parser.add_argument(
        "--ensemble", action="store_true", help="also average each recipe's seeds with scenecls ensemble"
    )
    parser.add_argument(
        "--fresh-caches", action="store_true", help="an empty cache for every run: seconds end to end"
    )
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        sys.exit(f"unknown recipes: {', '.join(unknown)}; known: {', '.join(RECIPES)}")
    seeds = [int(s) for s in args.seeds.split(",")]

    work = Path(tempfile.mkdtemp(prefix="scenecls-accuracy-"))
    data = named_dataset(args.data, work)
    print(f"data: {args.data}; weights: {args.weights}; runs in {work / 'runs'}; machine: {machine()}")
    rows = []
    for recipe in recipes:
        for seed in seeds:
            command = ["train", "--data", str(data), *BASE, "--weights", args.weights, *RECIPES[recipe],
                       "--seed", str(seed), "--project", str(work / "runs"), "--name", f"{recipe}-s{seed}",
                       "--format", "json"]  # fmt: skip
            home = work / "home" / f"{recipe}-s{seed}" if args.fresh_caches else work / "home"
            result = json.loads(run_scenecls(command, home))
            metrics = json.loads((Path(result["run_dir"]) / "metrics.json").read_text())
            step = phase_step(Path(result["run_dir"]) / "history.csv")
            row = {
                "recipe": recipe,
                "seed": seed,
                "val": result["best_val_accuracy"],
                "test": result["test_accuracy"],
                "phases": metrics["phase_seconds"],
                "seconds": result["seconds"],
                "step": step,
                "caches": caches(metrics),
                "command": "scenecls " + " ".join(command[:1] + command[3:-4]),
            }
            if args.tta:
                evaluated = run_scenecls(["evaluate", result["run_dir"], "--tta", "--format", "json"], home)
                row["test_tta"] = json.loads(evaluated)["accuracy"]
            rows.append(row)
            if args.json:  # after every run, so that an interrupted benchmark keeps what it measured
                args.json.write_text(json.dumps(rows, indent=1))
            print(
                f"{recipe:18s} seed {seed}: val {fmt(row['val'])} test {row['test']:.4f} "
                + (f"with --tta {row['test_tta']:.4f} " if args.tta else "")
                + f"phase step {step:+.4f} caches {row['caches']} "
                f"({row['seconds']:.0f} s: {', '.join(f'{k} {v:.0f} s' for k, v in row['phases'].items())})",
                flush=True,
            )
    ensembles = {}
    if args.ensemble:
        for recipe in recipes:
            members = [str(work / "runs" / f"{recipe}-s{seed}") for seed in seeds]
            if len(members) > 1:
                command = ["ensemble", *members, "--project", str(work / "runs"), "--name",
                           f"{recipe}-ensemble", "--no-export", "--format", "json"]  # fmt: skip
                ensembles[recipe] = json.loads(run_scenecls(command, work / "home"))["test_accuracy"]
                print(f"{recipe:18s} ensemble of {len(members)} seeds: test {ensembles[recipe]:.4f}")
    print()
    if args.markdown:
        print("| recipe | options | seeds | val accuracy | test accuracy (mean) | test spread | seconds |")
        print("|---|---|---|---|---|---|---|")
    for recipe in recipes:
        mine = [r for r in rows if r["recipe"] == recipe]
        tests = [r["test"] for r in mine]
        vals = [r["val"] for r in mine if r["val"] is not None]
        spread = max(tests) - min(tests)
        seconds = statistics.mean(r["seconds"] for r in mine)
        options = " ".join(RECIPES[recipe]) or "(defaults)"
        extra = f", with --tta {statistics.mean(r['test_tta'] for r in mine):.4f}" if args.tta else ""
        extra += f", ensemble {ensembles[recipe]:.4f}" if recipe in ensembles else ""
        if args.markdown:
            print(
                f"| {recipe} | `{options}` | {len(mine)} | {fmt(mean(vals))} | "
                f"{statistics.mean(tests):.4f}{extra} | {spread:.4f} | {seconds:.0f} |"
            )
        else:
            print(
                f"{recipe:18s} {len(mine)} seed(s): val {fmt(mean(vals))}, test "
                f"{statistics.mean(tests):.4f} (spread {spread:.4f}){extra}, {seconds:.0f} s"
            )


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def mean(values: list[float]) -> float | None:
    """The mean, or None for no values (runs without validation have no val accuracy)."""
    return statistics.mean(values) if values else None


def caches(metrics: dict) -> str:
    """``features/activations``: what the run did with each cache (built, reused, off or -)."""
    activations = ",".join(metrics.get("activation_cache", {}).values()) or "-"
    return f"{metrics.get('feature_cache')}/{activations}"


def phase_step(history: Path) -> float:
    """Validation accuracy after the first fine-tuning epoch minus after the last head epoch: the
    phase-1-to-2 shock when negative (0.0 when the run has no such pair or no validation)."""
    import csv

    with open(history, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for before, after in itertools.pairwise(rows):
        if before["phase"] == "head" and after["phase"] != "head" and after["val_accuracy"]:
            return float(after["val_accuracy"]) - float(before["val_accuracy"])
    return 0.0


if __name__ == "__main__":
    main()
