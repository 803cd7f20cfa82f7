"""Benchmark 3: many virtual clients. Peak memory of the whole process tree, seconds per round.

Usage: python benchmarks/scale.py [--clients 1000] [--per-round 100] [--rounds 3]

Runs ``gcfl run`` on digits and samples the resident memory of it and every
process below it (SuperLink, simulation engine, Ray, actors) twice a second.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def tree_rss(root: psutil.Process) -> int:
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        out_dir = Path(out) / "run"
        command = [
            sys.executable,
            "-m",
            "gcfl.cli",
            "run",
            "--clients",
            str(args.clients),
            "--rounds",
            str(args.rounds),
            "--fraction-fit",
            str(args.per_round / args.clients),
            "--out",
            str(out_dir),
        ]
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        root = psutil.Process(process.pid)
        peak = 0
        while process.poll() is None:
            peak = max(peak, tree_rss(root))
            time.sleep(0.5)
        wall = time.perf_counter() - started
        if process.returncode != 0:
            raise SystemExit(process.stderr.read().decode())
        rounds = json.loads((out_dir / "results.json").read_text())["rounds"]
    print("| clients | per round | rounds | wall s | s/round | peak RSS (GiB) |")
    print("|---:|---:|---:|---:|---|---:|")
    per_round = ", ".join(f"{r['seconds']:.1f}" for r in rounds)
    print(
        f"| {args.clients:,} | {args.per_round} | {args.rounds} | {wall:.1f} | {per_round} | "
        f"{peak / 2**30:.2f} |"
    )


if __name__ == "__main__":
    main()
