"""The genetic step's rules for a few :class:`Member` objects: for reading and testing.

gcfl runs the array versions (:mod:`gcfl.strategy.genetic`); these call them
on a handful of members, so a test can state a rule with three clients
instead of arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gcfl.strategy.features import SearchSpace
from gcfl.strategy.genetic import (
    Cohort,
    Hyperparameters,
    Mutation,
    _take,
    breed,
    evolve,
    explore_pairs,
    fitness_order,
    migration,
    mutate_lrs,
    random_pairs,
)


@dataclass(frozen=True)
class Member:
    """One client as the genetic step sees it; ``score``: lower is better (see fitness.py)."""

    client_id: int
    lr: float
    batch_size: int
    score: float | None
    healthy: bool = True


def cohort_of(members: Sequence[Member]) -> Cohort:
    """The members as a :class:`Cohort`."""
    return Cohort(
        client_id=np.array([m.client_id for m in members], dtype=np.int64),
        lr=np.array([m.lr for m in members], dtype=np.float64),
        batch_size=np.array([m.batch_size for m in members], dtype=np.int64),
        score=np.array(
            [math.nan if m.score is None else m.score for m in members], dtype=np.float64
        ),
        healthy=np.array([m.healthy for m in members], dtype=bool),
    )


def pairs_of(cohort: Cohort) -> dict[int, Hyperparameters]:
    """Every row's pair, keyed by client id."""
    return dict(
        zip(
            cohort.client_id.tolist(),
            map(Hyperparameters, cohort.lr.tolist(), cohort.batch_size.tolist()),
            strict=True,
        )
    )


def random_hyperparameters(space: SearchSpace, rng: np.random.Generator) -> Hyperparameters:
    """One pair of :func:`random_pairs`."""
    lr, batch = random_pairs(space, 1, rng)
    return Hyperparameters(float(lr[0]), int(batch[0]))


def rank_by_fitness(members: Sequence[Member]) -> list[Member]:
    """:func:`fitness_order` for members: a diverged, failed or unscored member ranks last."""
    return [members[row] for row in fitness_order(cohort_of(members))]


def mutate_lr(lr: float, factor: float, rng: np.random.Generator) -> float:
    """:func:`mutate_lrs` for one lr."""
    return float(mutate_lrs(np.array([lr]), factor, rng)[0])


def explore(pair: Hyperparameters, mutation: Mutation, rng: np.random.Generator) -> Hyperparameters:
    """:func:`explore_pairs` for one pair."""
    lr, batch = explore_pairs(np.array([pair.lr]), np.array([pair.batch_size]), mutation, rng)
    return Hyperparameters(float(lr[0]), int(batch[0]))


def offspring(
    parents: Sequence[Member], mutation: Mutation, rng: np.random.Generator
) -> Hyperparameters:
    """One child of ``parents`` (see :func:`breed`)."""
    lr, batch = breed(cohort_of(parents), np.array([0]), np.array([len(parents)]), mutation, rng)
    return Hyperparameters(float(lr[0]), int(batch[0]))


def evolve_group(
    members: Sequence[Member],
    elite: int,
    mutation: Mutation,
    rng: np.random.Generator,
    fallback_parents: Sequence[Member] = (),
) -> dict[int, Hyperparameters]:
    """:func:`evolve` for one group, keyed by client id.

    ``fallback_parents`` (all of them, fit or not) stand in for a group
    without a fit member; without any, such a group breeds from itself.
    """
    cohort = cohort_of(members)
    fallback = cohort_of(fallback_parents) if fallback_parents else _take(cohort, np.arange(0))
    lr, batch = evolve(
        cohort, np.zeros(len(cohort), dtype=np.int64), elite, mutation, rng, fallback
    )
    return pairs_of(Cohort(cohort.client_id, lr, batch, cohort.score, cohort.healthy))


def migrate(
    members: Sequence[Member], fraction: float, mutation: Mutation, rng: np.random.Generator
) -> dict[int, Hyperparameters]:
    """:func:`migration` for a list of members: the migrants' new pairs, keyed by client id."""
    cohort = cohort_of(members)
    rows, lr, batch = migration(cohort, fraction, mutation, rng)
    moved = Cohort(cohort.client_id[rows], lr, batch, cohort.score[rows], cohort.healthy[rows])
    return pairs_of(moved)
