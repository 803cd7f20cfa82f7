"""One round's record, as ``results.json`` stores it: a typed value, not a loose dict.

The strategy fills a :class:`RoundRecord` as the round goes (the fit verdicts,
the policy's step, the evaluations) and hands ``to_dict()`` to whoever writes
results. The dict's keys are the results.json schema README documents.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from gcfl.protocol import LOSS_FIELDS, FitInstruction, TrainInstruction
from gcfl.strategy.judge import FitVerdict


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


@dataclass
class ClientRecord:
    """One sampled client in one round: what it was sent, what it said, what the server kept."""

    id: int
    status: str
    lr: float | None
    batch_size: int | None
    assigned_lr: float | None
    assigned_batch_size: int | None
    reason: str | None = None
    reported_lr: float | None = None
    reported_batch_size: int | None = None
    val_loss_before: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    train_loss: float | None = None
    local_loss_before: float | None = None
    local_loss_after: float | None = None
    num_examples: int | None = None
    update_ratio: float | None = None
    cluster: int | None = None
    migrated: bool = False
    refreshed: bool = False  # trained with an offspring of the latest best, not its stale pair
    score: float | None = None
    # Accepted, but left out of the aggregate: by aggregate=krum, or its group by
    # aggregate=drop-harmful.
    left_out: bool = False
    # aggregate=median or trimmed-mean: the share of its coordinates the rule dropped.
    outlier_share: float | None = None
    # aggregate=guarded: the cosine of its move with the other updates' mean direction.
    agreement: float | None = None

    @classmethod
    def of(cls, client_id: int, instruction: FitInstruction, verdict: FitVerdict) -> ClientRecord:
        assigned = instruction if isinstance(instruction, TrainInstruction) else None
        record = cls(
            id=client_id,
            status=verdict.outcome,
            lr=verdict.pair.lr if verdict.pair else None,
            batch_size=verdict.pair.batch_size if verdict.pair else None,
            assigned_lr=assigned.lr if assigned else None,
            assigned_batch_size=assigned.batch_size if assigned else None,
            reason=verdict.reason,
        )
        report = verdict.report
        if report is not None:
            record.reported_lr, record.reported_batch_size = report.lr, report.batch_size
            for name in LOSS_FIELDS:
                if hasattr(record, name):
                    setattr(record, name, _finite(getattr(report, name)))
        if verdict.update is not None:
            record.num_examples = verdict.update[1]
        if verdict.update_ratio is not None:
            record.update_ratio = round(verdict.update_ratio, 6)
        return record


@dataclass
class GroupRecord:
    """One group of the federated fitness: its members and what the evaluators said of it."""

    label: int
    members: list[int]
    share: float  # of the aggregate's examples
    contribution: float | None  # median of loss(A - group) / loss(A) - 1 over its evaluators
    evaluators: int
    left_out: bool  # its absence lowered the loss: not averaged


@dataclass
class RoundRecord:
    """One round: its outcome, the global model's evaluations and every sampled client."""

    round: int
    status: str = "ok"  # ok, failed (too few updates) or rolled-back
    accepted: int = 0
    aggregated: int = 0  # of the accepted updates, those averaged (aggregate-share)
    global_val_loss: float | None = None
    accuracy: float | None = None
    loss: float | None = None
    federated_loss: float | None = None
    federated_accuracy: float | None = None
    federated_clients: int = 0
    # Partition id (as a string, JSON's key type) -> why its evaluation was not used.
    evaluation_refused: dict[str, str] = field(default_factory=dict)
    # Evaluate requests sent this round and the models they carried (the client's
    # forward passes over its examples), for the cost tables.
    evaluation_requests: int = 0
    models_sent: int = 0
    groups: list[GroupRecord] = field(default_factory=list)
    seconds: float = 0.0
    clients: list[ClientRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
