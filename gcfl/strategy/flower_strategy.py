"""The Flower Strategy: a thin adapter between Flower's FedAvg and gcfl's pure algorithm."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.common import (
    EvaluateIns,
    FitIns,
    FitRes,
    GetPropertiesIns,
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
from gcfl.strategy.aggregation import update_problem, update_ratio, weighted_average
from gcfl.strategy.genetic import Hyperparameters
from gcfl.strategy.population import (
    FixedHyperparameters,
    GeneticPopulation,
    GeneticSettings,
    HyperparameterPolicy,
    Report,
    Status,
    states_from_dict,
    states_to_dict,
)
from gcfl.strategy.rollback import mean_finite, rollback_needed
from gcfl.strategy.sampling import check_federation_size, num_sampled, sample_clients

RoundCallback = Callable[[dict[str, Any], NDArrays], None]


class StrategySetupError(RuntimeError):
    """The federation cannot run this configuration (too few SuperNodes, duplicate ids...)."""


@dataclass
class _RoundInProgress:
    started: float
    sampled: list[int]
    assigned: dict[int, Hyperparameters | None]
    global_weights: NDArrays
    clients: list[dict[str, Any]] = field(default_factory=list)
    accepted: int = 0
    counted: bool = False
    rolled_back: bool = False
    # The sampled clients' mean validation loss of the global model they received.
    global_val_loss: float | None = None


def make_policy(
    config: GcflConfig, client_ids: list[int], rng: np.random.Generator
) -> HyperparameterPolicy:
    """The hyperparameter policy that ``config.strategy`` names, for these clients."""
    if config.strategy == "fedavg":
        return FixedHyperparameters(
            client_ids, Hyperparameters(config.fedavg_lr, config.fedavg_batch_size)
        )
    settings = GeneticSettings.from_config(config)
    if config.init == "search":
        return GeneticPopulation.search_init(client_ids, settings, rng)
    return GeneticPopulation.random_init(client_ids, settings, rng)


class GeneticClusteredFedAvg(FedAvg):
    """FedAvg in which every client trains with its own learning rate and batch size.

    Before round 1 the strategy asks every SuperNode for its partition id; all
    state is keyed by it, never by Flower's node ids, which change every run.
    Each round it samples clients with its own seeded Generator, sends each a
    separate ``FitIns`` with its ``lr`` and ``batch-size``, checks and averages
    the updates (weighted, in ascending partition-id order) and hands the
    clients' validation losses to the hyperparameter policy: the genetic
    clustered algorithm for ``strategy="gcfl"``, one fixed pair for ``"fedavg"``.

    Parameters
    ----------
    config : GcflConfig
        The run's checked configuration.
    initial_parameters : Parameters
        The initial global model.
    evaluate_fn : callable, optional
        Server-side evaluation ``(round, ndarrays, config) -> (loss, metrics)``.
    on_round_end : callable, optional
        Called after every round's evaluation with the round's record and the
        global weights; the ServerApp writes results from it.
    """

    def __init__(
        self,
        *,
        config: GcflConfig,
        initial_parameters: Parameters,
        evaluate_fn: Callable[[int, NDArrays, dict[str, Scalar]], Any] | None = None,
        on_round_end: RoundCallback | None = None,
    ) -> None:
        super().__init__(
            fraction_fit=config.fraction_fit,
            fraction_evaluate=config.fraction_evaluate,
            min_fit_clients=config.min_fit_clients,
            min_available_clients=config.min_fit_clients,
            evaluate_fn=evaluate_fn,
            initial_parameters=initial_parameters,
        )
        self.config = config
        sampling_seed, algorithm_seed = np.random.SeedSequence(config.seed).spawn(2)
        # Separate streams: gcfl and fedavg runs with one seed sample the same clients.
        self.sampling_rng = np.random.default_rng(sampling_seed)
        self.algorithm_rng = np.random.default_rng(algorithm_seed)
        self.on_round_end = on_round_end
        self.nodes: dict[int, ClientProxy] = {}
        self.policy: HyperparameterPolicy | None = None
        self._round: _RoundInProgress | None = None
        # Flower counts each run's rounds from 1; a resumed run continues after the
        # checkpoint's rounds, so its round r is round r + round_offset.
        self.round_offset = 0
        self.completed_rounds = 0
        self._restored: dict[str, Any] | None = None
        # Rollback memory: the global model before the last aggregate, and the
        # clients' mean validation loss of it when it was sent out.
        self.previous_weights: NDArrays | None = None
        self.previous_val_loss: float | None = None

    def __repr__(self) -> str:
        return f"GeneticClusteredFedAvg(strategy={self.config.strategy!r})"

    # ------------------------------------------------------------------ setup
    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """Learn every node's partition id, check the federation is big enough, set up."""
        self.nodes = discover_partitions(client_manager, self.config.probe_timeout)
        check_federation_size(self.config, len(self.nodes))
        self.policy = make_policy(self.config, sorted(self.nodes), self.algorithm_rng)
        if self._restored is not None:
            self._apply_restored(self._restored)
        log(INFO, "gcfl: %d clients (partition ids 0..%d)", len(self.nodes), len(self.nodes) - 1)
        return self.initial_parameters

    # ------------------------------------------------------------ checkpoint
    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly after the last completed round."""
        assert self.policy is not None
        return {
            "completed_rounds": self.completed_rounds,
            "sampling_rng": self.sampling_rng.bit_generator.state,
            "algorithm_rng": self.algorithm_rng.bit_generator.state,
            "clients": states_to_dict(self.policy.states),
            "previous_val_loss": self.previous_val_loss,
        }

    def restore(self, state: dict[str, Any], previous_weights: NDArrays | None = None) -> None:
        """Continue from a checkpoint: applied once the federation is known, before round 1."""
        self.round_offset = self.completed_rounds = int(state["completed_rounds"])
        self.previous_val_loss = state.get("previous_val_loss")
        self.previous_weights = previous_weights if self.previous_val_loss is not None else None
        self._restored = state

    def _apply_restored(self, state: dict[str, Any]) -> None:
        assert self.policy is not None
        clients = states_from_dict(state["clients"])
        if sorted(clients) != sorted(self.nodes):
            raise StrategySetupError(
                f"the checkpoint holds clients {sorted(clients)}, but the federation has "
                f"{sorted(self.nodes)}; resume with the same number of SuperNodes"
            )
        self.policy.states.clear()
        self.policy.states.update(clients)
        # After make_policy: its random init must not advance the restored Generators.
        self.sampling_rng.bit_generator.state = state["sampling_rng"]
        self.algorithm_rng.bit_generator.state = state["algorithm_rng"]

    def _absolute(self, server_round: int) -> int:
        """The round number across resumes (Flower restarts its count at 1)."""
        return server_round + self.round_offset if server_round else 0

    # -------------------------------------------------------------------- fit
    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Sample clients with the seeded Generator; give each its own FitIns."""
        assert self.policy is not None, "initialize_parameters was not called"
        server_round = self._absolute(server_round)
        count = num_sampled(len(self.nodes), self.config.fraction_fit, self.config.min_fit_clients)
        sampled = sample_clients(list(self.nodes), count, self.sampling_rng)
        assigned = {cid: self.policy.assignment(cid) for cid in sampled}
        self._round = _RoundInProgress(
            started=time.perf_counter(),
            sampled=sampled,
            assigned=assigned,
            global_weights=parameters_to_ndarrays(parameters),
        )
        # A new FitIns (and config dict) per client: a shared one would give
        # every client the last client's hyperparameters.
        return [
            (self.nodes[cid], FitIns(parameters, fit_config(server_round, assigned[cid])))
            for cid in sampled
        ]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Check each update, average the accepted ones, and evolve the hyperparameters."""
        assert self.policy is not None and self._round is not None
        server_round = self._absolute(server_round)
        current = self._round
        partition_of = {proxy.cid: cid for cid, proxy in self.nodes.items()}
        replies: dict[int, FitRes] = {}
        for proxy, fit_res in results:
            cid = partition_of.get(proxy.cid)
            if cid in current.assigned:
                replies[cid] = fit_res
        for failure in failures:
            if isinstance(failure, BaseException):
                log(WARNING, "gcfl: round %d: a client failed: %s", server_round, failure)

        reports: dict[int, Report] = {}
        candidates: dict[int, tuple[NDArrays, int]] = {}
        for cid in current.sampled:
            report, update, record = self._judge(cid, replies.get(cid), current)
            reports[cid] = report
            current.clients.append(record)
            if update is not None:
                candidates[cid] = update
        current.global_val_loss = mean_finite(
            r.loss_before for r in reports.values() if r.status != "failed"
        )
        rolled_back = self._rollback_decision(current, reports)

        labels = self.policy.step(server_round, reports)
        for record in current.clients:
            record["cluster"] = labels.get(record["id"])
            record["migrated"] = record["id"] in self.policy.migrants
            record["score"] = self.policy.states[record["id"]].score
        accepted = [candidates[cid] for cid in sorted(candidates)]
        current.accepted = len(accepted)
        if rolled_back is not None:
            current.rolled_back = True
            log(
                WARNING,
                "gcfl: round %d: the clients' validation loss of the global model rose from "
                "%.4g to %.4g; rolled back to the previous global model",
                server_round,
                self.previous_val_loss,
                current.global_val_loss if current.global_val_loss is not None else math.nan,
            )
            self.previous_weights, self.previous_val_loss = None, None
            current.counted, current.accepted = True, 0
            return ndarrays_to_parameters(rolled_back), {"accepted": 0, "rolled-back": True}
        current.counted = len(accepted) >= self.config.min_fit_clients
        if not current.counted:
            log(
                WARNING,
                "gcfl: round %d accepted %d update(s), fewer than min-fit-clients=%d: "
                "the global model stays unchanged",
                server_round,
                len(accepted),
                self.config.min_fit_clients,
            )
            return None, {"accepted": len(accepted)}
        self.previous_weights = current.global_weights
        self.previous_val_loss = current.global_val_loss
        return ndarrays_to_parameters(weighted_average(accepted)), {"accepted": len(accepted)}

    def _rollback_decision(
        self, current: _RoundInProgress, reports: dict[int, Report]
    ) -> NDArrays | None:
        """The previous global model when the last aggregate made things worse, else None.

        Judged only when some client answered: a round in which every client
        failed says nothing about the model.
        """
        if not self.config.rollback or self.previous_weights is None:
            return None
        if all(r.status == "failed" for r in reports.values()):
            return None
        if rollback_needed(
            self.previous_val_loss, current.global_val_loss, self.config.rollback_tolerance
        ):
            return self.previous_weights
        return None

    def _judge(
        self, cid: int, reply: FitRes | None, current: _RoundInProgress
    ) -> tuple[Report, tuple[NDArrays, int] | None, dict[str, Any]]:
        """One client's report for the algorithm, its update if accepted, and its record."""
        assigned = current.assigned[cid]
        record: dict[str, Any] = {
            "id": cid,
            "lr": assigned.lr if assigned else None,
            "batch_size": assigned.batch_size if assigned else None,
            "cluster": None,
            "val_loss": None,
            "status": "failed",
            # What the strategy sent; lr and batch_size become what the client reports.
            "assigned_lr": assigned.lr if assigned else None,
            "assigned_batch_size": assigned.batch_size if assigned else None,
        }
        if reply is None:
            return _unusable(record, "failed"), None, record
        metrics, problem = parse_fit_metrics(cid, reply.metrics)
        if metrics is None:
            record.update(reason=problem)
            return _unusable(record, "refused"), None, record
        record.update(
            lr=metrics["lr"],
            batch_size=metrics["batch-size"],
            val_loss_before=metrics["val-loss-before"],
            local_loss_before=metrics["local-loss-before"],
            local_loss_after=metrics["local-loss-after"],
            val_loss=metrics["val-loss"],
            val_accuracy=metrics["val-accuracy"],
            train_loss=metrics["train-loss"],
            num_examples=reply.num_examples,
            status=metrics["status"],
        )
        update = None
        if metrics["status"] == "ok":
            weights = parameters_to_ndarrays(reply.parameters)
            problem = update_problem(weights, current.global_weights, self.config.max_update_norm)
            ratio = update_ratio(weights, current.global_weights) if problem is None else None
            record["update_ratio"] = None if ratio is None else round(ratio, 6)
            if problem is None and reply.num_examples <= 0:
                problem = "num_examples must be > 0"
            if problem is None:
                update = (weights, reply.num_examples)
            else:
                record.update(status="refused", reason=problem)
        report = Report(
            metrics["lr"],
            metrics["batch-size"],
            metrics["val-loss"],
            record["status"],
            loss_before=metrics["val-loss-before"],
            local_loss_before=metrics["local-loss-before"],
            local_loss_after=metrics["local-loss-after"],
        )
        return report, update, record

    # ------------------------------------------------------------- evaluation
    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        if self.config.fraction_evaluate == 0.0:
            return []
        return super().configure_evaluate(server_round, parameters, client_manager)

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """Evaluate the global model on the server's test set, then close the round's record."""
        result = super().evaluate(server_round, parameters)
        current = self._round
        if server_round == 0 or current is None:
            return result
        server_round = self._absolute(server_round)
        self.completed_rounds = server_round
        loss, metrics = result if result is not None else (None, {})
        record = {
            "round": server_round,
            "accuracy": metrics.get("accuracy"),
            "loss": loss,
            "seconds": round(time.perf_counter() - current.started, 3),
            "status": "rolled-back"
            if current.rolled_back
            else ("ok" if current.counted else "failed"),
            "accepted": current.accepted,
            "global_val_loss": current.global_val_loss,
            "clients": current.clients,
        }
        if self.on_round_end is not None:
            self.on_round_end(record, parameters_to_ndarrays(parameters))
        self._round = None
        return result


