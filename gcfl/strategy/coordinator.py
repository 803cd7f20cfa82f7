"""The server's side of a gcfl round, without Flower: who trains, with what, what to believe.

:class:`Coordinator` keeps everything the server remembers between rounds
(the hyperparameter policy, the seeded Generators, the rollback memory) and
turns one round's replies into the next global model and the round's record.
Clients are partition ids, weights are numpy arrays and replies are the
protocol's plain dicts, so the Flower strategy (:mod:`flower_strategy`) only
translates Flower's types and calls these methods in its hooks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gcfl.config import GcflConfig
from gcfl.protocol import EvaluateInstruction, FitInstruction
from gcfl.strategy.aggregation import (
    agreeing,
    agreement,
    best_share,
    clip_factors,
    improved_enough,
    krum_selection,
    robust_average,
    shortened,
    weighted_average,
)
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
from gcfl.strategy.judge import (
    EvaluateVerdict,
    FitVerdict,
    judge_candidates,
    judge_evaluate,
    judge_fit,
    no_reply,
    weighted_evaluation,
)
from gcfl.strategy.policy import (
    ClientState,
    HyperparameterPolicy,
    Report,
    states_from_dict,
    states_to_dict,
)
from gcfl.strategy.population import make_policy
from gcfl.strategy.record import ClientRecord, GroupRecord, RoundRecord
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


@dataclass(frozen=True)
class NoReply:
    """A sampled client that sent no usable reply: ``outcome`` failed or timed-out."""

    outcome: str
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


class StrategySetupError(RuntimeError):
    """The federation cannot run this configuration (too few SuperNodes, duplicate ids...)."""


class Coordinator:
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
        # fitness=federated: the policy evolves only once the candidates are judged.
        self.federated = config.strategy == "gcfl" and config.fitness == "federated"
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
            return FitInstruction(
                server_round,
                lr_grid=self.config.search_lrs,
                batch_grid=self.config.search_batch_sizes,
            )
        return FitInstruction(server_round, pair.lr, pair.batch_size)

    def judge(self, client_id: int, reply: FitReply | NoReply | None) -> FitVerdict:
        """The verdict on one sampled client's reply (None: it never answered)."""
        instruction = self._instructions[client_id]
        if reply is None:
            return no_reply(instruction, "failed", "no reply")
        if isinstance(reply, NoReply):
            return no_reply(instruction, reply.outcome, reply.reason)  # type: ignore[arg-type]
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

    def finish_fit(self, replies: Mapping[int, FitReply | NoReply]) -> Weights | None:
        """Judge every sampled client, evolve the policy; the new global model, or None."""
        assert self.round is not None, "start_fit was not called"
        record = self.round
        verdicts = {cid: self.judge(cid, replies.get(cid)) for cid in self._instructions}
        record.clients = [
            ClientRecord.of(cid, self._instructions[cid], v) for cid, v in verdicts.items()
        ]
        # The mean, or under a robust aggregate the median: a minority must not steer it.
        robust = self.config.strategy == "gcfl" and self.config.aggregate != "mean"
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
        if self.config.strategy == "gcfl" and self.config.aggregate_clip > 0:
            factors = clip_factors(
                [verdicts[cid].update_ratio for cid in averaged], self.config.aggregate_clip
            )
            updates = [
                (shortened(weights, self._global_weights, factor), count)
                for (weights, count), factor in zip(updates, factors, strict=True)
            ]
        aggregate = self._robust(averaged, updates)
        if self.pending is not None:
            self.pending.updates = dict(zip(averaged, updates, strict=True))
            self.pending.aggregate = aggregate
        return aggregate

    def _robust(self, client_ids: list[int], updates: list[tuple[Weights, int]]) -> Weights:
        """The round's aggregate by ``aggregate``; what each rule left out goes in the record."""
        rule = self.config.aggregate
        if self.config.strategy != "gcfl" or rule in ("mean", "drop-harmful") or len(updates) < 3:
            return weighted_average(updates)
        assert self.round is not None
        clients = {client.id: client for client in self.round.clients}
        if rule == "guarded":
            cosines = agreement([w for w, _ in updates], self._global_weights)
            kept = agreeing(cosines, self.config.aggregate_agreement)
            for position, cid in enumerate(client_ids):
                clients[cid].agreement = round(cosines[position], 4)
                clients[cid].left_out = position not in kept
            kept_updates = [updates[i] for i in kept]
            ratios = [_move_ratio(w, self._global_weights) for w, _ in kept_updates]
            factors = clip_factors(ratios, GUARD_CLIP)
            self.round.aggregated = len(kept)
            return weighted_average(
                [
                    (shortened(w, self._global_weights, f), n)
                    for (w, n), f in zip(kept_updates, factors, strict=True)
                ]
            )
        if rule == "krum":
            keep = len(updates) - self.config.aggregate_byzantine
            kept = krum_selection([w for w, _ in updates], self.config.aggregate_byzantine, keep)
            for position, cid in enumerate(client_ids):
                if position not in kept:
                    clients[cid].left_out = True
            self.round.aggregated = len(kept)
            return weighted_average([updates[i] for i in kept])
        merged, shares = robust_average([w for w, _ in updates], rule, self.config.aggregate_trim)
        for cid, share in zip(client_ids, shares, strict=True):
            clients[cid].outlier_share = round(share, 4)
        return merged

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
        config = self.config
        if config.strategy != "gcfl":
            return accepted_ids
        if self.federated:
            # The federated scores come after the aggregate: these rules rank by the local one.
            local = self.policy.local_scores(accepted_ids)
            scores = [local[cid] for cid in accepted_ids]
        else:
            scores = [self.policy.states[cid].score for cid in accepted_ids]
        minimum = max(2, config.min_fit_clients)
        kept = list(range(len(accepted_ids)))
        if config.aggregate_floor > 0 and config.fitness != "loss":
            kept = improved_enough(scores, config.aggregate_floor, minimum)
        if config.aggregate_share < 1.0:
            best = best_share([scores[i] for i in kept], config.aggregate_share, minimum)
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

    # ------------------------------------------------------ federated fitness
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


def _trained_pair(state: ClientState) -> tuple[float, int]:
    """The pair an accepted client trained with this round (recorded before any grouping)."""
    lr = state.trained_lr if state.trained_lr is not None else state.lr
    batch = state.trained_batch_size if state.trained_batch_size is not None else state.batch_size
    assert lr is not None and batch is not None, "an accepted client has a pair"
    return lr, batch


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
        loss_before=_finite(report.val_loss_before),
        local_loss_before=_finite(report.local_loss_before),
        local_loss_after=_finite(report.local_loss_after),
    )


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _move_ratio(update: Weights, reference: Weights) -> float:
    """``||update - reference||``: one scale for every update of a round."""
    return math.sqrt(
        sum(
            float(np.sum(np.square(np.asarray(u, np.float64) - np.asarray(r, np.float64))))
            for u, r in zip(update, reference, strict=True)
        )
    )
