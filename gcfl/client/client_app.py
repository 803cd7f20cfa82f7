"""The Flower ClientApp: one :class:`GcflClient` per message, keyed by the node's partition id."""

from __future__ import annotations

from flwr.client import Client, ClientApp
from flwr.common import Context

from gcfl.client.client import GcflClient
from gcfl.config import ConfigError, parse_run_config


def client_fn(context: Context) -> Client:
    """Build the client of this node from its node config and the run config."""
    config = parse_run_config(context.run_config)
    try:
        partition_id = int(context.node_config["partition-id"])
        num_partitions = int(context.node_config["num-partitions"])
    except KeyError as missing:
        raise ConfigError(
            f"node config lacks {missing}; start each SuperNode with "
            "--node-config 'partition-id=<i> num-partitions=<n>'"
        ) from None
    return GcflClient(partition_id, num_partitions, config).to_client()


app = ClientApp(client_fn=client_fn)