def _unusable(record: dict[str, Any], status: Status) -> Report:
    """The report of a client whose reply gives the algorithm nothing to learn from."""
    record["status"] = status
    return Report(record["lr"] or math.nan, record["batch_size"] or 0, None, status)


def fit_config(server_round: int, pair: Hyperparameters | None) -> dict[str, Scalar]:
    """The fit config of one client: its own lr and batch size, or a request to search."""
    if pair is None:
        return {"server-round": server_round, "search": True}
    return {"server-round": server_round, "lr": float(pair.lr), "batch-size": int(pair.batch_size)}


_STATUSES = ("ok", "diverged")


def parse_fit_metrics(
    cid: int, metrics: dict[str, Scalar]
) -> tuple[dict[str, Any] | None, str | None]:
    """The fields gcfl needs from a client's fit metrics, or None and what is wrong."""
    try:
        reported_id = metrics["client-id"]
        if isinstance(reported_id, bool) or int(reported_id) != cid:
            return None, f"client-id {reported_id!r} does not match partition id {cid}"
        lr = metrics["lr"]
        batch_size = metrics["batch-size"]
        status = metrics["status"]
        if isinstance(lr, (bool, str, bytes)) or not (math.isfinite(float(lr)) and lr > 0):
            return None, f"lr {lr!r} is not a positive number"
        if isinstance(batch_size, (bool, str, bytes, float)) or batch_size < 1:
            return None, f"batch-size {batch_size!r} is not a positive integer"
        if status not in _STATUSES:
            return None, f"status {status!r} is not one of {', '.join(_STATUSES)}"
        floats = {}
        for key in (
            "val-loss-before",
            "val-loss",
            "val-accuracy",
            "train-loss",
            "local-loss-before",
            "local-loss-after",
        ):
            value = metrics.get(key, math.nan)
            if isinstance(value, (bool, str, bytes)):
                return None, f"{key} {value!r} is not a number"
            floats[key] = float(value) if math.isfinite(float(value)) else None
    except KeyError as missing:
        return None, f"fit metrics lack {missing}"
    except (TypeError, ValueError) as error:
        return None, f"malformed fit metrics ({error})"
    return {
        "lr": float(lr),
        "batch-size": int(batch_size),
        "status": status,
        **floats,
    }, None


