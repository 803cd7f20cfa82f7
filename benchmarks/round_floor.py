"""Benchmark: a simulated round of the default job against its training floor.

Usage: python benchmarks/round_floor.py [--clients 30] [--rounds 3] [--cores 2]

Runs ``gcfl run``'s simulation with the defaults (digits, every client
training every round), then, in this process, redoes every fit of rounds 2
and later in the tight loop of ``benchmarks/local_fit.py`` (row (b): one call
of a minimal ``tf.function`` train step per batch, then the validation pass)
with the lr, batch size and epochs that results.json records. The floor of a
round is the sum of its fits' tight-loop times spread over ``--cores``
(perfect parallelism, no server work); the ratio is the simulated round's
time over that floor.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from local_fit import floor_fit, minimal_steps  # sets TensorFlow up as a client does

from gcfl.config import parse_run_config
from gcfl.data import client_data, load_dataset
from gcfl.model import cached_model
from gcfl.simulation.launcher import simulate


def floor_seconds(run_config: dict, num_clients: int, record: dict) -> float:
    """Seconds the round's fits take in the tight loop, one after another."""
    config = parse_run_config(run_config)
    dataset = load_dataset(config.dataset, config.data_dir, config.seed)
    model = cached_model(config.model, dataset.input_shape, dataset.num_classes)
    weights = model.get_weights()
    step, evaluate = minimal_steps(model)
    total = 0.0
    for client in record["clients"]:
        data = client_data(
            config.dataset,
            config.data_dir,
            config.seed,
            config.partition,
            config.alpha,
            client["id"],
            num_clients,
            config.val_fraction,
        )
        fit = (client["lr"], client["batch_size"], config.local_epochs, client["id"])
        floor_fit(model, weights, data, *fit, step, evaluate)  # traces, first allocations
        started = time.perf_counter()
        floor_fit(model, weights, data, *fit, step, evaluate)
        total += time.perf_counter() - started
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        run_config = {"num-server-rounds": args.rounds, "out-dir": str(Path(work) / "run")}
        result = simulate(run_config, args.clients)
        rows = []
        for record in result.results["rounds"][1:]:
            floor = floor_seconds(run_config, args.clients, record) / args.cores
            rows.append((record["round"], len(record["clients"]), record["seconds"], floor))
    print(f"| round | fits | simulated s | floor s (tight loop / {args.cores} cores) | ratio |")
    print("|---:|---:|---:|---:|---:|")
    for server_round, fits, simulated, floor in rows:
        ratio = simulated / floor
        print(f"| {server_round} | {fits} | {simulated:.2f} | {floor:.2f} | {ratio:.2f} |")
    ratio = statistics.median(simulated / floor for *_, simulated, floor in rows)
    print(f"\nmedian ratio, rounds 2+: {ratio:.2f}")


if __name__ == "__main__":
    main()
