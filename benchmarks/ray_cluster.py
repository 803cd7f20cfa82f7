"""Run a gcfl simulation on an existing Ray cluster, and compare with Flower's own Ray.

Usage: python benchmarks/ray_cluster.py [--clients 6] [--rounds 2]

Starts a local head node (``ray start --head``, its own temp folder and port),
runs ``gcfl run`` with ``RAY_ADDRESS`` pointing at it, checks from the head
node's own session logs that Flower's ClientApp actors ran on that cluster,
runs the same job without ``RAY_ADDRESS`` for comparison, and stops the head
node's processes (only those, found by its temp folder) at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from gcfl.processes import free_port, stop_process_tree


def cluster_processes(temp_dir: str) -> list[int]:
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if temp_dir in " ".join(process.info["cmdline"] or []):
            found.append(process.info["pid"])
    return found


def actors_ran_on(temp_dir: str) -> bool:
    """Whether Flower's ClientApp actors ran on the cluster whose temp folder this is."""
    logs = Path(temp_dir) / "session_latest" / "logs"
    return any(
        "ClientAppActor" in path.read_text(errors="replace") for path in logs.glob("worker-*")
    )


def gcfl_run(out_dir: Path, clients: int, rounds: int, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gcfl.cli",
            "run",
            "--clients",
            str(clients),
            "--rounds",
            str(rounds),
            "--out",
            str(out_dir),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    ray = str(Path(sys.executable).parent / "ray")
    temp_dir = tempfile.mkdtemp(prefix="gcfl-rayc-")  # short: Ray's socket paths are limited
    port = free_port()
    env = {**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    subprocess.run(
        [
            ray,
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=2",
            f"--temp-dir={temp_dir}",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    try:
        with tempfile.TemporaryDirectory() as out:
            on_cluster = gcfl_run(
                Path(out) / "cluster",
                args.clients,
                args.rounds,
                {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"},
            )
            connected = actors_ran_on(temp_dir)
            rounds_cluster = json.loads((Path(out) / "cluster" / "results.json").read_text())
            own = gcfl_run(Path(out) / "own", args.clients, args.rounds, env)
            rounds_own = json.loads((Path(out) / "own" / "results.json").read_text())
    finally:
        for pid in cluster_processes(temp_dir):
            stop_process_tree(pid)
    left = cluster_processes(temp_dir)

    def per_round(results: dict) -> str:
        return ", ".join(f"{r['seconds']:.1f}" for r in results["rounds"])

    print(f"| Ray | wall s | s/round ({args.clients} clients) |")
    print("|---|---:|---|")
    print(f"| existing cluster (RAY_ADDRESS) | {on_cluster:.1f} | {per_round(rounds_cluster)} |")
    print(f"| Flower starts its own | {own:.1f} | {per_round(rounds_own)} |")
    print(f"\nactors ran on the existing cluster: {connected}; its processes left: {len(left)}")
    if not connected or left:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
