"""The server's side of a gcfl round, without Flower: who trains, with what, what to believe.

:class:`Coordinator` keeps everything the server remembers between rounds
(the hyperparameter policy, the seeded Generators, the rollback memory) and
turns one round's replies into the next global model and the round's record.
Clients are partition ids, weights are numpy arrays and replies are the
protocol's plain dicts, so the Flower strategy (:mod:`flower_strategy`) only
translates Flower's types and calls these methods in its hooks.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gcfl.config import GcflConfig
from gcfl.protocol import FitInstruction, SearchInstruction, TrainInstruction
from gcfl.strategy.aggregation import (
    best_share,
    clip_factors,
    improved_enough,
    shortened,
)
from gcfl.strategy.federated_round import FederatedFitnessRound, NoReply, PendingFitness
from gcfl.strategy.judge import (
    EvaluateVerdict,
    FitVerdict,
    judge_evaluate,
    judge_fit,
    no_reply,
    weighted_evaluation,
)
from gcfl.strategy.policy import (
    HyperparameterPolicy,
    Report,
    RoundRules,
    states_from_dict,
    states_to_dict,
)
from gcfl.strategy.population import make_policy
from gcfl.strategy.record import ClientRecord, RoundRecord
from gcfl.strategy.robust import robust_aggregate
from gcfl.strategy.rollback import mean_finite, median_finite, rollback_needed
from gcfl.strategy.sampling import num_sampled, sample_clients

Weights = list[np.ndarray]
# aggregate=guarded: the kept updates are shortened to this many times their median move.
GUARD_CLIP = 2.0


@dataclass(frozen=True)
class FitReply:
    """A client's fit reply as it arrived: nothing in it is believed yet."""

    metrics: Mapping[str, Any]
    num_examples: int
    weights: Weights


class StrategySetupError(RuntimeError):
    """The federation cannot run this configuration (too few SuperNodes, duplicate ids...)."""


