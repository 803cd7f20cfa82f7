"""The Flower Strategy: a thin adapter between Flower's FedAvg hooks and gcfl's Coordinator.

Flower's types stop here: node proxies become partition ids, ``FitRes`` and
``EvaluateRes`` become the protocol's plain replies, ``Parameters`` become
numpy arrays. Every decision (sampling, instructions, what to believe, the
aggregate, the record) is :class:`~gcfl.strategy.coordinator.Coordinator`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO, WARNING
from typing import Any

from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    NDArrays,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.logger import log
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from gcfl.config import GcflConfig
from gcfl.protocol import evaluate_config
from gcfl.server.grid import NoReplyError
from gcfl.strategy.coordinator import Coordinator, FitReply, NoReply, StateMismatchError
from gcfl.strategy.discovery import StrategySetupError, discover_partitions
from gcfl.strategy.record import RoundRecord
from gcfl.strategy.sampling import check_federation_size

RoundCallback = Callable[[RoundRecord, NDArrays], None]
Failures = list[tuple[ClientProxy, Any] | BaseException]

__all__ = ["GeneticClusteredFedAvg", "StrategySetupError"]


class GeneticClusteredFedAvg(FedAvg):
    """FedAvg in which every client trains with its own learning rate and batch size.

    Before round 1 it asks every SuperNode for its partition id and size; all
    state is keyed by partition id, never by Flower's node ids, which change
    every run. ``on_round_end`` receives each finished round's record and
    global weights once the round's last evaluation is in (the server-side one,
    or the federated one when ``fraction-evaluate`` > 0). ``accept_failures``
    as in FedAvg: False keeps the global model in any round where a client
    failed, timed out or was refused; the hyperparameters still evolve.
    """

    def __init__(
        self,
        *,
        config: GcflConfig,
        initial_parameters: Parameters,
        evaluate_fn: Callable[[int, NDArrays, dict[str, Scalar]], Any] | None = None,
        on_round_end: RoundCallback | None = None,
        accept_failures: bool = True,
    ) -> None:
        super().__init__(
            fraction_fit=config.fraction_fit,
            fraction_evaluate=config.fraction_evaluate,
            min_fit_clients=config.min_fit_clients,
            min_available_clients=config.min_fit_clients,
            evaluate_fn=evaluate_fn,
            initial_parameters=initial_parameters,
            accept_failures=accept_failures,
        )
        self.config = config
        self.on_round_end = on_round_end
        self.nodes: dict[int, ClientProxy] = {}
        self.coordinator: Coordinator | None = None
        # Flower counts each run's rounds from 1; a resumed run continues after the
        # checkpoint's rounds, so its round r is round r + round_offset.
        self.round_offset = 0
        self._restored: tuple[dict[str, Any], NDArrays | None] | None = None
        self._weights: NDArrays = []
        self._central: tuple[float | None, float | None] = (None, None)

    def __repr__(self) -> str:
        return f"GeneticClusteredFedAvg(strategy={self.config.strategy!r})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """Learn every node's partition id and size, check the federation is big enough."""
        found = discover_partitions(client_manager, self.config.probe_timeout)
        check_federation_size(self.config, len(found))
        self.nodes = {cid: proxy for cid, (proxy, _) in found.items()}
        self.coordinator = Coordinator(
            self.config, {cid: info.num_examples for cid, (_, info) in found.items()}
        )
        if self._restored is not None:
            try:
                self.coordinator.restore(*self._restored)
            except StateMismatchError as error:
                raise StrategySetupError(str(error)) from None
        log(INFO, "gcfl: %d clients (partition ids 0..%d)", len(found), len(found) - 1)
        return self.initial_parameters

    def restore(self, state: dict[str, Any], previous_weights: NDArrays | None = None) -> None:
        """Continue from a checkpoint: applied once the federation is known, before round 1."""
        self.round_offset = int(state["completed_rounds"])
        self._restored = (state, previous_weights)

    def checkpoint_state(self) -> dict[str, Any]:
        assert self.coordinator is not None
        return self.coordinator.state()

    @property
    def completed_rounds(self) -> int:
        return self.coordinator.completed_rounds if self.coordinator else self.round_offset

    @property
    def previous_weights(self) -> NDArrays | None:
        return self.coordinator.previous_weights if self.coordinator else None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Sample clients with the seeded Generator; give each its own FitIns."""
        assert self.coordinator is not None, "initialize_parameters was not called"
        self._weights = parameters_to_ndarrays(parameters)
        instructions = self.coordinator.start_fit(server_round + self.round_offset, self._weights)
        # A new FitIns (and config dict) per client: a shared one would give
        # every client the last client's hyperparameters.
        return [(self.nodes[c], FitIns(parameters, i.to_config())) for c, i in instructions.items()]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: Failures,
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Judge every reply, evolve the hyperparameters and make the new global model."""
        assert self.coordinator is not None
        replies: dict[int, FitReply | NoReply] = self._no_replies(failures)
        for cid, res in self._by_partition(results).items():
            weights = parameters_to_ndarrays(res.parameters)
            replies[cid] = FitReply(res.metrics, res.num_examples, weights)
        weights = self.coordinator.finish_fit(replies)
        record = self.coordinator.round
        assert record is not None
        failed = any(c.status in ("refused", "failed", "timed-out") for c in record.clients)
        if record.status == "ok" and failed and not self.accept_failures:
            log(WARNING, "gcfl: round %d had failures and accept_failures is off", record.round)
            weights, record.status = None, "failed"
        if weights is not None:
            self._weights = weights
        log(INFO, "gcfl: round %d: %s, %d accepted", record.round, record.status, record.accepted)
        parameters = ndarrays_to_parameters(weights) if weights is not None else None
        return parameters, {"accepted": record.accepted}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        if self.coordinator is None or self.coordinator.round is None:
            return []
        config = evaluate_config(server_round + self.round_offset)
        chosen = self.coordinator.evaluation_sample()
        return [(self.nodes[cid], EvaluateIns(parameters, dict(config))) for cid in chosen]

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: Failures,
    ) -> tuple[float | None, dict[str, Scalar]]:
        """The clients' weighted loss and accuracy of the global model; the round closes."""
        assert self.coordinator is not None
        replies: dict[int, Any] = self._no_replies(failures)
        for cid, res in self._by_partition(results).items():
            replies[cid] = (res.loss, res.metrics, res.num_examples)
        result = self.coordinator.finish_evaluation(replies)
        self._close_round()
        return (result[0], {"accuracy": result[1]}) if result else (None, {})

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """Evaluate the global model on the server's test set; close the round unless
        federated evaluation follows."""
        result = super().evaluate(server_round, parameters)
        if server_round > 0 and self.coordinator and self.coordinator.round is not None:
            loss, metrics = result if result is not None else (None, {})
            self._central = (loss, metrics.get("accuracy"))
            if not self.config.fraction_evaluate:
                self._close_round()
        return result

    def _close_round(self) -> None:
        assert self.coordinator is not None
        record = self.coordinator.close_round(*self._central)
        self._central = (None, None)
        if self.on_round_end is not None:
            self.on_round_end(record, self._weights)

    def _by_partition(self, results: list[tuple[ClientProxy, Any]]) -> dict[int, Any]:
        """Replies keyed by partition id; one from a node the round did not sample is dropped."""
        partition_of = {proxy.cid: cid for cid, proxy in self.nodes.items()}
        return {partition_of[p.cid]: res for p, res in results if p.cid in partition_of}

    def _no_replies(self, failures: Failures) -> dict[int, Any]:
        """Failures Flower could attribute (through gcfl's Grid) to a node, by partition id."""
        partition_of = {proxy.cid: cid for cid, proxy in self.nodes.items()}
        attributed: dict[int, Any] = {}
        for failure in failures:
            if isinstance(failure, NoReplyError) and str(failure.node_id) in partition_of:
                no_reply = NoReply(failure.outcome, failure.reason)
                attributed[partition_of[str(failure.node_id)]] = no_reply
            elif isinstance(failure, tuple) and failure[0].cid in partition_of:
                no_reply = NoReply("failed", f"status {failure[1].status.message!r}")
                attributed[partition_of[failure[0].cid]] = no_reply
            else:
                log(WARNING, "gcfl: a client failed: %s", failure)
        return attributed
