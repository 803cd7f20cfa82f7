"""Benchmark 2: the algorithm alone (features, DBSCAN, genetic step, assignment) per round.

Usage: python benchmarks/algorithm.py [--clients 100 1000 10000 100000] [--repeats 5]

Times one ``GeneticPopulation.step`` (what the server does between receiving a
round's reports and sending the next round's fit configs) for N clients that
all trained, with the run config's defaults (``--eps 0.15`` for the
notebook's fixed radius), after a warm-up step, and reports the median of the
repeats and the peak resident memory of the process so far.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np

from gcfl.config import parse_run_config
from gcfl.strategy.policy import Report
from gcfl.strategy.population import GeneticPopulation, GeneticSettings


def one_round_seconds(num_clients: int, repeats: int, eps: float | None) -> list[float]:
    rng = np.random.default_rng(0)
    overrides = {} if eps is None else {"dbscan-eps": eps}
    settings = GeneticSettings.from_config(parse_run_config(overrides))
    population = GeneticPopulation.random_init(range(num_clients), settings, rng)
    before = rng.uniform(1.0, 2.5, size=num_clients)
    after = before * rng.uniform(0.2, 1.1, size=num_clients)
    timings = []
    for server_round in range(1, repeats + 2):
        reports = {
            cid: Report(
                state.lr,
                state.batch_size,
                float(after[cid]),
                "ok",
                loss_before=float(before[cid]),
                local_loss_before=float(before[cid]),
                local_loss_after=float(after[cid]),
            )
            for cid, state in population.states.items()
        }
        started = time.perf_counter()
        population.step(server_round, reports)
        if server_round > 1:  # the first round warms up imports and caches
            timings.append(time.perf_counter() - started)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000, 10_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--eps", type=float, default=None, help="dbscan-eps (default: the run config's)"
    )
    args = parser.parse_args()
    print("| clients | median s/round | min | max | peak RSS (MiB) |")
    print("|---:|---:|---:|---:|---:|")
    for count in args.clients:
        timings = one_round_seconds(count, args.repeats, args.eps)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"| {count:,} | {statistics.median(timings):.4f} | {min(timings):.4f} | "
            f"{max(timings):.4f} | {peak:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
