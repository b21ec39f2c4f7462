"""Start-up cost: `scenecls --help` as a user runs it, and the import time of the package.

Run: python benchmarks/startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

from _common import machine


def timed(command: list[str], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    exe = shutil.which("scenecls")
    print(f"machine: {machine()}; median of {args.repeat} runs")
    python = timed([sys.executable, "-c", "pass"], args.repeat)
    print(f"python -c pass                   {python * 1000:7.0f} ms (the interpreter alone)")
    for label, command in (
        ("import scenecls", [sys.executable, "-c", "import scenecls"]),
        ("import scenecls.cli", [sys.executable, "-c", "import scenecls.cli"]),
        ("scenecls --help", [exe, "--help"] if exe else [sys.executable, "-m", "scenecls", "--help"]),
        (
            "scenecls train --help",
            [exe or sys.executable, *([] if exe else ["-m", "scenecls"]), "train", "--help"],
        ),
    ):
        print(f"{label:32s} {timed(command, args.repeat) * 1000:7.0f} ms")


if __name__ == "__main__":
    main()
