"""Test accuracy of an ensemble: the mean of several runs' predicted probabilities on their test split.

Run: python benchmarks/ensemble.py RUN [RUN ...] [--data FOLDER]

Each RUN is a run folder (say, the seeds of one recipe from `benchmarks/accuracy.py`, whose runs are
under the work folder it prints). Every run's best model predicts the test split of ``--data`` (by
default the data the first run was trained on) through the same path `scenecls evaluate` takes; the
script prints each run's accuracy, every pair's, and the whole ensemble's. Runs trained at different
input sizes may be mixed: each model reads the images at its own size.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import _common  # noqa: F401  (quiets TensorFlow's logging before it is imported)
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, help="the data set whose test split is predicted")
    args = parser.parse_args()

    from scenecls.classifier import load_model
    from scenecls.data.layout import index_dataset
    from scenecls.evaluation import predict_split

    for run in args.runs:
        if not (run / "best.keras").is_file():
            sys.exit(f"not a finished run (no best.keras): {run}")
    data = args.data or Path(json.loads((args.runs[0] / "config.json").read_text())["data"])
    test = index_dataset(data).splits.get("test")
    if test is None or not len(test):
        sys.exit(f"no test split in {data}")
    labels = np.asarray(test.labels)

    probs = {}
    for run in args.runs:
        probs[run] = predict_split(load_model(run / "best.keras"), test)
        print(f"{run.name:32s} {accuracy(probs[run], labels):.4f}", flush=True)
    if len(probs) > 2:
        for a, b in itertools.combinations(args.runs, 2):
            print(f"{a.name} + {b.name}: {accuracy(probs[a] + probs[b], labels):.4f}")
    mean = sum(probs.values()) / len(probs)
    print(f"ensemble of {len(probs)} on {len(labels)} test images of {data}: {accuracy(mean, labels):.4f}")


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == labels).mean())


if __name__ == "__main__":
    main()
