"""The federated fitness: judge each group of clients by what its updates do to the others' loss.

A client's own loss rewards whatever fits its own labels fastest; under label
skew that is an lr that hurts the global model. Here the round's accepted
updates are grouped (the clusters of the genetic step), and the server forms
the aggregate of every group (``A``) and, for each group ``g``, the aggregate
without it (``A - g``). A sample of clients evaluates those models on their
own examples and returns one loss per model; a group's contribution is the
trimmed mean over its evaluators of ``loss(A - g) / loss(A) - 1``: positive when
leaving the group out would have made the federation's loss worse.

Privacy: a client never receives a candidate that leaves out its own group,
so the difference of two models it holds is always the sum of at least two
other clients' updates; a group of one is merged into the nearest group
first. Robustness: the trimmed mean drops the extreme values at each end, so
one evaluator that lies moves it by at most its share of the honest range.
Pure: numpy only, no Flower, no TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from gcfl.names import CANDIDATE_KINDS

Weights = list[np.ndarray]
Update = tuple[Sequence[np.ndarray], int]  # trained weights and their number of examples

# Cross-entropy under Keras' probability clipping (1e-7) is at most about 16.1; a
# reported loss far beyond that, or below 0, was not measured by an honest client.
MAX_PLAUSIBLE_LOSS = 50.0
# Within one group every member shares the group's contribution; the member's own
# relative improvement breaks the tie, scaled so that it never reorders groups.
TIE_BREAK = 1e-6
# The share of evaluators' values dropped at each end before averaging.
TRIM = 0.1


def fitness_groups(
    labels: Mapping[int, int],
    features: Mapping[int, Sequence[float]],
) -> dict[int, tuple[int, ...]]:
    """The clients of ``labels`` (client -> cluster) as groups of at least two members.

    A cluster of one joins the group whose mean feature vector is nearest to
    its member's (ties: the lower label), so that no candidate is built from
    one client's update. Returns label -> sorted member ids; empty when fewer
    than two clients are given.
    """
    if len(labels) < 2:
        return {}
    groups: dict[int, list[int]] = {}
    for client, label in sorted(labels.items()):
        groups.setdefault(label, []).append(client)
    while True:
        singles = [label for label, members in groups.items() if len(members) == 1]
        if not singles or len(groups) == 1:
            break
        label = min(singles)
        (client,) = groups.pop(label)
        point = np.asarray(features[client], dtype=np.float64)
        nearest = min(
            groups,
            key=lambda other: (
                float(
                    np.linalg.norm(np.mean([features[c] for c in groups[other]], axis=0) - point)
                ),
                other,
            ),
        )
        groups[nearest].append(client)
    return {label: tuple(sorted(members)) for label, members in sorted(groups.items())}


@dataclass(frozen=True)
class Candidates:
    """The models a round's evaluators compare.

    ``kind`` "leave-out": ``per_group[g]`` is the aggregate without group g,
    compared with the aggregate. "group": ``per_group[g]`` is the round's
    starting model plus group g's mean update (its step alone), compared with
    the starting model (``start``).
    """

    kind: str
    aggregate: Weights
    per_group: dict[int, Weights]
    shares: dict[int, float]  # group label -> its share of the aggregate's examples
    start: Weights | None = None

    def models(self, labels: Sequence[int]) -> list[Weights]:
        """What an evaluator receives: the aggregate, the start (group kind), each group's."""
        reference = [] if self.start is None else [self.start]
        return [self.aggregate, *reference, *(self.per_group[g] for g in labels)]

    def with_and_without(
        self, losses: Sequence[float], labels: Sequence[int]
    ) -> dict[int, tuple[float, float]]:
        """Per group, the evaluator's loss of the model with the group and without it."""
        if self.kind == "leave-out":
            return {g: (losses[0], losses[1 + i]) for i, g in enumerate(labels)}
        return {g: (losses[2 + i], losses[1]) for i, g in enumerate(labels)}


def _group_sums(
    updates: Mapping[int, Update], groups: Mapping[int, Sequence[int]]
) -> tuple[dict[int, list[np.ndarray]], dict[int, int]]:
    first = next(iter(updates.values()))[0]
    sums: dict[int, list[np.ndarray]] = {}
    counts: dict[int, int] = {}
    for label, members in groups.items():
        acc = [np.zeros(np.shape(a), dtype=np.float64) for a in first]
        for client in members:
            weights, count = updates[client]
            for total, array in zip(acc, weights, strict=True):
                total += np.asarray(array, dtype=np.float64) * count
        sums[label], counts[label] = acc, sum(updates[c][1] for c in members)
    return sums, counts


def _cast(sums: Sequence[np.ndarray], count: int, like: Sequence[np.ndarray]) -> Weights:
    return [(s / count).astype(np.asarray(ref).dtype) for s, ref in zip(sums, like, strict=True)]


