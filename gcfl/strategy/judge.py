"""The edge rules: what the server believes of a client's reply, and why it refuses the rest.

The server believes only what it assigned. A fit reply is accepted when it is
a well-formed report (:mod:`gcfl.protocol`) of the client it was sent to, of
the very pair the server assigned (up to float32 rounding; for a search
request, one of the grid points sent), with finite losses, and, when it
carries an update, finite weights of the global model's shapes, within
``max-update-norm``, trained on at least one and at most as many examples as
the node said it holds. Anything else is a refusal with its reason. Pure:
numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gcfl.names import Outcome
from gcfl.protocol import (
    EvaluateReport,
    FitInstruction,
    FitReport,
    ProtocolError,
    SearchInstruction,
)
from gcfl.strategy.aggregation import check_update
from gcfl.strategy.candidates import loss_problem
from gcfl.strategy.genetic import Hyperparameters

# float32 rounding of an lr on the client's side (2^-24 relative), with room to spare.
LR_TOLERANCE = 1e-6


@dataclass(frozen=True)
class FitVerdict:
    """The server's reading of one client's fit reply.

    ``pair`` is what the server believes the client trained with: the assigned
    pair, the grid point the client chose in a search, or None when nothing is
    known (a refused or silent search). ``report`` is the client's report when
    it was well formed, for the record; only accepted values reach the algorithm.
    """

    outcome: Outcome
    pair: Hyperparameters | None
    reason: str | None = None
    report: FitReport | None = None
    update: tuple[list[np.ndarray], int] | None = None
    update_ratio: float | None = None
    # The report passed every check of its own (form, id, pair, losses): its
    # losses count even when the update it came with was refused.
    report_believed: bool = False


def no_reply(instruction: FitInstruction, outcome: Outcome, reason: str) -> FitVerdict:
    """The verdict on a client that failed or missed the deadline: it keeps its assigned pair."""
    return FitVerdict(outcome, _assigned(instruction), reason)


def _assigned(instruction: FitInstruction) -> Hyperparameters | None:
    if isinstance(instruction, SearchInstruction):
        return None
    return Hyperparameters(instruction.lr, instruction.batch_size)


def _grid_point(value: float, grid: Sequence[float]) -> float | None:
    return next((g for g in grid if math.isclose(value, g, rel_tol=LR_TOLERANCE)), None)


def _pair_problem(
    report: FitReport, instruction: FitInstruction
) -> tuple[Hyperparameters | None, str | None]:
    """The pair the client trained with, if it is one the server allowed; else the problem."""
    if isinstance(instruction, SearchInstruction):
        lr = _grid_point(report.lr, instruction.lr_grid)
        if lr is None or report.batch_size not in instruction.batch_grid:
            return None, (
                f"reported pair (lr {report.lr!r}, batch-size {report.batch_size}) "
                "is not in the search grid sent"
            )
        return Hyperparameters(lr, report.batch_size), None
    if not math.isclose(report.lr, instruction.lr, rel_tol=LR_TOLERANCE):
        return None, f"reported lr {report.lr!r}, but was assigned {instruction.lr!r}"
    if report.batch_size != instruction.batch_size:
        return None, (
            f"reported batch-size {report.batch_size}, but was assigned {instruction.batch_size}"
        )
    return _assigned(instruction), None


def _loss_problem(report: FitReport) -> str | None:
    # A diverged fit has no usable loss after training; the losses of the
    # received model were measured before training and must be finite.
    names = ["val_loss_before", "local_loss_before"]
    if report.status == "ok":
        names += ["val_loss", "local_loss_after", "train_loss"]
    for name in names:
        if not math.isfinite(getattr(report, name)):
            return f"{name.replace('_', '-')} is not a finite number"
    if report.status == "ok" and not 0.0 <= report.val_accuracy <= 1.0:
        return f"val-accuracy {report.val_accuracy!r} is not in [0, 1]"
    return None


def judge_fit(
    client_id: int,
    instruction: FitInstruction,
    metrics: Mapping[str, Any],
    num_examples: int,
    weights: list[np.ndarray],
    global_weights: Sequence[np.ndarray],
    capacity: int,
    max_update_norm: float,
) -> FitVerdict:
    """Judge one fit reply of ``client_id`` to ``instruction``.

    ``capacity`` is the number of training examples the node said it holds
    before round 1.
    """
    assigned = _assigned(instruction)
    try:
        report = FitReport.from_metrics(metrics)
    except ProtocolError as error:
        return FitVerdict("refused", assigned, f"malformed fit metrics: {error}")
    if report.client_id != client_id:
        return FitVerdict(
            "refused",
            assigned,
            f"client-id {report.client_id} does not match partition id {client_id}",
            report,
        )
    pair, problem = _pair_problem(report, instruction)
    if problem is None:
        problem = _loss_problem(report)
    if problem is not None:
        return FitVerdict("refused", assigned, problem, report)
    if report.status == "diverged":
        return FitVerdict("diverged", pair, None, report, report_believed=True)
    ratio = None
    if not 1 <= num_examples <= capacity:
        problem = f"num_examples {num_examples} is outside 1..{capacity} (what the node holds)"
    else:
        problem, ratio = check_update(weights, global_weights, max_update_norm)
    if problem is not None:
        return FitVerdict("refused", pair, problem, report, report_believed=True)
    return FitVerdict("ok", pair, None, report, (weights, num_examples), ratio, True)


@dataclass(frozen=True)
class EvaluateVerdict:
    """One client's federated evaluation, accepted (``report`` set) or refused (``reason``)."""

    report: EvaluateReport | None
    num_examples: int
    reason: str | None = None


