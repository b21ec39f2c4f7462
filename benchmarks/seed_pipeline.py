"""The seed's own training pipeline, rebuilt as the reference, and (``--compare``) ``scenecls train`` beside
it on the same data, weights and seed: each phase's seconds, the totals, the ratio, both test accuracies.

Run: python benchmarks/seed_pipeline.py [--data intel-dev] [--weights PATH] [--seed 0] [--compare]
                                        [--epochs 10] [--finetune-epochs 10] [--json]
                                        [--fractions 0.25,0.5,1 [--plot scaling.png] [--rows rows.json]]

``--compare`` runs the seed pipeline in a fresh process, then ``scenecls train --backbone mobilenet_v2``
with the defaults in another, and gives both the two phases' seconds and each process's wall seconds end
to end (start-up, data, both phases, the test: what a user waits for), and their ratios.

``--fractions`` makes that comparison on a seeded share of each class's training images (a folder of hard
links; the test images whole), one share after the other, each pipeline with empty caches: how each
pipeline's seconds grow with the data. It prints a table, a straight line fitted to each pipeline's
seconds against its training images and what the line predicts for the Intel set's 14,034 training
images; ``--plot`` draws the seconds against the images and the test accuracy against the seconds, a
line per pipeline, and ``--rows`` keeps the measured rows as JSON.

The seed's pipeline, as it was: Keras's ``ImageDataGenerator`` (no longer public in Keras 3; its legacy
implementation is imported) with the seed's augmentation ranges (rotation 40 degrees, shifts 0.2, shear
0.2, zoom 0.2, horizontal flips, fill ``nearest``) and ``rescale=1/255``, 20 % of the training images held
out by the generator's ``validation_split``, images decoded and augmented on the fly every epoch in Python;
MobileNetV2 at 150 x 150 with its ImageNet weights, the seed's head (3 dense layers of 64, dropout 0.3) on
global average pooling; phase 1 fits the head on the frozen backbone at Adam 1e-3 for 10 epochs, phase 2
unfreezes the last 5 blocks (batch normalisation kept frozen, as scenecls does) at a constant Adam 1e-4 for
10 more, each through ``model.fit`` on the generator.

Why ``1/255`` is wrong for these backbones, and kept: every ImageNet backbone here was trained on its own
input scaling (MobileNetV2 and Xception on [-1, 1], ResNet on mean-subtracted 0-255), so feeding [0, 1]
images shifts and shrinks every input the pretrained filters see; the head and fine-tuning partly learn
around it, at a cost in accuracy and epochs. scenecls builds each backbone's own scaling into the model.
The seed's pipeline is the reference the speed-up is measured against, so it stays as the seed had it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _common import SHARED_WEIGHTS, images_by_class, linked_folder, machine, named_dataset, run_scenecls

SIZE = 150
BATCH = 32
INTEL_TRAIN_IMAGES = 14_034  # the Intel set's whole seg_train, which intel-dev samples


def seed_pipeline(data: Path, weights: str, seed: int, epochs: int, finetune_epochs: int) -> dict:
    """Train as the seed did; the seconds of each phase and the test accuracy."""
    import keras
    import numpy as np
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    from scenecls.models.registry import get_spec
    from scenecls.unfreeze import UnfreezePolicy, apply_unfreeze

    keras.utils.set_random_seed(seed)
    augmenting = ImageDataGenerator(
        rescale=1 / 255,
        rotation_range=40,
        width_shift_range=0.2,
        height_shift_range=0.2,
        shear_range=0.2,
        zoom_range=0.2,
        horizontal_flip=True,
        fill_mode="nearest",
        validation_split=0.2,
    )
    flow = {"target_size": (SIZE, SIZE), "batch_size": BATCH, "seed": seed}
    train = augmenting.flow_from_directory(data / "train", subset="training", **flow)
    val = augmenting.flow_from_directory(data / "train", subset="validation", shuffle=False, **flow)
    test = ImageDataGenerator(rescale=1 / 255).flow_from_directory(data / "test", shuffle=False, **flow)
    backbone = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    backbone.load_weights(weights)
    x = keras.layers.GlobalAveragePooling2D()(backbone.output)
    for _ in range(3):
        x = keras.layers.Dense(64, activation="relu")(x)
        x = keras.layers.Dropout(0.3)(x)
    outputs = keras.layers.Dense(train.num_classes, activation="softmax")(x)
    model = keras.Model(backbone.input, outputs)
    block_map = get_spec("mobilenet_v2").block_map(backbone)
    seconds = {}
    for phase, policy, rate, count in (
        ("head", UnfreezePolicy("blocks", 0), 1e-3, epochs),
        ("finetune", UnfreezePolicy("blocks", 5), 1e-4, finetune_epochs),
    ):
        apply_unfreeze(backbone, block_map, policy, model=model)
        model.compile(keras.optimizers.Adam(rate), "categorical_crossentropy", metrics=["accuracy"])
        started = time.perf_counter()
        model.fit(train, validation_data=val, epochs=count, verbose=0)
        seconds[phase] = time.perf_counter() - started
        print(f"seed pipeline, {phase}: {seconds[phase]:.0f} s", file=sys.stderr)
    probs = model.predict(test, verbose=0)
    accuracy = float(np.mean(probs.argmax(axis=1) == test.classes))
    return {"seconds": seconds, "test_accuracy": accuracy}


def scenecls_defaults(data: Path, weights: str, seed: int, work: Path) -> dict:
    """``scenecls train --backbone mobilenet_v2`` with the defaults, in a fresh process and cache."""
    project = work / "runs"
    args = [
        "train",
        "--backbone",
        "mobilenet_v2",
        "--weights",
        weights,
        "--seed",
        str(seed),
        "--data",
        str(data),
        "--project",
        str(project),
        "--name",
        "defaults",
        "--no-export",
        "--format",
        "json",
    ]
    started = time.perf_counter()
    result = json.loads(run_scenecls(args, work / "home"))
    total = time.perf_counter() - started
    metrics = json.loads((project / "defaults" / "metrics.json").read_text())
    phases = metrics.get("phase_seconds", {})
    return {
        "seconds": {"head": phases.get("head", 0.0), "finetune": phases.get("finetune", 0.0)},
        "total": total,
        "test_accuracy": result["test_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="intel-dev")
    parser.add_argument("--weights", default=str(SHARED_WEIGHTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument(
        "--compare", action="store_true", help="run scenecls train beside it, one after the other"
    )
    parser.add_argument("--json", action="store_true", help="print the seed pipeline's result as JSON")
    parser.add_argument("--fractions", help="compare on these shares of the training images, e.g. 0.25,0.5,1")
    parser.add_argument("--plot", type=Path, help="with --fractions: draw the scaling figure into this PNG")
    parser.add_argument("--rows", type=Path, help="with --fractions: write the measured rows as JSON here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scenecls-seed-"))
    data = named_dataset(args.data, work)
    if args.fractions:
        scaling(data, args, [float(f) for f in args.fractions.split(",")], work)
        return
    if not args.compare:
        seed = seed_pipeline(data, args.weights, args.seed, args.epochs, args.finetune_epochs)
        if args.json:
            print(json.dumps(seed))
        else:
            print(f"{args.data}, seed {args.seed}; {machine()}")
            print(f"seed pipeline: {describe(seed)}")
        return
    seed = seed_as_command(data, args)
    ours = scenecls_defaults(data, args.weights, args.seed, work)
    print(f"{args.data}, seed {args.seed}; {machine()}")
    print(f"seed pipeline: {describe(seed)}")
    print(f"scenecls train: {describe(ours)}")
    ratios = {phase: seed["seconds"][phase] / max(ours["seconds"][phase], 1e-9) for phase in seed["seconds"]}
    print(
        f"ratio: {seed['total'] / ours['total']:.1f}x end to end; "
        f"{sum(seed['seconds'].values()) / sum(ours['seconds'].values()):.1f}x in the two phases "
        f"(head {ratios['head']:.0f}x, fine-tuning {ratios['finetune']:.1f}x)"
    )


def share_of(data: Path, fraction: float, seed: int, work: Path) -> tuple[Path, int]:
    """``data`` with a seeded ``fraction`` of each class's training images (hard links) and all its test
    images, and how many training images that is; ``data`` itself at a fraction of 1."""
    import numpy as np

    train = images_by_class(data / "train")
    if fraction >= 1:
        return data, sum(map(len, train.values()))
    rng = np.random.default_rng(seed)
    chosen = {
        name: sorted(rng.choice(paths, max(2, round(len(paths) * fraction)), replace=False).tolist())
        for name, paths in train.items()
    }
    share = work / f"share-{fraction:g}"
    linked_folder(share / "train", chosen)
    linked_folder(share / "test", images_by_class(data / "test"))
    return share, sum(map(len, chosen.values()))


def scaling(data: Path, args: argparse.Namespace, fractions: list[float], work: Path) -> None:
    """Both pipelines on each share of the training images, one after the other: the table, the fitted
    lines and what they predict for the whole Intel training set."""
    import numpy as np

    rows = []
    for fraction in fractions:
        share, count = share_of(data, fraction, args.seed, work)
        seed = seed_as_command(share, args)
        ours = scenecls_defaults(share, args.weights, args.seed, work / f"scenecls-{fraction:g}")
        for pipeline, result in (("the seed's", seed), ("scenecls train", ours)):
            seconds, test = result["total"], result["test_accuracy"]
            rows.append(
                {
                    "pipeline": pipeline,
                    "fraction": fraction,
                    "images": count,
                    "seconds": seconds,
                    "test": test,
                }
            )
        print(
            f"{fraction:g} ({count} images): seed {describe(seed)}; scenecls {describe(ours)}",
            file=sys.stderr,
        )
    print(f"{args.data}, seed {args.seed}; {machine()}\n")
    print("| share | training images | the seed's s | its test | `scenecls train` s | its test | ratio |")
    print("|---|---|---|---|---|---|---|")
    for theirs, ours in zip(rows[::2], rows[1::2], strict=True):
        ratio = theirs["seconds"] / ours["seconds"]
        cells = [
            f"{theirs['fraction']:g}",
            f"{theirs['images']:,}",
            f"{theirs['seconds']:,.0f}",
            f"{theirs['test']:.4f}",
            f"{ours['seconds']:,.0f}",
            f"{ours['test']:.4f}",
            f"{ratio:.1f}x",
        ]
        print(f"| {' | '.join(cells)} |")
    lines = {}
    for pipeline in ("the seed's", "scenecls train"):
        mine = [r for r in rows if r["pipeline"] == pipeline]
        if len(mine) > 1:
            slope, start = np.polyfit([r["images"] for r in mine], [r["seconds"] for r in mine], 1)
            lines[pipeline] = (float(slope), float(start))
            whole = start + slope * INTEL_TRAIN_IMAGES
            print(f"\n{pipeline}: {start:,.0f} s {slope * 1000:+,.1f} s per 1,000 training images; "
                  f"{whole:,.0f} s predicted for {INTEL_TRAIN_IMAGES:,}")  # fmt: skip
    if args.rows:
        args.rows.write_text(json.dumps(rows, indent=1))
    if args.plot:
        plot_scaling(rows, lines, args.plot)


def plot_scaling(rows: list[dict], lines: dict[str, tuple[float, float]], out: Path) -> None:
    """Seconds against training images (measured points, the fitted line out to the whole Intel set) and
    test accuracy against seconds (a line per pipeline through its shares)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_images, by_seconds) = plt.subplots(1, 2, figsize=(11, 4.2))
    for pipeline, colour in (("the seed's", "tab:red"), ("scenecls train", "tab:blue")):
        mine = [r for r in rows if r["pipeline"] == pipeline]
        images, seconds = [r["images"] for r in mine], [r["seconds"] for r in mine]
        by_images.plot(images, seconds, "o", color=colour, label=pipeline)
        if pipeline in lines:
            slope, start = lines[pipeline]
            ends = [0, INTEL_TRAIN_IMAGES]
            by_images.plot(ends, [start + slope * x for x in ends], "--", color=colour, linewidth=1)
        by_seconds.plot(seconds, [r["test"] for r in mine], "o-", color=colour, label=pipeline)
        for row in mine:
            where = (row["seconds"], row["test"])
            by_seconds.annotate(
                f"{row['fraction']:g}", where, textcoords="offset points", xytext=(4, -10), fontsize=8
            )
    by_images.axvline(
        INTEL_TRAIN_IMAGES, color="grey", linewidth=0.8, label=f"the Intel set ({INTEL_TRAIN_IMAGES:,})"
    )
    by_images.set_ylim(bottom=0)
    by_seconds.margins(x=0.12, y=0.12)  # room for the share labels beside the points
    by_images.set(xlabel="training images", ylabel="seconds, end to end", title="Time as the data grows")
    by_seconds.set(xlabel="seconds, end to end", ylabel="test accuracy", title="Time to accuracy, by share")
    for axes in (by_images, by_seconds):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    print(f"\nplot: {out}")


def seed_as_command(data: Path, args: argparse.Namespace) -> dict:
    """The seed pipeline in a fresh process, as ``scenecls train`` runs: its result, and the wall seconds of
    the whole process (Python and TensorFlow start-up, data listing, both phases, the test) as ``total``."""
    import subprocess

    command = [sys.executable, __file__, "--data", str(data), "--weights", args.weights, "--seed",
               str(args.seed), "--epochs", str(args.epochs), "--finetune-epochs", str(args.finetune_epochs),
               "--json"]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    total = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"the seed pipeline failed: {done.stderr.strip()}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "total": total}


def describe(result: dict) -> str:
    head, finetune = result["seconds"]["head"], result["seconds"]["finetune"]
    whole = f" ({result['total']:.0f} s end to end, as a command)" if "total" in result else ""
    return (
        f"head {head:.0f} s + fine-tuning {finetune:.0f} s = {head + finetune:.0f} s{whole}, "
        f"test accuracy {result['test_accuracy']:.4f}"
    )


if __name__ == "__main__":
    main()
