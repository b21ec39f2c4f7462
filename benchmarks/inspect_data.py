"""``scenecls inspect`` on real images: the counts of each finding, the seconds it takes cold (a fresh
cache) and warm, and (``--seeds``) the test accuracy of the default recipe trained with and without
the images it flags in the training split.

Run: python benchmarks/inspect_data.py [--data intel-dev] [--weights PATH] [--seeds 0,1,2]
                                       [--runs DIR] [--markdown]

The features are MobileNetV2's with the shared real ImageNet weights (``--image-size 150``, the
images' own size, as the accuracy runs use). The exclude list drops every training copy of a leak or
of a picture under two labels, and every likely label error of the training split
(``--write-exclude --drop-label-errors 100000``); the test split is never changed, so the accuracies
compare. ``--runs DIR`` reuses run folders made before: ``base-s<seed>`` and ``clean-s<seed>``.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="intel-dev")
    parser.add_argument("--weights", default=str(SHARED_WEIGHTS))
    parser.add_argument("--seeds", default="", help="train with and without the flagged images, e.g. 0,1,2")
    parser.add_argument("--runs", type=Path, default=None, help="reuse run folders in DIR")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scenecls-inspect-"))
    home = work / "home"
    data = named_dataset(args.data, work)
    excluded = work / "flagged.txt"
    model = ["--backbone", "mobilenet_v2", "--weights", args.weights, "--image-size", "150"]
    inspect = [
        "inspect",
        str(data),
        *model,
        "--output",
        str(work / "findings"),
        "--format",
        "json",
        "--top",
        "100000",
    ]
    started = time.perf_counter()
    report = json.loads(run_scenecls(inspect, home))
    cold = time.perf_counter() - started
    started = time.perf_counter()
    run_scenecls([*inspect, "--write-exclude", str(excluded), "--drop-label-errors", "100000"], home)
    warm = time.perf_counter() - started
    flagged = [line for line in excluded.read_text().splitlines() if not line.startswith("#")]
    candidates = report["label_errors"]["candidates"]
    by_split = {s: sum(c["split"] == s for c in candidates) for s in ("train", "val", "test")}
    print(f"{args.data}, {report['counts']['images']} images; {machine()}")
    print(json.dumps(report["counts"]))
    print(f"label-error candidates by split: {by_split}; in the exclude list: {len(flagged)} training images")
    print(f"inspect cold: {cold:.1f} s, warm: {warm:.1f} s (stages, cold: {report['seconds']})")
    print(f"contact sheets: {work / 'findings'}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if seeds:
        _compare(seeds, data, excluded, args.weights, args.runs or work / "runs", home, args.markdown)


def _compare(seeds, data, excluded, weights, project, home, markdown) -> None:
    rows = []
    for seed in seeds:
        accuracy = {}
        for name, extra in (("base", []), ("clean", ["--exclude", str(excluded)])):
            run_dir = project / f"{name}-s{seed}"
            if not (run_dir / "metrics.json").is_file():
                print(f"training {name} seed {seed} ...", file=sys.stderr)
                recipe = ["--backbone", "mobilenet_v2", "--weights", weights, "--seed", str(seed), *extra]
                where = [
                    "--data",
                    str(data),
                    "--project",
                    str(project),
                    "--name",
                    run_dir.name,
                    "--no-export",
                ]
                run_scenecls(["train", *recipe, *where], home)
            accuracy[name] = json.loads((run_dir / "metrics.json").read_text())["test_accuracy"]
        rows.append((seed, accuracy["base"], accuracy["clean"]))
    header = ["seed", "test accuracy, all images", "without the flagged ones", "difference"]
    lines = [[str(s), f"{b:.4f}", f"{c:.4f}", f"{c - b:+.4f}"] for s, b, c in rows]
    base, clean = [r[1] for r in rows], [r[2] for r in rows]
    spread = (lambda xs: f" ± {statistics.stdev(xs):.4f}") if len(rows) > 1 else (lambda xs: "")
    mean_base, mean_clean = statistics.mean(base), statistics.mean(clean)
    lines.append(
        [
            "mean",
            f"{mean_base:.4f}{spread(base)}",
            f"{mean_clean:.4f}{spread(clean)}",
            f"{mean_clean - mean_base:+.4f}",
        ]
    )
    if markdown:
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        for line in [header, *lines]:
            print("  ".join(f"{cell:>26}" for cell in line))


if __name__ == "__main__":
    main()
