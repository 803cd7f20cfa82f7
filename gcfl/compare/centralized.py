"""The centralised baseline: the same model trained on pooled data, one epoch per "round".

As the seed notebook (In [37]): the whole training set (or, with
``data="clients"``, the union of the clients' partitions), as many epochs as
the federated runs have rounds, at the FedAvg baseline's lr and batch size, and
an evaluation on the same test set after every epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gcfl.config import GcflConfig
from gcfl.data import cached_partitions, load_dataset

CENTRALIZED_DATA = ("whole", "clients")


def training_indices(config: GcflConfig, num_clients: int, data: str) -> np.ndarray | None:
    """Indices of the pooled training set: None for all of it, else the clients' union."""
    if data == "whole":
        return None
    if data != "clients":
        raise ValueError(f"centralized data must be one of {', '.join(CENTRALIZED_DATA)}")
    parts = cached_partitions(
        config.dataset, config.data_dir, config.seed, config.partition, num_clients, config.alpha
    )
    return np.unique(np.concatenate(parts))


def train_centralized(
    config: GcflConfig,
    num_clients: int,
    data: str = "whole",
    on_epoch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate after every epoch; return a results entry in the round schema."""
    import keras

    from gcfl.model import build_model

    dataset = load_dataset(config.dataset, config.data_dir, config.seed)
    indices = training_indices(config, num_clients, data)
    x = dataset.x_train if indices is None else dataset.x_train[indices]
    y = dataset.y_train if indices is None else dataset.y_train[indices]
    model = build_model(config.model, dataset.input_shape, dataset.num_classes, config.seed)
    model.optimizer.learning_rate = config.fedavg_lr
    keras.utils.set_random_seed(config.seed)
    rounds = []
    for epoch in range(1, config.num_server_rounds + 1):
        started = time.perf_counter()
        model.fit(x, y, batch_size=config.fedavg_batch_size, epochs=1, shuffle=True, verbose=0)
        loss, accuracy = model.evaluate(dataset.x_test, dataset.y_test, batch_size=256, verbose=0)
        rounds.append(
            {
                "round": epoch,
                "accuracy": float(accuracy),
                "loss": float(loss),
                "seconds": round(time.perf_counter() - started, 3),
                "status": "ok",
                "clients": [],
            }
        )
        if on_epoch is not None:
            on_epoch(epoch)
    return {
        "strategy": "centralized",
        "config": {
            **config.to_run_config(),
            "centralized-data": data,
            "training-samples": len(x),
        },
        "rounds": rounds,
    }
