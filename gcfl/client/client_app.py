"""The Flower ClientApp: one :class:`GcflClient` per message, keyed by the node's partition id.

A node whose config names a ``worker-socket`` trains on its warm training
worker (:mod:`gcfl.worker`) and falls back to training in this process,
with a warning, when the worker does not answer. A fit the worker refuses (a
model or data outside its node's allow-list) fails with the worker's reason.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

from flwr.client import Client, ClientApp
from flwr.common import Config, Context, NDArrays, Scalar
from flwr.common.logger import log

from gcfl.client.client import GcflClient
from gcfl.client.deadline import DeadlineClient
from gcfl.config import ConfigError, GcflConfig, config_of
from gcfl.protocol import NUM_PARTITIONS, PARTITION_ID
from gcfl.run_end import has_ended
from gcfl.worker import NODE_CONFIG_KEY, WorkerUnavailable, fit_on_worker
from gcfl.worker.messages import FitRequest


def train_for_worker(
    request: FitRequest, parameters: NDArrays
) -> tuple[NDArrays, int, dict[str, Scalar]]:
    """The node's training worker's fit: this ClientApp's fit, in the worker's process."""
    config = config_of(request.run_config)
    client = GcflClient(request.partition_id, request.num_partitions, config)
    return client.fit(parameters, request.fit_config)


class WorkerBackedClient(GcflClient):
    """A :class:`GcflClient` whose ``fit`` runs on the node's training worker when it answers."""

    def __init__(
        self,
        partition_id: int,
        num_partitions: int,
        config: GcflConfig,
        run_config: Mapping[str, Any],
        worker_socket: str,
    ) -> None:
        super().__init__(partition_id, num_partitions, config)
        self.run_config = dict(run_config)
        self.worker_socket = worker_socket

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, dict[str, Scalar]]:
        try:
            return fit_on_worker(
                self.worker_socket,
                partition_id=self.partition_id,
                num_partitions=self.num_partitions,
                run_config=self.run_config,
                parameters=list(parameters),
                fit_config=config,
                deadline_s=self.config.round_timeout,
            )
        # Only an absent or busy worker is retried here. Its refusal
        # (WorkerRefused), its timeout and its failed fit propagate as this
        # fit's failure: retrying in process would run the model or read the
        # data the worker's allow-list refused, as Flower's user, in this
        # process. This process itself (get_properties, evaluate, and fit
        # without a worker) obeys the run config as every Flower ClientApp
        # does; the allow-list is the worker's guard, not the ClientApp's.
        except WorkerUnavailable as error:
            log(
                logging.WARNING,
                "gcfl: %s; training in the ClientApp process instead "
                "(it pays the TensorFlow import and tracing on every round)",
                error,
            )
        return super().fit(parameters, config)


def client_fn(context: Context) -> Client:
    """Build the client of this node from its node config and the run config."""
    config = config_of(context.run_config)
    try:
        partition_id = int(context.node_config[PARTITION_ID])
        num_partitions = int(context.node_config[NUM_PARTITIONS])
    except KeyError as missing:
        raise ConfigError(
            f"node config lacks {missing}; start each SuperNode with "
            "--node-config 'partition-id=<i> num-partitions=<n>'"
        ) from None
    worker_socket = context.node_config.get(NODE_CONFIG_KEY)
    if worker_socket:
        client: GcflClient = WorkerBackedClient(
            partition_id, num_partitions, config, context.run_config, str(worker_socket)
        )
    else:
        client = GcflClient(partition_id, num_partitions, config)
    return with_deadline(client.to_client(), config, partition_id, context.run_id)


def with_deadline(client: Client, config: GcflConfig, partition_id: int, run_id: int) -> Client:
    """``client`` whose fit and evaluate are abandoned once past their deadline, or once the
    run's ServerApp has marked its end (on the same machine)."""
    return DeadlineClient(
        client,
        config.round_timeout,
        config.round_deadline_factor,
        f"client {partition_id}",
        run_ended=functools.partial(has_ended, config.out_dir, run_id),
    )


app = ClientApp(client_fn=client_fn)
