"""Benchmark 4: seconds from submitting a simulation to the first round's first fit.

Usage: python benchmarks/startup.py [--clients 10] [--repeats 3]

Runs ``gcfl run``'s launcher for one round and timestamps the lines Flower
streams: the SuperLink and submission, the ServerApp start (TensorFlow import,
dataset, initial model), the partition-id probe (Ray actors start), and
``configure_fit``, after which the first fit instruction is on its way.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from gcfl.simulation.launcher import simulate

MARKS = {
    "submitted": "Successfully started run",
    "serverapp": "Starting Flower ServerApp",
    "probed": "gcfl: ",
    "first fit": "configure_fit: strategy sampled",
}


def one_startup(clients: int) -> dict[str, float]:
    seen: dict[str, float] = {}
    started = time.perf_counter()

    def on_line(line: str) -> None:
        for mark, text in MARKS.items():
            if mark not in seen and text in line:
                seen[mark] = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as out:
        simulate(
            {"num-server-rounds": 1, "out-dir": str(Path(out) / "run")}, clients, on_line=on_line
        )
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = [one_startup(args.clients) for _ in range(args.repeats)]
    print(f"| phase (seconds since launch, {args.clients} clients) | median | min | max |")
    print("|---|---:|---:|---:|")
    for mark in MARKS:
        values = [run[mark] for run in runs if mark in run]
        print(
            f"| {mark} | {statistics.median(values):.1f} | {min(values):.1f} | {max(values):.1f} |"
        )


if __name__ == "__main__":
    main()
