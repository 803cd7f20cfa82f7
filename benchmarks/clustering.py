"""Benchmark 2b: DBSCAN alone, scikit-learn's against gcfl's grid DBSCAN, side by side.

Usage: python benchmarks/clustering.py [--clients 1000 10000 100000 1000000] [--eps 0 0.15]

For each population size and eps (0: gcfl's k-distance radius), clusters the
hyperparameter features of a random population (lr log-uniform over the
default space, batch sizes 16..128) with each implementation, each in a fresh
process so that its peak resident memory is its own, and reports seconds,
peak RSS and the share of clients that get the same label from both (only a border
point within eps of two clusters may differ).
scikit-learn is skipped where it would need more than ``--sklearn-max-pairs``
neighbour pairs in memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
from sklearn.cluster import DBSCAN
from gcfl.config import parse_run_config
from gcfl.strategy.clustering import auto_eps
from gcfl.strategy.features import SearchSpace, hyperparameter_features
from gcfl.strategy.grid_dbscan import grid_dbscan

count, eps, which = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
config = parse_run_config({})
space = SearchSpace(config.lr_min, config.lr_max, config.batch_min, config.batch_max)
rng = np.random.default_rng(0)
lrs = 10.0 ** rng.uniform(np.log10(space.lr_min), np.log10(space.lr_max), count)
batches = np.round(2.0 ** rng.uniform(4, 7, count))
features = hyperparameter_features(lrs, batches, space)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
radius = auto_eps(features, 2) if eps == 0 else eps
if which == "grid":
    labels = grid_dbscan(features, radius, 2)
else:
    labels = DBSCAN(eps=radius, min_samples=2).fit_predict(features)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
np.save(sys.argv[4], labels)
print(json.dumps({"seconds": seconds, "peak_mib": peak / 1024, "eps": radius}))
"""


def measure(count: int, eps: float, which: str, labels_path: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(count), str(eps), which, labels_path],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--eps", type=float, nargs="+", default=[0.0, 0.15])
    parser.add_argument("--sklearn-max-pairs", type=float, default=2e8)
    parser.add_argument("--work", default="/tmp/gcfl-clustering-bench")
    args = parser.parse_args()
    import os

    os.makedirs(args.work, exist_ok=True)
    print("| clients | eps | sklearn s | peak MiB | grid s | peak MiB | speed-up | same label |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for count in args.clients:
        for eps in args.eps:
            grid_labels = f"{args.work}/grid.npy"
            grid = measure(count, eps, "grid", grid_labels)
            # Expected neighbour pairs: each point sees about pi eps^2 of the unit square.
            pairs = count * count * 3.14159 * grid["eps"] ** 2
            if pairs <= args.sklearn_max_pairs:
                sk_labels = f"{args.work}/sklearn.npy"
                sk = measure(count, eps, "sklearn", sk_labels)
                a, b = np.load(grid_labels), np.load(sk_labels)
                same = f"{100 * np.mean(a == b):.2f}%"
                sk_cells = f"{sk['seconds']:.3f} | {sk['peak_mib']:.0f}"
                ratio = f"{sk['seconds'] / grid['seconds']:.1f}x"
            else:
                sk_cells, ratio, same = f"skipped (~{pairs:.0e} pairs) | -", "-", "-"
            label = "auto" if eps == 0 else f"{eps:g}"
            print(
                f"| {count:,} | {label} ({grid['eps']:.4f}) | {sk_cells} | {grid['seconds']:.3f} "
                f"| {grid['peak_mib']:.0f} | {ratio} | {same} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
