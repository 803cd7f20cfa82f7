"""Benchmark 1: overhead ratio of gcfl's simulation over the same training done directly.

Usage:
    python benchmarks/overhead.py --case digits  [--clients 10] [--rounds 3]
    python benchmarks/overhead.py --case cifar   [--clients 30] [--samples 2500] [--rounds 2]

Runs a gcfl simulation, then replays exactly the same work in this one process
with Keras: the same model, each client's own samples, epochs, learning rate
and batch size as results.json records them, each client's validation
evaluation, and the server's test-set evaluation every round. The ratio is the
simulation's round time (start-up excluded, server-side evaluation included)
over the replay's time. ``cifar`` uses CIFAR-shaped synthetic data (32x32x3,
10 classes), sized like the seed notebook: 30 clients of about 2,500 samples.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from gcfl.config import parse_run_config
from gcfl.simulation.launcher import simulate


def synthetic_cifar(path: Path, clients: int, samples: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    total = clients * samples
    np.savez(
        path,
        x_train=rng.integers(0, 256, (total, 32, 32, 3), dtype=np.uint8),
        y_train=rng.integers(0, 10, total),
        x_test=rng.integers(0, 256, (1000, 32, 32, 3), dtype=np.uint8),
        y_test=rng.integers(0, 10, 1000),
    )


def replay(run_config: dict, num_clients: int, results: dict) -> float:
    """The simulation's training and evaluations, done directly; returns seconds."""
    from gcfl.client.training import fit_once
    from gcfl.data import client_data, load_dataset
    from gcfl.model import build_model, cached_model
    from gcfl.strategy.aggregation import weighted_average

    config = parse_run_config(run_config)
    dataset = load_dataset(config.dataset, config.data_dir, config.seed)
    datas = {
        cid: client_data(
            config.dataset,
            config.data_dir,
            config.seed,
            config.partition,
            config.alpha,
            cid,
            num_clients,
            config.val_fraction,
        )
        for cid in range(num_clients)
    }
    model = cached_model(config.model, dataset.input_shape, dataset.num_classes)
    weights = build_model(
        config.model, dataset.input_shape, dataset.num_classes, config.seed
    ).get_weights()
    started = time.perf_counter()
    for record in results["rounds"]:
        updates = []
        for client in record["clients"]:
            outcome = fit_once(
                model,
                weights,
                datas[client["id"]],
                client["lr"],
                client["batch_size"],
                config.local_epochs,
                config.diverge_factor,
                seed=client["id"],
            )
            if outcome.weights is not None:
                updates.append((outcome.weights, len(datas[client["id"]].x_train)))
        weights = weighted_average(updates)
        model.set_weights(weights)
        model.evaluate(dataset.x_test, dataset.y_test, batch_size=256, verbose=0)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("digits", "cifar"), default="digits")
    parser.add_argument("--clients", type=int)
    parser.add_argument("--samples", type=int, default=2500)
    parser.add_argument("--rounds", type=int)
    args = parser.parse_args()
    clients = args.clients or (30 if args.case == "cifar" else 10)
    rounds = args.rounds or (2 if args.case == "cifar" else 3)
    with tempfile.TemporaryDirectory() as work:
        run_config = {
            "num-server-rounds": rounds,
            "partition": "iid",
            "out-dir": str(Path(work) / "run"),
        }
        if args.case == "cifar":
            synthetic_cifar(Path(work) / "cifar-shaped.npz", clients, args.samples)
            run_config["dataset"] = str(Path(work) / "cifar-shaped.npz")
        result = simulate(run_config, clients)
        simulated = sum(record["seconds"] for record in result.results["rounds"])
        direct = replay(run_config, clients, result.results)
    print("| case | clients | rounds | simulation s (rounds) | direct Keras s | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| {args.case} | {clients} | {rounds} | {simulated:.1f} | {direct:.1f} | "
        f"{simulated / direct:.2f} |"
    )


if __name__ == "__main__":
    main()
