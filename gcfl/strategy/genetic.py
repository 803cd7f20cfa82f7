"""The genetic step inside one group: rank, keep the elite, breed the rest.

Small pure functions in the manner of Ray Tune's PBT exploit/explore: every
random draw comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Member:
    """One client of a group as the genetic step sees it."""

    client_id: int
    lr: float
    batch_size: int
    loss: float | None
    healthy: bool = True


@dataclass(frozen=True)
class Hyperparameters:
    """What a client trains with."""

    lr: float
    batch_size: int


def fitness_key(member: Member) -> tuple[int, float, int]:
    """Sort key: healthy finite losses first (ascending), then the rest; ties by id."""
    finite = member.healthy and member.loss is not None and math.isfinite(member.loss)
    return (0, float(member.loss), member.client_id) if finite else (1, 0.0, member.client_id)


def rank_by_fitness(members: Sequence[Member]) -> list[Member]:
    """Members from best to worst; a diverged, failed or non-finite loss ranks last."""
    return sorted(members, key=fitness_key)


def mutate_lr(lr: float, mutation: float, rng: np.random.Generator) -> float:
    """Multiply ``lr`` by a factor drawn uniformly from {1 - m, 1, 1 + m}."""
    factor = (1.0 - mutation, 1.0, 1.0 + mutation)[int(rng.integers(3))]
    return lr * factor


def offspring(
    parents: Sequence[Member], mutation: float, rng: np.random.Generator
) -> Hyperparameters:
    """Crossover: the lr of one uniformly drawn member (mutated), the batch size of another.

    The two parents are drawn independently, so they may be the same member.
    """
    lr_parent = parents[int(rng.integers(len(parents)))]
    batch_parent = parents[int(rng.integers(len(parents)))]
    return Hyperparameters(mutate_lr(lr_parent.lr, mutation, rng), batch_parent.batch_size)


def is_healthy(member: Member) -> bool:
    return fitness_key(member)[0] == 0


def evolve_group(
    members: Sequence[Member],
    elite: int,
    mutation: float,
    rng: np.random.Generator,
    fallback_parents: Sequence[Member] = (),
) -> dict[int, Hyperparameters]:
    """Next hyperparameters of every member of one group, keyed by client id.

    The ``elite`` best keep their own pair; every other member gets an
    offspring. Offspring go to the members that did not make the elite, each to
    its own id (never by position in the group).

    A member whose last fit diverged or was refused never keeps its pair, even
    in a group no larger than the elite, and never breeds while a healthy
    member exists: otherwise a diverging client would keep or spread its
    exploding lr. A group without a healthy member breeds from
    ``fallback_parents`` (the round's healthy clients), or from itself when
    there are none.
    """
    ranked = rank_by_fitness(members)
    healthy = [m for m in members if is_healthy(m)]
    parents = sorted(healthy or fallback_parents or members, key=lambda m: m.client_id)
    result: dict[int, Hyperparameters] = {}
    for rank, member in enumerate(ranked):
        if rank < elite and is_healthy(member):
            result[member.client_id] = Hyperparameters(member.lr, member.batch_size)
        else:
            result[member.client_id] = offspring(parents, mutation, rng)
    return result
