"""One federation in one process: Flower's server loop with gcfl's ServerApp and ClientApp.

The strategy, its evaluation and results come from the ServerApp's own
``server_fn``, every client from the ClientApp's own ``client_fn``, and
Flower's ``Server`` drives the rounds. Only the transport differs from
``flwr run``: each node is an in-process proxy that calls its client
directly, one fit at a time. No SuperLink and no Ray, so a run costs its
training and nothing else, and one process can run many: the quality
benchmark (``benchmarks/quality.py``) runs hundreds this way. Training is
seeded per (seed, round, partition) and single-threaded, so a run in a fresh
process gives bit for bit the results of the same run config under
``flwr run`` (``tests/test_integration.py`` checks it). In a process where
TensorFlow already ran with its default thread pools, the last bits of
float32 sums differ, and the difference grows round by round.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.client import Client
from flwr.common import (
    Context,
    DisconnectRes,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetParametersIns,
    GetParametersRes,
    GetPropertiesIns,
    GetPropertiesRes,
    ReconnectIns,
    RecordDict,
)
from flwr.server import Server
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from gcfl.client.client_app import client_fn
from gcfl.client.deadline import CallAbandoned, DeadlineClient, never_ended
from gcfl.config import default_run_config, parse_run_config
from gcfl.model import make_training_reproducible
from gcfl.server.results import RESULTS_FILE
from gcfl.server.server_app import server_fn
from gcfl.strategy.discovery import NoReplyError


class InProcessNode(ClientProxy):
    """A SuperNode stand-in: builds its ClientApp's client per message, as Flower does."""

    def __init__(
        self, node_id: int, context: Context, make_client: Callable[[Context], Client] = client_fn
    ) -> None:
        super().__init__(str(node_id))
        self.node_id = node_id
        self.context = context
        self.make_client = make_client

    def _ask(self, question: Callable[[Client], Any], timeout: float | None) -> Any:
        """One message's reply, or :class:`NoReplyError` as gcfl's Grid would raise it.

        Fits here run one after another, so the deadline bounds each reply's own
        time (a reply slower than ``timeout`` counts as timed-out) rather than
        the round's, which the clients before it would use up.
        """
        started = time.monotonic()
        client = self.make_client(self.context)
        if isinstance(client, DeadlineClient):
            # One Keras model serves every client here: a call abandoned early would go on
            # training it under the next client's fit. Only the round's timeout ends a call.
            client.factor = 0.0
            client.run_ended = never_ended
        try:
            reply = question(client)
        except CallAbandoned as error:
            raise NoReplyError(self.node_id, "timed-out", str(error)) from None
        except Exception as error:
            raise NoReplyError(self.node_id, "failed", f"{type(error).__name__}: {error}") from None
        elapsed = time.monotonic() - started
        if timeout is not None and elapsed > timeout:
            raise NoReplyError(self.node_id, "timed-out", f"replied after {elapsed:.4g} s")
        return reply

    def get_properties(
        self, ins: GetPropertiesIns, timeout: float | None, group_id: int | None
    ) -> GetPropertiesRes:
        return self.make_client(self.context).get_properties(ins)

    def get_parameters(
        self, ins: GetParametersIns, timeout: float | None, group_id: int | None
    ) -> GetParametersRes:
        return self.make_client(self.context).get_parameters(ins)

    def fit(self, ins: FitIns, timeout: float | None, group_id: int | None) -> FitRes:
        return self._ask(lambda client: client.fit(ins), timeout)

    def evaluate(
        self, ins: EvaluateIns, timeout: float | None, group_id: int | None
    ) -> EvaluateRes:
        return self._ask(lambda client: client.evaluate(ins), timeout)

    def reconnect(
        self, ins: ReconnectIns, timeout: float | None, group_id: int | None
    ) -> DisconnectRes:
        return DisconnectRes(reason="")


def run_in_process(
    run_config: dict[str, Any],
    num_clients: int,
    run_id: int = 1,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    make_client: Callable[[Context], Client] = client_fn,
) -> dict[str, Any]:
    """Run one federation of ``num_clients`` nodes here; return its results.json payload.

    ``run_config`` holds overrides of the defaults and must set an absolute
    ``out-dir``, where results.json and the checkpoint are written as by
    ``gcfl run``. ``on_round`` gets each finished round's progress event
    (:mod:`gcfl.server.progress`). ``make_client`` builds a node's client
    from its context, as a ClientApp's ``client_fn`` does (the hostile suite's).
    """
    config = parse_run_config(run_config)
    if not config.out_dir:
        raise ValueError("run_in_process needs an absolute out-dir in run_config")
    # Before the ServerApp builds the initial model: TensorFlow fixes its thread
    # pools at its first op, and two threads round float32 sums differently from
    # the one a simulated client uses, so the runs would drift apart round by round.
    make_training_reproducible()
    full_config = {**default_run_config(), **run_config}
    components = server_fn(
        Context(run_id, 0, {}, RecordDict(), full_config),
        on_round=on_round,
    )
    manager = SimpleClientManager()
    for partition in range(num_clients):
        node_config: dict[str, bool | float | int | str] = {
            "partition-id": partition,
            "num-partitions": num_clients,
        }
        context = Context(run_id, partition + 1, node_config, RecordDict(), full_config)
        manager.register(InProcessNode(partition + 1, context, make_client))
    server = Server(client_manager=manager, strategy=components.strategy)
    # One Keras model per process, shared by every client: fits must not overlap.
    server.set_max_workers(1)
    rounds = components.config
    assert rounds is not None, "server_fn always gives a ServerConfig"
    server.fit(rounds.num_rounds, timeout=rounds.round_timeout)
    return json.loads((Path(config.out_dir) / RESULTS_FILE).read_text())