def discover_partitions(client_manager: ClientManager, timeout: float) -> dict[int, ClientProxy]:
    """Ask every node for its partition id until all ``num-partitions`` have answered.

    Raises :class:`StrategySetupError` on duplicate ids, or when not every
    partition has answered within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    probed: set[str] = set()
    nodes: dict[int, ClientProxy] = {}
    expected: int | None = None
    with ThreadPoolExecutor(max_workers=16) as pool:
        while True:
            fresh = [p for p in client_manager.all().values() if p.cid not in probed]
            answers = pool.map(_probe, fresh, [max(1.0, deadline - time.monotonic())] * len(fresh))
            for proxy, answer in zip(fresh, answers, strict=True):
                if answer is None:
                    continue  # asked again on the next poll
                probed.add(proxy.cid)
                cid, total = answer
                if cid in nodes:
                    raise StrategySetupError(
                        f"two SuperNodes report partition-id {cid}; give each node a "
                        "distinct partition-id in its --node-config"
                    )
                if expected is not None and total != expected:
                    raise StrategySetupError(
                        f"SuperNodes disagree on num-partitions ({expected} vs {total})"
                    )
                expected = total
                nodes[cid] = proxy
            if expected is not None and len(nodes) >= expected:
                return dict(sorted(nodes.items()))
            if time.monotonic() > deadline:
                raise StrategySetupError(
                    f"only {len(nodes)} of {expected if expected else '?'} SuperNodes "
                    f"answered within probe-timeout={timeout:g}s; start them all or raise "
                    "probe-timeout"
                )
            time.sleep(0.5)


def _probe(proxy: ClientProxy, timeout: float) -> tuple[int, int] | None:
    try:
        res = proxy.get_properties(GetPropertiesIns(config={}), timeout=timeout, group_id=0)
        return int(res.properties["partition-id"]), int(res.properties["num-partitions"])
    except Exception as error:  # a node that cannot answer is retried on the next poll
        log(WARNING, "gcfl: node %s did not report its partition id: %s", proxy.cid, error)
        return None
