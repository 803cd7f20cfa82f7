"""The genetic step: rank, keep the elite, breed the rest, and migrate between groups.

Small pure functions in the manner of Ray Tune's PBT exploit/explore: every
random draw comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gcfl.strategy.features import SearchSpace, from_unit, to_unit

MUTATION_RULES = ("log", "linear")


@dataclass(frozen=True)
class Member:
    """One client as the genetic step sees it; ``score``: lower is better (see fitness.py)."""

    client_id: int
    lr: float
    batch_size: int
    score: float | None
    healthy: bool = True


@dataclass(frozen=True)
class Hyperparameters:
    """What a client trains with."""

    lr: float
    batch_size: int


@dataclass(frozen=True)
class Mutation:
    """How an offspring's pair moves away from its parents'.

    ``"log"``: each of lr and batch size takes a Gaussian step of standard
    deviation ``scale`` in the scaled feature space (log10 lr and log2 batch,
    each mapped to [0, 1] over the search space), reflected at its edges; and
    with probability ``resample`` the offspring is instead a fresh random pair.
    ``scale`` 0.1 on lr 1e-5..1e-1 is 0.4 decades, so a lineage crosses the
    space in a handful of rounds; the notebook's step needs about a hundred.

    ``"linear"``: the notebook's rule, lr times a factor drawn from
    {1 - scale, 1, 1 + scale}; the batch size only crosses over; no resampling.
    With a ``space`` and ``bounded``, the lr stays inside the search space; the
    notebook let it drift out (``bounded=False``).
    """

    rule: str = "log"
    scale: float = 0.1
    resample: float = 0.0
    space: SearchSpace | None = None
    bounded: bool = True

    def __post_init__(self) -> None:
        if self.rule not in MUTATION_RULES:
            raise ValueError(f"mutation rule must be one of {', '.join(MUTATION_RULES)}")
        if self.rule == "log" and self.space is None:
            raise ValueError("log-space mutation needs the search space")


def random_hyperparameters(space: SearchSpace, rng: np.random.Generator) -> Hyperparameters:
    """The seed's random init: lr log-uniform, batch size 2^uniform in log2 space, rounded."""
    lr = 10.0 ** rng.uniform(np.log10(space.lr_min), np.log10(space.lr_max))
    batch = round(2.0 ** rng.uniform(np.log2(space.batch_min), np.log2(space.batch_max)))
    return Hyperparameters(float(lr), batch)


def fitness_key(member: Member) -> tuple[int, float, int]:
    """Sort key: healthy finite scores first (ascending), then the rest; ties by id."""
    finite = member.healthy and member.score is not None and math.isfinite(member.score)
    return (0, float(member.score), member.client_id) if finite else (1, 0.0, member.client_id)


def rank_by_fitness(members: Sequence[Member]) -> list[Member]:
    """Members from best to worst; a diverged, failed or unscored member ranks last."""
    return sorted(members, key=fitness_key)


def is_healthy(member: Member) -> bool:
    return fitness_key(member)[0] == 0


def mutate_lr(lr: float, factor: float, rng: np.random.Generator) -> float:
    """The notebook's mutation: ``lr`` times a factor drawn from {1 - f, 1, 1 + f}."""
    return lr * (1.0 - factor, 1.0, 1.0 + factor)[int(rng.integers(3))]


def _reflect(value: float) -> float:
    """Fold a step that left [0, 1] back inside, so edges are not sticky."""
    value = abs(value) % 2.0
    return 2.0 - value if value > 1.0 else value


def explore(pair: Hyperparameters, mutation: Mutation, rng: np.random.Generator) -> Hyperparameters:
    """PBT's explore: perturb an inherited pair (or, sometimes, draw a fresh one)."""
    if mutation.rule == "linear":
        lr = mutate_lr(pair.lr, mutation.scale, rng)
        if mutation.bounded and mutation.space is not None:
            lr = min(max(lr, mutation.space.lr_min), mutation.space.lr_max)
        return Hyperparameters(lr, pair.batch_size)
    space = mutation.space
    assert space is not None
    if mutation.resample > 0 and rng.random() < mutation.resample:
        return random_hyperparameters(space, rng)
    if mutation.scale == 0:
        return pair
    lr_unit, batch_unit = to_unit(pair.lr, pair.batch_size, space)
    step = rng.normal(0.0, mutation.scale, size=2)
    lr, batch = from_unit(_reflect(lr_unit + step[0]), _reflect(batch_unit + step[1]), space)
    return Hyperparameters(lr, batch)


def offspring(
    parents: Sequence[Member], mutation: Mutation, rng: np.random.Generator
) -> Hyperparameters:
    """Crossover, then explore: the lr of one uniformly drawn parent, the batch size of another.

    The two parents are drawn independently, so they may be the same member.
    """
    lr_parent = parents[int(rng.integers(len(parents)))]
    batch_parent = parents[int(rng.integers(len(parents)))]
    return explore(Hyperparameters(lr_parent.lr, batch_parent.batch_size), mutation, rng)


def evolve_group(
    members: Sequence[Member],
    elite: int,
    mutation: Mutation,
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


def migration_count(population: int, fraction: float) -> int:
    """How many of a round's ``population`` clients migrate: ``fraction`` of it, at least one.

    Never more than half, so migrants and donors stay disjoint; 0 when off.
    """
    if fraction <= 0 or population < 2:
        return 0
    return min(max(1, round(fraction * population)), population // 2)


def migrate(
    members: Sequence[Member], fraction: float, mutation: Mutation, rng: np.random.Generator
) -> dict[int, Hyperparameters]:
    """Island-model migration, as PBT's exploit: the worst ``fraction`` breed from the best.

    ``members`` are the whole round's clients, across every group. The
    bottom ``fraction`` (diverged and unscored clients first) each get an
    offspring of the top ``fraction``'s healthy members, whatever group either
    belongs to, so a good pair found in one group reaches every other group in
    the next round. Returns the new pairs of the migrants only; empty when
    there is no healthy donor.
    """
    count = migration_count(len(members), fraction)
    ranked = rank_by_fitness(members)
    donors = sorted((m for m in ranked[:count] if is_healthy(m)), key=lambda m: m.client_id)
    if not donors:
        return {}
    migrants = sorted(ranked[len(ranked) - count :], key=lambda m: m.client_id)
    return {m.client_id: offspring(donors, mutation, rng) for m in migrants}