def judge_evaluate(
    client_id: int, loss: Any, metrics: Mapping[str, Any], num_examples: int, capacity: int
) -> EvaluateVerdict:
    """Accept an evaluation with a finite loss, an accuracy in [0, 1] and a plausible size.

    ``capacity`` bounds the validation examples as it bounds the training ones:
    a node holds fewer validation than training examples.
    """
    try:
        report = EvaluateReport.from_reply(loss, metrics)
    except ProtocolError as error:
        return EvaluateVerdict(None, 0, f"malformed evaluate reply: {error}")
    if report.client_id != client_id:
        return EvaluateVerdict(None, 0, f"client-id {report.client_id} is not {client_id}")
    if not math.isfinite(report.loss) or not 0.0 <= report.accuracy <= 1.0:
        return EvaluateVerdict(
            None, 0, f"loss {report.loss!r} or accuracy {report.accuracy!r} out of range"
        )
    if not 1 <= num_examples <= capacity:
        return EvaluateVerdict(None, 0, f"num_examples {num_examples} is outside 1..{capacity}")
    return EvaluateVerdict(report, num_examples)


def judge_candidates(
    client_id: int,
    loss: Any,
    metrics: Mapping[str, Any],
    num_examples: int,
    expected: int,
    capacity: int,
) -> EvaluateVerdict:
    """Accept a candidate evaluation: one plausible loss per model sent, on the client's examples.

    ``capacity``: the most examples the client holds in all. Flower's ``loss``
    must be the first candidate's, as the client computes it.
    """
    verdict = judge_evaluate(client_id, loss, metrics, num_examples, capacity)
    if verdict.report is None:
        return verdict
    problem = loss_problem(verdict.report.losses, expected)
    if problem is None and verdict.report.losses[0] != verdict.report.loss:
        problem = f"loss {verdict.report.loss!r} is not candidate-loss-0"
    if problem is not None:
        return EvaluateVerdict(None, 0, problem)
    return verdict


def weighted_evaluation(verdicts: Sequence[EvaluateVerdict]) -> tuple[float, float] | None:
    """The example-weighted mean loss and accuracy of the accepted evaluations."""
    accepted = [(v.report, v.num_examples) for v in verdicts if v.report is not None]
    total = sum(count for _, count in accepted)
    if not total:
        return None
    loss = sum(report.loss * count for report, count in accepted) / total
    accuracy = sum(report.accuracy * count for report, count in accepted) / total
    return loss, accuracy
