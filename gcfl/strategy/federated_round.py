"""fitness=federated, the coordinator's half: which clients evaluate which candidates, and
what their losses say (the rules themselves are :mod:`gcfl.strategy.candidates`).

:class:`FederatedFitnessRound` holds the methods; :class:`~gcfl.strategy.coordinator.Coordinator`
inherits them and owns the state they read (the round, the policy, the pending fits).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gcfl.config import GcflConfig
from gcfl.names import NoReplyOutcome
from gcfl.protocol import EvaluateInstruction, FitInstruction
from gcfl.strategy.aggregation import weighted_average
from gcfl.strategy.candidates import (
    Candidates,
    candidates_for,
    client_scores,
    fitness_groups,
    group_contributions,
    harmful_groups,
    judgeable_groups,
)
from gcfl.strategy.features import SearchSpace, hyperparameter_features
from gcfl.strategy.judge import EvaluateVerdict, judge_candidates, weighted_evaluation
from gcfl.strategy.policy import ClientState, HyperparameterPolicy
from gcfl.strategy.record import GroupRecord, RoundRecord
from gcfl.strategy.sampling import num_sampled

Weights = list[np.ndarray]


@dataclass(frozen=True)
class NoReply:
    """A sampled client that sent no usable reply: ``outcome`` failed or timed-out."""

    outcome: NoReplyOutcome
    reason: str


@dataclass
class PendingFitness:
    """A round between its fits and its federated fitness (``fitness=federated``).

    ``updates`` are the accepted updates as averaged (after any clip), keyed
    by client; ``labels`` every trained client's cluster; ``aggregate`` the
    model the round returns when the evaluation cannot judge (None: the round
    keeps the global model, as after a rollback or too few updates).
    """

    labels: dict[int, int]
    updates: dict[int, tuple[Weights, int]]
    aggregate: Weights | None
    groups: dict[int, tuple[int, ...]] | None = None
    candidates: Candidates | None = None
    plan: dict[int, list[int]] | None = None  # evaluator -> the groups it judges


class FederatedFitnessRound:
    """The federated fitness' steps of a round, for the Coordinator that inherits them."""

    config: GcflConfig
    capacity: dict[int, int]
    policy: HyperparameterPolicy
    evaluation_rng: np.random.Generator
    round: RoundRecord | None
    pending: PendingFitness | None
    _instructions: dict[int, FitInstruction]
    _global_weights: Weights

    def _note_policy(self, labels: Mapping[int, int]) -> None:
        raise NotImplementedError

    def candidate_requests(self) -> dict[int, tuple[EvaluateInstruction, list[Weights]]]:
        """fitness=federated: each evaluator's instruction and models (the aggregate first).

        Empty when there is nothing to judge (no pending round, fewer than two
        groups of accepted updates, no evaluator that may judge any group);
        :meth:`finish_candidates` must still be called.
        """
        pending = self.pending
        if pending is None or pending.aggregate is None or self.round is None:
            return {}
        accepted = {cid: pending.labels[cid] for cid in pending.updates if cid in pending.labels}
        states = self.policy.states
        space = SearchSpace(
            self.config.lr_min, self.config.lr_max, self.config.batch_min, self.config.batch_max
        )
        ids = sorted(accepted)
        pairs = [_trained_pair(states[c]) for c in ids]
        rows = hyperparameter_features(
            [lr for lr, _ in pairs], [batch for _, batch in pairs], space
        )
        groups = fitness_groups(accepted, dict(zip(ids, rows.tolist(), strict=True)))
        if len(groups) < 2:
            return {}
        pending.groups = groups
        candidates = candidates_for(
            self.config.fitness_candidates, pending.updates, groups, self._global_weights
        )
        pending.candidates = candidates
        plan = {e: judgeable_groups(e, groups) for e in self._fitness_evaluators()}
        pending.plan = {e: labels for e, labels in plan.items() if labels}
        server_round = self.round.round
        requests = {}
        for evaluator, labels in pending.plan.items():
            models = candidates.models(labels)
            requests[evaluator] = (EvaluateInstruction(server_round, len(models), "local"), models)
        return requests

    def _fitness_evaluators(self) -> list[int]:
        """The round's evaluators: clients that did not train first, then some that did."""
        config = self.config
        count = config.fitness_evaluators
        if config.fraction_evaluate > 0:
            count = max(count, num_sampled(len(self.capacity), config.fraction_evaluate, 1))
        trained = sorted(self._instructions)
        idle = sorted(set(self.capacity) - set(trained))
        rng = self.evaluation_rng
        chosen = [int(c) for c in rng.permutation(np.array(idle, dtype=np.int64))[:count]]
        if len(chosen) < count:
            extra = rng.permutation(np.array(trained, dtype=np.int64))[: count - len(chosen)]
            chosen += [int(c) for c in extra]
        return sorted(chosen)

    def finish_candidates(
        self, replies: Mapping[int, tuple[Any, Mapping[str, Any], int] | NoReply]
    ) -> Weights | None:
        """Judge the evaluators' losses, evolve the policy; the round's global model.

        The groups whose absence lowered the evaluators' median loss are left
        out of the aggregate; every other accepted update is averaged. Without
        a believed evaluation, clients rank by their own improvement and every
        accepted update counts (None: keep the model ``finish_fit`` returned).
        """
        assert self.round is not None and self.pending is not None
        record, pending, self.pending = self.round, self.pending, None
        local = self.policy.local_scores(pending.labels)
        if pending.groups is None or pending.candidates is None or pending.plan is None:
            self.policy.evolve(pending.labels, local)
            self._note_policy(pending.labels)
            return pending.aggregate
        judged: dict[int, dict[int, tuple[float, float]]] = {}
        verdicts: list[EvaluateVerdict] = []
        refused: dict[str, str] = {}
        for evaluator, labels in sorted(pending.plan.items()):
            reply = replies.get(evaluator)
            if reply is None or isinstance(reply, NoReply):
                why = "no reply" if reply is None else f"{reply.outcome}: {reply.reason}"
                refused[str(evaluator)] = why
                continue
            expected = len(pending.candidates.models(labels))
            verdict = judge_candidates(evaluator, *reply, expected, self._local_capacity(evaluator))
            if verdict.report is None:
                refused[str(evaluator)] = str(verdict.reason)
                continue
            verdicts.append(verdict)
            judged[evaluator] = pending.candidates.with_and_without(verdict.report.losses, labels)
        judgements = group_contributions(judged, pending.groups)
        harmful = harmful_groups(judgements) if self.config.aggregate == "drop-harmful" else set()
        candidates = pending.candidates
        shares = (
            candidates.shares
            if candidates.kind == "leave-out"
            else dict.fromkeys(candidates.shares, 1.0)
        )
        scores = {**local, **client_scores(pending.groups, judgements, shares, local)}
        self.policy.evolve(pending.labels, scores)
        self._note_policy(pending.labels)
        record.evaluation_refused = refused
        record.federated_clients = len(verdicts)
        result = weighted_evaluation(verdicts)
        if result is not None:
            record.federated_loss, record.federated_accuracy = result
        record.groups = [
            GroupRecord(
                label=label,
                members=list(members),
                share=round(candidates.shares[label], 6),
                contribution=judgements[label].contribution,
                evaluators=judgements[label].evaluators,
                left_out=label in harmful,
            )
            for label, members in pending.groups.items()
        ]
        left_out = {c for label in harmful for c in pending.groups[label]}
        for client in record.clients:
            client.left_out = client.id in left_out
        if not harmful:
            return candidates.aggregate
        kept = [cid for cid in sorted(pending.updates) if cid not in left_out]
        record.aggregated = len(kept)
        return weighted_average([pending.updates[cid] for cid in kept])

    def _local_capacity(self, client_id: int) -> int:
        """The most examples a client holds in all (training and validation splits)."""
        train = self.capacity[client_id]
        return math.ceil(train / (1.0 - self.config.val_fraction)) + 1


def _trained_pair(state: ClientState) -> tuple[float, int]:
    """The pair an accepted client trained with this round (recorded before any grouping)."""
    lr = state.trained_lr if state.trained_lr is not None else state.lr
    batch = state.trained_batch_size if state.trained_batch_size is not None else state.batch_size
    assert lr is not None and batch is not None, "an accepted client has a pair"
    return lr, batch
