"""Benchmark: how soon a simulation with a client that hangs for good ends on its own.

Usage:
    python benchmarks/hung_client.py [--clients 4] [--rounds 3] [--set KEY=VALUE ...]

One client (partition 1, :mod:`gcfl.testing.hostile`'s ``hang``) sleeps an
hour in every fit. The run goes through gcfl's launcher with its last-resort
stop pushed to 900 s, so the run ends as it would under a plain
``flwr run .``: when the ClientApps' calls have returned. Prints each
round's seconds and statuses, and the seconds from the last round's
progress line to the run's end.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time

import gcfl.processes as processes
import gcfl.simulation.launcher as launcher
from gcfl.config import parse_assignment
from gcfl.testing.hostile import CLIENT_APP, ENV_VAR

GRACE_S = 900.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    settings = dict(parse_assignment(item) for item in args.set)
    launcher.stream_flwr_run = functools.partial(
        processes.stream_flwr_run, finish_grace_s=GRACE_S
    )
    os.environ[ENV_VAR] = "1:hang"
    progress: list[float] = []

    def on_line(line: str) -> None:
        if "gcfl-progress" in line:
            progress.append(time.monotonic())

    config = {
        "num-server-rounds": args.rounds,
        # An lr range in which no honest update is refused: only the hang fails.
        "lr-max": 3e-3,
        "out-dir": tempfile.mkdtemp(prefix="gcfl-hung-"),
        **settings,
    }
    started = time.monotonic()
    result = launcher.simulate(config, args.clients, client_app=CLIENT_APP, on_line=on_line)
    ended = time.monotonic()
    for record in result.results["rounds"]:
        statuses = [c["status"] for c in sorted(record["clients"], key=lambda c: c["id"])]
        print(f"round {record['round']}: {record['seconds']:.1f} s, {statuses}")
    print(f"run: {ended - started:.1f} s; ended {ended - progress[-1]:.1f} s after its last round")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
