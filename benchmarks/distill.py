"""Students against the default run: what a teacher and unlabelled images are worth, over several seeds.

Run: python benchmarks/distill.py --work DIR [--seeds 0,1,2] [--students soft,hard,ensemble-soft]
                                  [--data intel-dev] [--unlabelled intel-unlabelled] [--markdown]

For each seed S: the default MobileNetV2 run (``teacher-S``, reused when DIR/runs holds it finished), then
each student with ``--seed S --unlabelled <the 4,000 unlabelled Intel images>``:

- ``soft``: ``--teacher teacher-S --targets soft`` (the teacher's calibrated probabilities);
- ``hard``: ``--teacher teacher-S --targets hard`` (its class, where it is at least 0.9 sure);
- ``ensemble-soft`` / ``ensemble-hard``: the teacher is ``scenecls ensemble`` of teacher-0, -1 and -2
  (made once; a student of seed 0, 1 or 2 has its own run among the ensemble's members).

Every run is ``scenecls train`` in a fresh process, as a user runs it, with the shared real MobileNetV2
weights; the table gives each test accuracy, the mean and spread per recipe, and the seconds of each
student's run (the teacher's seconds apart). Runs share DIR/home as their SCENECLS_HOME, so a later
student reuses the feature, activation and target entries an earlier one built (the seconds say which).
Tune on intel-dev only: its test part is the test set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from _common import SHARED_WEIGHTS, machine, named_dataset, run_scenecls

BASE = ["--backbone", "mobilenet_v2", "--no-export", "--format", "json"]
STUDENTS = {
    "soft": ("one", ["--targets", "soft"]),
    "hard": ("one", ["--targets", "hard"]),
    "ensemble-soft": ("ensemble", ["--targets", "soft"]),
    "ensemble-hard": ("ensemble", ["--targets", "hard"]),
}


def unlabelled_folder(name: str, work: Path) -> Path:
    folder = named_dataset(name, work)
    inner = [p for p in folder.iterdir() if p.is_dir()]
    return inner[0] if len(inner) == 1 else folder  # fetch-data puts seg_pred's images in pred/


def train(args: list[str], work: Path) -> tuple[dict, float]:
    started = time.monotonic()
    out = run_scenecls(["train", *BASE, "--weights", str(SHARED_WEIGHTS), "--project", str(work / "runs"),
                        *args], work / "home")  # fmt: skip
    return json.loads(out), time.monotonic() - started


def finished(run: Path) -> dict | None:
    """A finished run's test accuracy and seconds (training's, from state.json), or None."""
    metrics, state = run / "metrics.json", run / "state.json"
    if not metrics.is_file() or not state.is_file():
        return None
    seconds = json.loads(state.read_text()).get("seconds") or json.loads(metrics.read_text()).get("seconds")
    return {"test_accuracy": json.loads(metrics.read_text())["test_accuracy"], "seconds": seconds or 0.0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True, help="runs, caches and data go here")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--students", default="soft,hard")
    parser.add_argument("--data", default="intel-dev")
    parser.add_argument("--unlabelled", default="intel-unlabelled")
    parser.add_argument("--markdown", action="store_true")
    options = parser.parse_args()
    work = options.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    data = named_dataset(options.data, work)
    unlabelled = unlabelled_folder(options.unlabelled, work)
    seeds = [int(s) for s in options.seeds.split(",")]
    students = options.students.split(",")
    rows: dict[str, dict[int, tuple[float, float]]] = {"default (the teacher)": {}}
    for seed in seeds:
        run = work / "runs" / f"teacher-{seed}"
        metrics = finished(run)
        if metrics is None:
            args = ["--data", str(data), "--seed", str(seed), "--name", f"teacher-{seed}"]
            result, seconds = train(args, work)
            metrics = {"test_accuracy": result["test_accuracy"], "seconds": seconds}
        rows["default (the teacher)"][seed] = (metrics["test_accuracy"], metrics.get("seconds", 0.0))
    ensemble = work / "runs" / "ensemble-teachers"
    if any(STUDENTS[s][0] == "ensemble" for s in students) and finished(ensemble) is None:
        members = [str(work / "runs" / f"teacher-{s}") for s in (0, 1, 2)]
        run_scenecls(["ensemble", *members, "--project", str(work / "runs"), "--name", "ensemble-teachers",
                      "--no-export"], work / "home")  # fmt: skip
    for name in students:
        kind, extra = STUDENTS[name]
        rows[name] = {}
        for seed in seeds:
            teacher = ensemble if kind == "ensemble" else work / "runs" / f"teacher-{seed}"
            run = work / "runs" / f"{name}-{seed}"
            metrics = finished(run)
            if metrics is None:
                result, seconds = train(
                    ["--data", str(data), "--seed", str(seed), "--unlabelled", str(unlabelled), "--teacher",
                     str(teacher), "--name", f"{name}-{seed}", *extra], work,
                )  # fmt: skip
                metrics = {"test_accuracy": result["test_accuracy"], "seconds": seconds}
            rows[name][seed] = (metrics["test_accuracy"], metrics.get("seconds", 0.0))
            print(f"{name} seed {seed}: {rows[name][seed][0]:.4f} in {rows[name][seed][1]:.0f} s", flush=True)
    print(f"\n{machine()}; data {options.data}, unlabelled {options.unlabelled}; seeds {options.seeds}\n")
    print("| recipe | test accuracy per seed | mean ± spread/2 | seconds per run (mean) |")
    print("|---|---|---|---|")
    for name, by_seed in rows.items():
        accuracies = [by_seed[s][0] for s in seeds if s in by_seed]
        seconds = [by_seed[s][1] for s in seeds if s in by_seed]
        spread = (max(accuracies) - min(accuracies)) / 2
        print(
            f"| {name} | {', '.join(f'{a:.4f}' for a in accuracies)} | {statistics.mean(accuracies):.4f} ± "
            f"{spread:.4f} | {statistics.mean(seconds):.0f} |"
        )


if __name__ == "__main__":
    main()
