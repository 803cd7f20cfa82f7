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
from gcfl.strategy.coordinator import Coordinator, FitReply, NoReply, StrategySetupError
from gcfl.strategy.discovery import Federation, discover_partitions
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
    as in FedAvg (see :class:`Coordinator`).
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
        self.federation = Federation({})
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
        self.federation = discover_partitions(client_manager, self.config.probe_timeout)
        count = len(self.federation.nodes)
        check_federation_size(self.config, count)
        self.coordinator = Coordinator(self.config, self.federation.capacity, self.accept_failures)
        if self._restored is not None:
            self.coordinator.restore(*self._restored)
        log(INFO, "gcfl: %d clients (partition ids 0..%d)", count, count - 1)
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
        if self.coordinator.federated and self._weights:
            # The federated fitness settles the global model after Flower's fit step,
            # so Flower's copy may be the aggregate before some groups were left out.
            parameters = ndarrays_to_parameters(self._weights)
        else:
            self._weights = parameters_to_ndarrays(parameters)
        instructions = self.coordinator.start_fit(server_round + self.round_offset, self._weights)
        # A new FitIns (and config dict) per client: a shared one would give
        # every client the last client's hyperparameters.
        proxy = self.federation.proxy
        return [(proxy(c), FitIns(parameters, i.to_config())) for c, i in instructions.items()]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: Failures,
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Judge every reply, evolve the hyperparameters and make the new global model."""
        assert self.coordinator is not None
        replies: dict[int, FitReply | NoReply] = dict(self.federation.failures(failures))
        for cid, res in self.federation.replies(results).items():
            trained = parameters_to_ndarrays(res.parameters)
            replies[cid] = FitReply(res.metrics, res.num_examples, trained)
        weights = self.coordinator.finish_fit(replies)
        record = self.coordinator.round
        assert record is not None
        if weights is not None:
            self._weights = weights
        log(INFO, "gcfl: round %d: %s, %d accepted", record.round, record.status, record.accepted)
        for client in record.clients:
            if client.status in ("timed-out", "failed"):
                # Named, so that a client that hangs or breaks is seen without results.json.
                log(
                    WARNING,
                    "gcfl: round %d: client %d %s: %s",
                    record.round,
                    client.id,
                    client.status,
                    client.reason,
                )
        parameters = ndarrays_to_parameters(weights) if weights is not None else None
        return parameters, {"accepted": record.accepted}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        coordinator = self.coordinator
        if coordinator is None or coordinator.round is None:
            return []
        proxy = self.federation.proxy
        if coordinator.pending is not None:
            requests = coordinator.candidate_requests()
            if not requests:
                self._settle_fitness(server_round, {})
                return []
            coordinator.round.evaluation_requests = len(requests)
            coordinator.round.models_sent = sum(i.candidates for i, _ in requests.values())
            return [
                (
                    proxy(c),
                    EvaluateIns(
                        ndarrays_to_parameters([a for model in models for a in model]),
                        dict(instruction.to_config()),
                    ),
                )
                for c, (instruction, models) in requests.items()
            ]
        config = evaluate_config(server_round + self.round_offset)
        chosen = coordinator.evaluation_sample()
        coordinator.round.evaluation_requests = coordinator.round.models_sent = len(chosen)
        return [(proxy(c), EvaluateIns(parameters, dict(config))) for c in chosen]

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: Failures,
    ) -> tuple[float | None, dict[str, Scalar]]:
        """The clients' evaluations: the candidates judged, or the global model's loss."""
        assert self.coordinator is not None
        replies: dict[int, Any] = dict(self.federation.failures(failures))
        for cid, res in self.federation.replies(results).items():
            replies[cid] = (res.loss, res.metrics, res.num_examples)
        if self.coordinator.pending is not None:
            self._settle_fitness(server_round, replies)
            record = self.coordinator.completed_record
            if record is None or record.federated_loss is None:
                return None, {}
            accuracy = record.federated_accuracy
            return record.federated_loss, {} if accuracy is None else {"accuracy": accuracy}
        result = self.coordinator.finish_evaluation(replies)
        self._close_round()
        return (result[0], {"accuracy": result[1]}) if result else (None, {})

    def _settle_fitness(self, server_round: int, replies: dict[int, Any]) -> None:
        """fitness=federated: the round's final model, its server-side evaluation, the record."""
        assert self.coordinator is not None
        weights = self.coordinator.finish_candidates(replies)
        if weights is not None:
            self._weights = weights
        result = super().evaluate(server_round, ndarrays_to_parameters(self._weights))
        self._central = _loss_and_accuracy(result)
        self._close_round()

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """The server's test-set evaluation; the round closes here unless clients evaluate."""
        if server_round > 0 and self.coordinator and self.coordinator.pending is not None:
            return None  # the model is final only once the candidates are judged
        result = super().evaluate(server_round, parameters)
        if server_round > 0 and self.coordinator and self.coordinator.round is not None:
            self._central = _loss_and_accuracy(result)
            if not self.config.fraction_evaluate:
                self._close_round()
        return result

    def _close_round(self) -> None:
        assert self.coordinator is not None
        record = self.coordinator.close_round(*self._central)
        self._central = (None, None)
        if self.on_round_end is not None:
            self.on_round_end(record, self._weights)


def _loss_and_accuracy(
    result: tuple[float, dict[str, Scalar]] | None,
) -> tuple[float | None, float | None]:
    """The server-side evaluation's loss and accuracy, None where it measured none."""
    if result is None:
        return None, None
    accuracy = result[1].get("accuracy")
    return result[0], float(accuracy) if isinstance(accuracy, (int, float)) else None
