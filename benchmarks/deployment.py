"""Benchmark 5: per-round wall time, ``gcfl deploy`` against simulation, for the same job.

Usage: python benchmarks/deployment.py [--nodes 3] [--rounds 2]

Runs the job once in Flower's simulation (``gcfl run``) and once deployed
(``gcfl deploy``: SuperLink and SuperNodes as processes, TLS and SuperNode
authentication), then prints the per-round seconds each recorded.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(command: list[str], out_dir: Path) -> tuple[float, list[float]]:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "gcfl.cli", *command, "--out", str(out_dir)],
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - started
    rounds = json.loads((out_dir / "results.json").read_text())["rounds"]
    return wall, [record["seconds"] for record in rounds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    jobs = {
        "simulation (gcfl run)": ["run", "--clients", str(args.nodes)],
        "deployment (gcfl deploy, TLS + auth)": ["deploy", "--nodes", str(args.nodes)],
    }
    print(f"| mode ({args.nodes} clients, {args.rounds} rounds) | wall s | seconds per round |")
    print("|---|---:|---|")
    with tempfile.TemporaryDirectory() as out:
        for index, (name, command) in enumerate(jobs.items()):
            wall, seconds = run([*command, "--rounds", str(args.rounds)], Path(out) / str(index))
            print(f"| {name} | {wall:.1f} | {', '.join(f'{s:.1f}' for s in seconds)} |")


if __name__ == "__main__":
    main()