class Coordinator(FederatedFitnessRound):
    """Every round's decisions for the clients ``capacity`` names (partition id -> examples)."""

    def __init__(
        self, config: GcflConfig, capacity: Mapping[int, int], accept_failures: bool = True
    ) -> None:
        self.config = config
        # As Flower's FedAvg: off, a round in which any client failed, timed out or
        # was refused keeps the global model (the hyperparameters still evolve).
        self.accept_failures = accept_failures
        self.capacity = dict(sorted(capacity.items()))
        # Separate streams: gcfl and fedavg runs with one seed sample the same clients,
        # and federated evaluation never shifts which clients train.
        sampling, algorithm, evaluation = np.random.SeedSequence(config.seed).spawn(3)
        self.sampling_rng = np.random.default_rng(sampling)
        self.algorithm_rng = np.random.default_rng(algorithm)
        self.evaluation_rng = np.random.default_rng(evaluation)
        self.policy: HyperparameterPolicy = make_policy(
            config, list(self.capacity), self.algorithm_rng
        )
        self.completed_rounds = 0
        # Rollback memory: the global model before the last aggregate, and the
        # clients' mean validation loss of it when it was sent out.
        self.previous_weights: Weights | None = None
        self.previous_val_loss: float | None = None
        self.round: RoundRecord | None = None
        # fitness=federated: the round between its aggregate and its candidates' judgement.
        self.pending: PendingFitness | None = None
        self.completed_record: RoundRecord | None = None
        self._instructions: dict[int, FitInstruction] = {}
        self._refreshed: set[int] = set()
        self._global_weights: Weights = []
        self._started = 0.0

    # ------------------------------------------------------------------ fit
    def start_fit(self, server_round: int, global_weights: Weights) -> dict[int, FitInstruction]:
        """Sample the round's clients; each gets its own instruction."""
        config = self.config
        count = num_sampled(len(self.capacity), config.fraction_fit, config.min_fit_clients)
        sampled = sample_clients(list(self.capacity), count, self.sampling_rng)
        self._refreshed = self.policy.prepare(server_round, sampled)
        self._instructions = {cid: self._instruction(server_round, cid) for cid in sampled}
        self._global_weights = global_weights
        self._started = time.perf_counter()
        self.round = RoundRecord(round=server_round)
        return self._instructions

    def _instruction(self, server_round: int, client_id: int) -> FitInstruction:
        pair = self.policy.assignment(client_id)
        if pair is None:
            return SearchInstruction(
                server_round, self.config.search_lrs, self.config.search_batch_sizes
            )
        return TrainInstruction(server_round, pair.lr, pair.batch_size)

    def judge(self, client_id: int, reply: FitReply | NoReply | None) -> FitVerdict:
        """The verdict on one sampled client's reply (None: it never answered)."""
        instruction = self._instructions[client_id]
        if reply is None:
            return no_reply(instruction, "failed", "no reply")
        if isinstance(reply, NoReply):
            return no_reply(instruction, reply.outcome, reply.reason)
        return judge_fit(
            client_id,
            instruction,
            reply.metrics,
            reply.num_examples,
            reply.weights,
            self._global_weights,
            self.capacity[client_id],
            self.config.max_update_norm,
        )

    @property
    def rules(self) -> RoundRules:
        """The policy's rules for the round's updates (FedAvg's: every update averaged)."""
        return self.policy.rules

    @property
    def federated(self) -> bool:
        """fitness=federated: the policy evolves only once the candidates are judged."""
        return self.rules.federated

    def finish_fit(self, replies: Mapping[int, FitReply | NoReply]) -> Weights | None:
        """Judge every sampled client, evolve the policy; the new global model, or None."""
        assert self.round is not None, "start_fit was not called"
        record = self.round
        verdicts = {cid: self.judge(cid, replies.get(cid)) for cid in self._instructions}
        record.clients = [
            ClientRecord.of(cid, self._instructions[cid], v) for cid, v in verdicts.items()
        ]
        # The mean, or under a robust aggregate the median: a minority must not steer it.
        robust = self.rules.aggregate != "mean"
        summary = median_finite if robust else mean_finite
        record.global_val_loss = summary(
            v.report.val_loss_before for v in verdicts.values() if v.report and v.report_believed
        )
        reports = {c: _report(v) for c, v in verdicts.items()}
        if self.federated:
            labels = self.policy.record(record.round, reports)
            self.pending = PendingFitness(labels, {}, None)
        else:
            labels = self.policy.step(record.round, reports)
        self._note_policy(labels)
        accepted_ids = [cid for cid in sorted(verdicts) if verdicts[cid].update]
        self.completed_rounds = record.round
        if self._should_roll_back(verdicts, record.global_val_loss):
            record.status, record.accepted = "rolled-back", 0
            restored, self.previous_weights, self.previous_val_loss = (
                self.previous_weights,
                None,
                None,
            )
            return restored
        record.accepted = len(accepted_ids)
        failures = any(v.outcome in ("refused", "failed", "timed-out") for v in verdicts.values())
        if len(accepted_ids) < self.config.min_fit_clients or (
            failures and not self.accept_failures
        ):
            record.status = "failed"
            return None
        averaged = self._averaged(accepted_ids)
        record.aggregated = len(averaged)
        self.previous_weights = self._global_weights
        self.previous_val_loss = record.global_val_loss
        updates = [_accepted_update(verdicts[cid]) for cid in averaged]
        if self.rules.clip > 0:
            factors = clip_factors(
                [verdicts[cid].update_ratio for cid in averaged], self.rules.clip
            )
            updates = [
                (shortened(weights, self._global_weights, factor), count)
                for (weights, count), factor in zip(updates, factors, strict=True)
            ]
        clients = {client.id: client for client in record.clients}
        aggregate, record.aggregated = robust_aggregate(
            self.rules.aggregate, self.config, averaged, updates, self._global_weights, clients
        )
        if self.pending is not None:
            self.pending.updates = dict(zip(averaged, updates, strict=True))
            self.pending.aggregate = aggregate
        return aggregate

    def _note_policy(self, labels: Mapping[int, int]) -> None:
        """Copy the policy's clusters, migrations and scores into the round's client records."""
        assert self.round is not None
        for client in self.round.clients:
            state = self.policy.states[client.id]
            client.cluster = labels.get(client.id)
            client.migrated = client.id in self.policy.migrants
            client.refreshed = client.id in self._refreshed
            client.score = state.score

    def _averaged(self, accepted_ids: list[int]) -> list[int]:
        """The accepted clients whose updates are averaged (``aggregate-share``).

        A round that samples few clients, some at lrs that barely move the
        model, would otherwise be pulled back towards the old model by them;
        the fitness the genetic step just computed says which fits moved it.
        """
        config, rules = self.config, self.rules
        if rules.floor <= 0 and rules.share >= 1.0:
            return accepted_ids
        if self.federated:
            # The federated scores come after the aggregate: these rules rank by the local one.
            local = self.policy.local_scores(accepted_ids)
            scores = [local[cid] for cid in accepted_ids]
        else:
            scores = [self.policy.states[cid].score for cid in accepted_ids]
        minimum = max(2, config.min_fit_clients)
        kept = list(range(len(accepted_ids)))
        if rules.floor > 0:
            kept = improved_enough(scores, rules.floor, minimum)
        if rules.share < 1.0:
            best = best_share([scores[i] for i in kept], rules.share, minimum)
            kept = [kept[i] for i in best]
        return [accepted_ids[i] for i in kept]

    def _should_roll_back(
        self, verdicts: Mapping[int, FitVerdict], global_val_loss: float | None
    ) -> bool:
        """Whether the last aggregate made the clients' validation loss worse.

        Judged only when some client answered with a report the server
        believes: a round without one says nothing about the model.
        """
        if not self.config.rollback or self.previous_weights is None:
            return False
        if not any(v.report_believed for v in verdicts.values()):
            return False
        return rollback_needed(
            self.previous_val_loss, global_val_loss, self.config.rollback_tolerance
        )

    # ------------------------------------------------------------ evaluation
    def evaluation_sample(self) -> list[int]:
        """The clients that evaluate the global model this round (``fraction-evaluate``)."""
        if self.config.fraction_evaluate == 0.0:
            return []
        count = num_sampled(len(self.capacity), self.config.fraction_evaluate, 1)
        return sample_clients(list(self.capacity), count, self.evaluation_rng)

    def finish_evaluation(
        self, replies: Mapping[int, tuple[Any, Mapping[str, Any], int] | NoReply]
    ) -> tuple[float, float] | None:
        """Record the clients' weighted validation loss and accuracy of the global model."""
        assert self.round is not None
        verdicts: list[EvaluateVerdict] = []
        for cid, reply in sorted(replies.items()):
            if isinstance(reply, NoReply):
                verdicts.append(EvaluateVerdict(None, 0, f"{reply.outcome}: {reply.reason}"))
            else:
                verdicts.append(judge_evaluate(cid, *reply, self.capacity[cid]))
        result = weighted_evaluation(verdicts)
        self.round.federated_clients = sum(v.report is not None for v in verdicts)
        self.round.evaluation_refused = {
            str(cid): v.reason
            for cid, v in zip(sorted(replies), verdicts, strict=True)
            if v.reason is not None
        }
        if result is not None:
            self.round.federated_loss, self.round.federated_accuracy = result
        return result

    def close_round(self, loss: float | None, accuracy: float | None) -> RoundRecord:
        """The finished round's record, with the server-side evaluation of its global model."""
        assert self.round is not None
        record, self.round = self.round, None
        self.completed_record = record
        record.loss, record.accuracy = loss, accuracy
        record.seconds = round(time.perf_counter() - self._started, 3)
        return record

    # ------------------------------------------------------------ checkpoint
    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly after the last completed round."""
        return {
            "completed_rounds": self.completed_rounds,
            "sampling_rng": self.sampling_rng.bit_generator.state,
            "algorithm_rng": self.algorithm_rng.bit_generator.state,
            "evaluation_rng": self.evaluation_rng.bit_generator.state,
            "clients": states_to_dict(self.policy.states),
            "previous_val_loss": self.previous_val_loss,
        }

    def restore(self, state: Mapping[str, Any], previous_weights: Weights | None) -> None:
        """Continue from what :meth:`state` returned; replaces the policy's random init."""
        clients = states_from_dict(state["clients"])
        if sorted(clients) != sorted(self.capacity):
            raise StrategySetupError(
                f"the checkpoint holds clients {sorted(clients)}, but the federation has "
                f"{sorted(self.capacity)}; resume with the same number of SuperNodes"
            )
        self.policy.states.clear()
        self.policy.states.update(clients)
        self.completed_rounds = int(state["completed_rounds"])
        self.previous_val_loss = state.get("previous_val_loss")
        self.previous_weights = previous_weights if self.previous_val_loss is not None else None
        self.sampling_rng.bit_generator.state = state["sampling_rng"]
        self.algorithm_rng.bit_generator.state = state["algorithm_rng"]
        if "evaluation_rng" in state:
            self.evaluation_rng.bit_generator.state = state["evaluation_rng"]


def _accepted_update(verdict: FitVerdict) -> tuple[Weights, int]:
    assert verdict.update is not None, "only accepted verdicts are averaged"
    return verdict.update


def _report(verdict: FitVerdict) -> Report:
    """What the policy learns from a verdict: the server's pair, and losses only if accepted."""
    pair, report = verdict.pair, verdict.report
    lr, batch_size = (pair.lr, pair.batch_size) if pair else (None, None)
    if not verdict.report_believed or report is None:
        return Report(lr, batch_size, None, verdict.outcome)
    return Report(
        lr,
        batch_size,
        _finite(report.val_loss) if verdict.outcome == "ok" else None,
        verdict.outcome,
        val_loss_before=_finite(report.val_loss_before),
        local_loss_before=_finite(report.local_loss_before),
        local_loss_after=_finite(report.local_loss_after),
    )


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
