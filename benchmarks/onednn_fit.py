"""Benchmark: one seed-sized CIFAR-shaped client fit, with oneDNN as the environment sets it.

Usage (interleave the two, on an otherwise idle machine):
    TF_ENABLE_ONEDNN_OPTS=0 python benchmarks/onednn_fit.py
    TF_ENABLE_ONEDNN_OPTS=1 python benchmarks/onednn_fit.py

Times gcfl's ``fit_once`` of the seed CNN on 2,000 random 32x32x3 samples
(batch 32, one epoch, 500 validation samples) after a warm-up fit, with one
thread and deterministic ops as a client runs. oneDNN is chosen when
TensorFlow is imported, so only the environment can set it.
"""

from __future__ import annotations

import time

import numpy as np

from gcfl.model import cached_model, make_training_reproducible, onednn_enabled

make_training_reproducible()

from gcfl.client.training import fit_once  # noqa: E402  (after the TensorFlow set-up)
from gcfl.data import ClientData  # noqa: E402


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2000, 32, 32, 3)).astype(np.float32) / 255
    y = rng.integers(0, 10, 2000)
    data = ClientData(x, y, x[:500], y[:500])
    model = cached_model("", (32, 32, 3), 10)
    weights = model.get_weights()
    fit_once(model, weights, data, 1e-3, 32, 1, 10.0, seed=0)  # traces
    started = time.perf_counter()
    fit_once(model, weights, data, 1e-3, 32, 1, 10.0, seed=1)
    print(f"oneDNN {'on' if onednn_enabled() else 'off'}: {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
