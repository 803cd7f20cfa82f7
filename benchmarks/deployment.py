"""Benchmark 5: per-round wall time of one job, simulated, deployed as processes, and in containers.

Usage: python benchmarks/deployment.py [--nodes 3] [--rounds 3] [--repeats 2] [--no-containers]

The same digits job (``--nodes`` clients, ``--rounds`` rounds, defaults
otherwise) runs, side by side in one invocation and interleaved over
``--repeats``:

- ``gcfl run``: Flower's simulation (Ray actors that stay warm);
- ``gcfl deploy``: SuperLink and SuperNodes as local processes with TLS and
  SuperNode authentication, each SuperNode with its warm training worker;
- ``gcfl deploy --no-worker``: the same, every ClientApp process training itself;
- containers: the committed docker-compose.yml on podman or Docker (the image
  is built first, not timed), runs submitted from the host with ``flwr run``.

Per-round seconds come from each run's results.json; the table gives rounds
2 onwards (after warm-up), their mean and its ratio to ``gcfl run``'s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gcfl.server.results import read_results

ROOT = Path(__file__).resolve().parents[1]


def round_seconds(out_dir: Path) -> list[float]:
    return [record["seconds"] for record in read_results(out_dir)["rounds"]]


def cli_job(command: list[str]) -> Callable[[Path], list[float]]:
    def run(out_dir: Path) -> list[float]:
        subprocess.run(
            [sys.executable, "-m", "gcfl.cli", *command, "--out", str(out_dir)],
            check=True,
            capture_output=True,
        )
        return round_seconds(out_dir)

    return run


def container_job(stack, rounds: int) -> Callable[[Path], list[float]]:
    def run(out_dir: Path) -> list[float]:
        name = f"bench-{time.time_ns()}"
        submission = stack.submit(ROOT, f"num-server-rounds={rounds} out-dir='/results/{name}'")
        if submission.status != "finished:completed":
            raise RuntimeError(f"container run ended as {submission.status}; see {submission.log}")
        return round_seconds(stack.directory / "results" / name)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-containers", action="store_true", help="skip the container mode")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: round 1 is warm-up")
    nodes, rounds = str(args.nodes), str(args.rounds)
    jobs: dict[str, Callable[[Path], list[float]]] = {
        "simulation (gcfl run)": cli_job(["run", "--clients", nodes, "--rounds", rounds]),
        "gcfl deploy (warm worker)": cli_job(["deploy", "--nodes", nodes, "--rounds", rounds]),
        "gcfl deploy --no-worker": cli_job(
            ["deploy", "--nodes", nodes, "--rounds", rounds, "--no-worker"]
        ),
    }
    engine = stack = None
    with tempfile.TemporaryDirectory() as scratch:
        try:
            if not args.no_containers:
                from gcfl.deploy.containers import (
                    ComposeStack,
                    base_image,
                    build_image,
                    open_engine,
                )

                if args.nodes != 3:
                    parser.error("the committed docker-compose.yml has 3 SuperNodes: --nodes 3")
                engine = open_engine()
                build_image(engine, ROOT, base_image(engine))
                stack = ComposeStack(engine, Path(scratch) / "site", project="gcflbench")
                stack.prepare(ROOT)
                stack.up()
                jobs["containers (docker-compose, warm worker)"] = container_job(stack, args.rounds)
            per_round: dict[str, list[list[float]]] = {name: [] for name in jobs}
            for repeat in range(args.repeats):
                for index, (name, job) in enumerate(jobs.items()):
                    seconds = job(Path(scratch) / f"{repeat}-{index}")
                    per_round[name].append(seconds)
                    print(f"# {name}, repeat {repeat + 1}: {seconds}", file=sys.stderr, flush=True)
        finally:
            if stack is not None:
                stack.down()
            if engine is not None:
                engine.close()

    reference = None
    print(
        f"| mode ({args.nodes} clients, {args.rounds} rounds, {args.repeats} repeats) "
        "| round 1 s | rounds 2+ s (each run) | mean rounds 2+ s | / gcfl run |"
    )
    print("|---|---:|---|---:|---:|")
    for name, runs in per_round.items():
        later = [s for seconds in runs for s in seconds[1:]]
        mean = statistics.mean(later)
        reference = reference or mean
        first = statistics.median(seconds[0] for seconds in runs)
        each = "; ".join(", ".join(f"{s:.1f}" for s in seconds[1:]) for seconds in runs)
        print(f"| {name} | {first:.1f} | {each} | {mean:.2f} | {mean / reference:.2f} |")


if __name__ == "__main__":
    main()
