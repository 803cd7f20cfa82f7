"""The gcfl NumPyClient: trains with the lr and batch size the server sends it."""

from __future__ import annotations

import math

import numpy as np
from flwr.client import NumPyClient
from flwr.common import Config, NDArrays, Scalar

from gcfl.config import GcflConfig
from gcfl.data import client_data, load_dataset

FAULT_STREAM = 4  # a seed stream of its own: injected faults never shift training draws


class InjectedFault(RuntimeError):
    """A failure injected on purpose by ``fault-rate``, to test that runs survive failures."""


# Keys of the per-client fit config the strategy sends.
FIT_ROUND, FIT_LR, FIT_BATCH_SIZE, FIT_SEARCH = "server-round", "lr", "batch-size", "search"


class GcflClient(NumPyClient):
    """A Keras client holding one partition of the training set, keyed by its partition id.

    ``get_properties`` answers without TensorFlow, so the server can learn
    every node's partition id cheaply before round 1. ``fit`` trains the
    process's cached model; the returned metrics say what it really trained
    with: the lr read back from the optimizer and the batch size of the fit.
    """

    def __init__(self, partition_id: int, num_partitions: int, config: GcflConfig) -> None:
        self.partition_id = partition_id
        self.num_partitions = num_partitions
        self.config = config

    def get_properties(self, config: Config) -> dict[str, Scalar]:
        return {"partition-id": self.partition_id, "num-partitions": self.num_partitions}

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, dict[str, Scalar]]:
        from gcfl.model import cached_model, make_training_reproducible

        make_training_reproducible()
        from gcfl.client.training import check_weight_shapes, fit_once, search_init

        cfg = self.config
        server_round = int(config[FIT_ROUND])
        if cfg.fault_rate > 0:
            draw = np.random.default_rng([cfg.seed, FAULT_STREAM, server_round, self.partition_id])
            if draw.random() < cfg.fault_rate:
                raise InjectedFault(
                    f"fault-rate={cfg.fault_rate}: injected failure of client "
                    f"{self.partition_id} in round {server_round}"
                )
        dataset = load_dataset(cfg.dataset, cfg.data_dir, cfg.seed)
        data = client_data(
            cfg.dataset,
            cfg.data_dir,
            cfg.seed,
            cfg.partition,
            cfg.alpha,
            self.partition_id,
            self.num_partitions,
            cfg.val_fraction,
        )
        model = cached_model(cfg.model, dataset.input_shape, dataset.num_classes)
        check_weight_shapes(model, parameters)
        fit_seed = int(
            np.random.SeedSequence([cfg.seed, server_round, self.partition_id]).generate_state(1)[0]
        )
        if bool(config.get(FIT_SEARCH, False)):
            outcome = search_init(
                model,
                parameters,
                data,
                cfg.lr_grid_values,
                cfg.batch_grid_values,
                cfg.diverge_factor,
                np.random.default_rng([cfg.seed, self.partition_id]),
                fit_seed,
            )
        else:
            outcome = fit_once(
                model,
                parameters,
                data,
                float(config[FIT_LR]),
                int(config[FIT_BATCH_SIZE]),
                cfg.local_epochs,
                cfg.diverge_factor,
                fit_seed,
            )
        metrics: dict[str, Scalar] = {
            "client-id": self.partition_id,
            "lr": outcome.lr,
            "batch-size": outcome.batch_size,
            "status": outcome.status,
            "train-loss": _scalar(outcome.train_loss),
            "first-loss": _scalar(outcome.first_loss),
            "val-loss-before": _scalar(outcome.val_loss_before),
            "val-loss": _scalar(outcome.val_loss),
            "val-accuracy": _scalar(outcome.val_accuracy),
            "local-loss-before": _scalar(outcome.local_loss_before),
            "local-loss-after": _scalar(outcome.local_loss_after),
        }
        if outcome.weights is None:
            return [], 0, metrics
        return outcome.weights, len(data.x_train), metrics


def _scalar(value: float) -> float:
    """Metrics travel as protobuf floats; inf and nan pass, but say so explicitly."""
    return float(value) if math.isfinite(value) else float("nan")
