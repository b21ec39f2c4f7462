"""Calibration on real images: the test split's expected calibration error, NLL and Brier score before
and after the temperature fitted at the end of each run, and accuracy against coverage at
``predict --min-confidence`` floors; plus the seconds ``scenecls calibrate`` takes.

Run: python benchmarks/calibration.py [--seeds 0,1,2] [--data intel-dev] [--weights PATH]
                                      [--runs DIR] [--markdown]

Each seed trains ``scenecls train --backbone mobilenet_v2 --seed S`` (the defaults otherwise) in a
fresh process, as a user does, with the shared real MobileNetV2 weights; ``--runs DIR`` reuses run
folders made before (named ``s<seed>``) instead. Tune on intel-dev only: its test part is the test set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import SHARED_WEIGHTS, machine, named_dataset, run_scenecls

FLOORS = (0.5, 0.8, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--data", default="intel-dev")
    parser.add_argument("--weights", default=str(SHARED_WEIGHTS))
    parser.add_argument("--runs", type=Path, default=None, help="reuse the run folders s<seed> in DIR")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(tempfile.mkdtemp(prefix="scenecls-calibration-"))
    home = work / "home"
    data = named_dataset(args.data, work)
    project = args.runs or work / "runs"
    rows = []
    for seed in seeds:
        run_dir = project / f"s{seed}"
        if not (run_dir / "metrics.json").is_file():
            print(f"training seed {seed} ...", file=sys.stderr)
            recipe = ["--backbone", "mobilenet_v2", "--weights", args.weights, "--seed", str(seed)]
            where = ["--data", str(data), "--project", str(project), "--name", f"s{seed}", "--no-export"]
            run_scenecls(["train", *recipe, *where], home)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        started = time.perf_counter()
        run_scenecls(["calibrate", str(run_dir), "--format", "json"], home)
        calibrate_seconds = time.perf_counter() - started
        evaluation = json.loads(run_scenecls(["evaluate", str(run_dir), "--format", "json"], home))
        coverage = {round(r["min_confidence"], 2): r for r in evaluation["coverage"]}
        test = metrics["calibration"]["test"]
        rows.append(
            {
                "seed": seed,
                "test_accuracy": metrics["test_accuracy"],
                "temperature": metrics["temperature"],
                "before": test["before"],
                "after": test["after"],
                "coverage": {floor: coverage[floor] for floor in FLOORS},
                "calibrate_seconds": calibrate_seconds,
            }
        )
    print(f"# Calibration: {args.data}, MobileNetV2 ({args.weights}), defaults; {machine()}")
    header = ["seed", "test acc", "T", "ECE before", "ECE after", "NLL before", "NLL after", "Brier before",
              "Brier after", *(f"acc / cov at {f:g}" for f in FLOORS), "calibrate s"]  # fmt: skip
    lines = []
    for row in rows:
        cells = [str(row["seed"]), f"{row['test_accuracy']:.4f}", f"{row['temperature']:.3f}"]
        for key in ("ece", "nll", "brier"):
            cells += [f"{row['before'][key]:.4f}", f"{row['after'][key]:.4f}"]
        for floor in FLOORS:
            cell = row["coverage"][floor]
            cells.append(f"{cell['accuracy']:.4f} / {cell['coverage']:.3f}")
        cells.append(f"{row['calibrate_seconds']:.1f}")
        lines.append(cells)
    mean = ["mean", f"{statistics.mean(r['test_accuracy'] for r in rows):.4f}",
            f"{statistics.mean(r['temperature'] for r in rows):.3f}"]  # fmt: skip
    for key in ("ece", "nll", "brier"):
        mean += [f"{statistics.mean(r['before'][key] for r in rows):.4f}",
                 f"{statistics.mean(r['after'][key] for r in rows):.4f}"]  # fmt: skip
    for floor in FLOORS:
        accuracy = statistics.mean(r["coverage"][floor]["accuracy"] for r in rows)
        cover = statistics.mean(r["coverage"][floor]["coverage"] for r in rows)
        mean.append(f"{accuracy:.4f} / {cover:.3f}")
    mean.append(f"{statistics.mean(r['calibrate_seconds'] for r in rows):.1f}")
    lines.append(mean)
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for cells in lines:
            print("| " + " | ".join(cells) + " |")
    else:
        for cells in [header, *lines]:
            print("  ".join(cells))
    print(f"run folders: {project}")


if __name__ == "__main__":
    main()