def candidates_for(
    kind: str,
    updates: Mapping[int, Update],
    groups: Mapping[int, Sequence[int]],
    start: Sequence[np.ndarray],
) -> Candidates:
    """The example-weighted aggregate of ``updates`` and one candidate per group (``kind``).

    Sums are in float64, as :func:`~gcfl.strategy.aggregation.weighted_average`
    computes the aggregate; a leave-out is the total minus the group's sum, a
    group's model is its own mean (the start plus its mean update).
    """
    if kind not in CANDIDATE_KINDS:
        raise ValueError(f"candidate kind must be one of {', '.join(CANDIDATE_KINDS)}")
    if len(groups) < 2:
        raise ValueError("candidates need at least two groups")
    like = next(iter(updates.values()))[0]
    sums, counts = _group_sums(updates, groups)
    total_count = sum(counts.values())
    totals = [np.sum(np.stack(parts), axis=0) for parts in zip(*sums.values(), strict=True)]
    shares = {label: count / total_count for label, count in counts.items()}
    if kind == "leave-out":
        per_group = {
            label: _cast(
                [t - s for t, s in zip(totals, group, strict=True)],
                total_count - counts[label],
                like,
            )
            for label, group in sums.items()
        }
        return Candidates(kind, _cast(totals, total_count, like), per_group, shares)
    per_group = {label: _cast(group, counts[label], like) for label, group in sums.items()}
    return Candidates(kind, _cast(totals, total_count, like), per_group, shares, list(start))


def judgeable_groups(evaluator: int, groups: Mapping[int, Sequence[int]]) -> list[int]:
    """The groups whose leave-out ``evaluator`` may receive: all but its own."""
    return [label for label, members in groups.items() if evaluator not in members]


def loss_problem(losses: Sequence[float], expected: int) -> str | None:
    """Why a candidate report cannot be believed, or None."""
    if len(losses) != expected:
        return f"reported {len(losses)} candidate losses, {expected} models were sent"
    for index, loss in enumerate(losses):
        if not (math.isfinite(loss) and 0.0 <= loss <= MAX_PLAUSIBLE_LOSS):
            return f"candidate-loss-{index} {loss!r} is not in [0, {MAX_PLAUSIBLE_LOSS:g}]"
    return None


@dataclass(frozen=True)
class GroupJudgement:
    """What the evaluators said of one group: the median contribution and how many spoke."""

    contribution: float | None  # trimmed mean of loss(A - g) / loss(A) - 1; None if unjudged
    evaluators: int


def trimmed_mean(values: Sequence[float], trim: float = TRIM) -> float:
    """The mean of ``values`` without the ``trim`` share of them at each end (at least one
    each when there are three or more): one evaluator's lie moves it by at most its share
    of the honest values' range."""
    ordered = sorted(values)
    cut = max(1, int(trim * len(ordered))) if len(ordered) >= 3 else 0
    kept = ordered[cut : len(ordered) - cut]
    return float(np.mean(kept))


def group_contributions(
    reports: Mapping[int, Mapping[int, tuple[float, float]]],
    groups: Mapping[int, Sequence[int]],
) -> dict[int, GroupJudgement]:
    """Each group's trimmed-mean contribution over the evaluators that judged it.

    ``reports``: evaluator -> group -> (its loss of A, its loss of A - group),
    from believed reports only. A pair with a zero loss of A says nothing and
    is skipped. The mean, not the median: under label skew most evaluators
    lack a given group's labels, and the median would judge every group by
    them alone, where the federation's loss is the mean over clients.
    """
    changes: dict[int, list[float]] = {label: [] for label in groups}
    for judged in reports.values():
        for label, (loss_all, loss_without) in judged.items():
            if loss_all > 0:
                changes[label].append(loss_without / loss_all - 1.0)
    return {
        label: GroupJudgement(trimmed_mean(values) if values else None, len(values))
        for label, values in changes.items()
    }


def harmful_groups(judgements: Mapping[int, GroupJudgement]) -> set[int]:
    """The groups to leave out of the aggregate: those whose absence lowered the loss.

    Never every judged group: when all look harmful, the one that hurt least
    stays, so a round always moves the model with the evaluators' best guess.
    """
    judged = {
        label: j.contribution for label, j in judgements.items() if j.contribution is not None
    }
    harmful = {label for label, value in judged.items() if value < 0}
    if judged and harmful == set(judged):
        harmful.discard(max(judged, key=lambda label: (judged[label], -label)))
    return harmful


def client_scores(
    groups: Mapping[int, Sequence[int]],
    judgements: Mapping[int, GroupJudgement],
    shares: Mapping[int, float],
    local: Mapping[int, float | None],
) -> dict[int, float | None]:
    """Every grouped client's score (lower is better) from its group's contribution.

    A leave-out contribution is divided by the group's share of the aggregate's
    examples (a large group moves the aggregate more whatever its lr); pass
    shares of 1 for a group's own step. The contribution is
    negated so that the most useful group scores lowest. Members of a group
    no evaluator judged score after every judged group; the member's own
    relative improvement (``local``, clipped to [-1, 1]) breaks ties.
    """
    per_example: dict[int, float] = {}
    for label in groups:
        judgement = judgements.get(label)
        if judgement is not None and judgement.contribution is not None:
            per_example[label] = -judgement.contribution / shares[label]
    unjudged = max(per_example.values(), default=0.0) + 1.0
    scores: dict[int, float | None] = {}
    for label, members in groups.items():
        base = per_example.get(label, unjudged)
        for client in members:
            own = local.get(client)
            tie = 0.0 if own is None or not math.isfinite(own) else min(1.0, max(-1.0, own))
            scores[client] = base + TIE_BREAK * tie
    return scores
