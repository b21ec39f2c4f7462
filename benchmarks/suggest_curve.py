"""A learning curve for ``suggest``: accuracy against the number of labels, when the next labels are chosen
by ``scenecls suggest``, by the model's uncertainty only, or at random.

Run: python benchmarks/suggest_curve.py --work DIR [--seeds 0,1,2] [--strategies suggest,uncertainty,random]
                                        [--start 600] [--step 300] [--until 2400] [--data intel-dev]

For each seed S: 600 of intel-dev's training images (100 per class, drawn with seed S) are the labelled
set; the rest of its training images are the unlabelled pool, their labels hidden. Then, until 2,400
labels: a default ``scenecls train --backbone mobilenet_v2 --seed S`` on the labelled set (intel-dev's
own test images as its test), and 300 more images from the pool, whose true labels are then revealed:

- ``suggest``: ``scenecls suggest RUN POOL --budget 300`` (uncertain and unlike each other, no copies);
- ``uncertainty``: the 300 the run is least sure of (the smallest margin between its two likeliest
  classes), as ``suggest`` computes it, without the k-centre choice among them;
- ``random``: 300 drawn at random.

Every run and ``suggest`` is a fresh process, as a user runs them, with the shared real MobileNetV2
weights. The step's data set is a folder of hard links to intel-dev's files (nothing is copied or
changed). Results are kept in DIR/curve.json, so an interrupted curve goes on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
from pathlib import Path

import numpy as np
from _common import SHARED_WEIGHTS, images_by_class, linked_folder, machine, named_dataset, run_scenecls

TRAIN = ["--backbone", "mobilenet_v2", "--no-export", "--format", "json"]


def remove_ours(folder: Path, ours) -> None:
    """Remove ``folder``, left by a curve cut short, only when ``ours(folder)`` says this script or
    scenecls wrote it; never through a link, never someone else's folder."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise SystemExit(f"{folder} is a link or a file, not a folder this benchmark wrote: move it away")
    if folder.is_dir():
        if not ours(folder):
            raise SystemExit(f"{folder} holds files this benchmark did not write: move it away")
        shutil.rmtree(folder)


def a_run_of_ours(folder: Path) -> bool:
    """A scenecls run (its config.json) or nothing at all."""
    return (folder / "config.json").is_file() or not any(folder.iterdir())


def links_of_ours(folder: Path) -> bool:
    """Only the numbered links :func:`choose` makes."""
    return all(
        re.fullmatch(r"\d{5}\.jpg", p.name) and p.is_file() and not p.is_symlink() for p in folder.iterdir()
    )


def train(work: Path, name: str, labelled: list[tuple[str, str]], test: dict[str, list[str]], seed: int):
    """The default run on ``labelled`` ((path, class) pairs); its test accuracy."""
    run = work / "runs" / name
    metrics = run / "metrics.json"
    data = work / "data" / name  # kept: suggest reads the run's labelled images
    by_class: dict[str, list[str]] = {}
    for path, label in labelled:
        by_class.setdefault(label, []).append(path)
    linked_folder(data / "train", by_class)
    linked_folder(data / "test", test)
    if not metrics.is_file():
        remove_ours(run, a_run_of_ours)  # a run of ours cut short: trained again
        run_scenecls(["train", "--data", str(data), *TRAIN, "--weights", str(SHARED_WEIGHTS),
                      "--seed", str(seed), "--project", str(work / "runs"), "--name", name],
                     work / "home")  # fmt: skip
    return json.loads(metrics.read_text())["test_accuracy"]


def choose(strategy: str, work: Path, run: Path, pool: list[str], budget: int, rng) -> list[str]:
    """``budget`` paths of ``pool`` for labelling next."""
    if strategy == "random":
        return [pool[i] for i in rng.choice(len(pool), budget, replace=False)]
    folder = work / "pool" / run.name
    names = {}
    remove_ours(folder, links_of_ours)  # links left by a curve cut short
    folder.mkdir(parents=True)
    for i, path in enumerate(pool):  # flat and unnamed: the pool's labels stay hidden
        target = folder / f"{i:05d}.jpg"
        os.link(path, target)
        names[str(target)] = path
    try:
        if strategy == "suggest":
            from scenecls.suggest import MARKER

            output = work / "suggestions" / run.name
            remove_ours(output, lambda folder: (folder / MARKER).is_file())  # suggest's own, from before
            out = run_scenecls(["suggest", str(run), str(folder), "--budget", str(budget), "--output",
                                str(output), "--format", "json"], work / "home")  # fmt: skip
            return [names[row["path"]] for row in json.loads(out)["suggestions"]]
        from scenecls.progress import NullReporter
        from scenecls.suggest import _look

        linked = sorted(names)
        probabilities, _, _ = _look(run, linked, [], 64, NullReporter())
        ordered = np.sort(probabilities, axis=1)
        margin = ordered[:, -1] - ordered[:, -2]
        return [names[linked[i]] for i in np.argsort(margin, kind="stable")[:budget]]
    finally:
        remove_ours(folder, links_of_ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="runs, caches and data go here")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--strategies", default="suggest,uncertainty,random")
    parser.add_argument("--start", type=int, default=600)
    parser.add_argument("--step", type=int, default=300)
    parser.add_argument("--until", type=int, default=2400)
    parser.add_argument("--data", default="intel-dev")
    options = parser.parse_args()
    work = options.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    data = named_dataset(options.data, work)
    every = sorted((str(p), p.parent.name) for p in (data / "train").glob("*/*") if p.is_file())
    label_of = dict(every)
    classes = sorted({label for _, label in every})
    test = images_by_class(data / "test")
    results_file = work / "curve.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    sizes = list(range(options.start, options.until + 1, options.step))

    for seed in (int(s) for s in options.seeds.split(",")):
        rng = np.random.default_rng(seed)
        start = []
        for name in classes:
            own = [path for path, label in every if label == name]
            start += [own[i] for i in rng.choice(len(own), options.start // len(classes), replace=False)]
        for strategy in options.strategies.split(","):
            picker = np.random.default_rng(1000 + seed)
            labelled = list(start)
            for size in sizes:
                key = f"{strategy}-{seed}-{size}"
                name = f"start-{seed}" if size == options.start else key  # one first run per seed
                labelled = list(results[key]["labelled"]) if key in results else labelled
                accuracy = train(work, name, [(p, label_of[p]) for p in labelled], test, seed)
                results[key] = {"accuracy": accuracy, "labelled": sorted(labelled)}
                results_file.write_text(json.dumps(results))
                print(f"{strategy} seed {seed}: {size} labels -> {results[key]['accuracy']:.4f}", flush=True)
                if (
                    size + options.step <= options.until
                    and f"{strategy}-{seed}-{size + options.step}" not in results
                ):
                    taken = set(labelled)
                    pool = [path for path, _ in every if path not in taken]
                    labelled += choose(strategy, work, work / "runs" / name, pool, options.step, picker)

    print(f"\n{machine()}; data {options.data}; seeds {options.seeds}\n")
    print("| labels | " + " | ".join(options.strategies.split(",")) + " |")
    print("|---|" + "---|" * len(options.strategies.split(",")))
    for size in sizes:
        cells = []
        for strategy in options.strategies.split(","):
            found = [v["accuracy"] for k, v in results.items() if k.startswith(f"{strategy}-") and
                     k.endswith(f"-{size}") and k.split("-")[1] in options.seeds.split(",")]  # fmt: skip
            cells.append(
                f"{statistics.mean(found):.4f} ({', '.join(f'{a:.4f}' for a in found)})" if found else "-"
            )
        print(f"| {size} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
