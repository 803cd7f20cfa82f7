"""The genetic step: rank, keep the elite, breed the rest, and migrate between groups.

Small pure functions in the manner of Ray Tune's PBT exploit/explore: every
random draw comes from the ``numpy.random.Generator`` passed in. The step
works on a round's clients as arrays (:class:`Cohort`), every group at once,
so that a round of 100,000 clients costs a few array operations rather than
a Python call per client (``tests/scalar_genetic.py`` states the same rules
for a few members, for reading and testing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gcfl.names import CROSSOVER_RULES, MUTATION_RULES
from gcfl.strategy.features import SearchSpace, from_units, hyperparameter_features


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

    ``batch_step``, under either rule: the chance that an offspring's batch
    size then halves or doubles (FedPop's explore for a discrete dimension).
    Crossover alone only reshuffles the batch sizes a population started
    with, and selection soon leaves one of them.

    ``crossover``, before the move: how a child takes its two parents' values.
    ``"pick"`` (the notebook's): the lr of one parent, the batch size of the
    other. ``"blend"``: each at a uniform random point between the two
    parents' values, on log scales (intermediate recombination, as evolution
    strategies do), so two parents a decade apart can have a child between
    them. Picking can only copy the lrs the population already holds; on
    skewed data the best lr lies between the ones that fit the local labels
    fastest and the ones that barely move (BENCHMARKS.md section 0).
    """

    # No defaults: the run config (gcfl.config.GcflConfig) is their one source;
    # ``GeneticSettings.from_config(GcflConfig()).mutation`` gives them.
    rule: str
    scale: float
    resample: float
    space: SearchSpace | None
    bounded: bool
    batch_step: float
    crossover: str

    def __post_init__(self) -> None:
        if not 0.0 <= self.batch_step < 1.0:
            raise ValueError(f"batch_step must be in [0, 1), got {self.batch_step}")
        if self.rule not in MUTATION_RULES:
            raise ValueError(f"mutation rule must be one of {', '.join(MUTATION_RULES)}")
        if self.crossover not in CROSSOVER_RULES:
            raise ValueError(f"crossover must be one of {', '.join(CROSSOVER_RULES)}")
        if self.rule == "log" and self.space is None:
            raise ValueError("log-space mutation needs the search space")


@dataclass(frozen=True)
class Cohort:
    """A round's clients as parallel arrays, one row per client.

    ``score`` is NaN for a client without one. A row is *fit* (may keep its
    pair and breed) when it is healthy and its score finite.
    """

    client_id: np.ndarray
    lr: np.ndarray
    batch_size: np.ndarray
    score: np.ndarray
    healthy: np.ndarray

    def __len__(self) -> int:
        return len(self.client_id)

    @property
    def fit(self) -> np.ndarray:
        return self.healthy & np.isfinite(self.score)


def random_pairs(
    space: SearchSpace, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The seed's random init for ``count`` clients.

    lr log-uniform; batch size 2^uniform in log2 space, rounded half to even:
    uniform points of the unit square mapped by :func:`from_units` (every lr
    draw first, then every batch draw).
    """
    lr_units = rng.random(count)
    return from_units(lr_units, rng.random(count), space)


def fitness_order(cohort: Cohort) -> np.ndarray:
    """Rows from best to worst: fit rows by ascending score, then the rest; ties by id."""
    fit = cohort.fit
    return np.lexsort((cohort.client_id, np.where(fit, cohort.score, 0.0), ~fit))


def mutate_lrs(lrs: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """The notebook's mutation: each lr times a factor drawn from {1 - f, 1, 1 + f}."""
    factors = np.array([1.0 - factor, 1.0, 1.0 + factor])
    return lrs * factors[rng.integers(3, size=len(lrs))]


def _reflect(values: np.ndarray) -> np.ndarray:
    """Fold steps that left [0, 1] back inside, so edges are not sticky."""
    values = np.abs(values) % 2.0
    return np.where(values > 1.0, 2.0 - values, values)


def step_batch_sizes(
    batch_size: np.ndarray,
    probability: float,
    rng: np.random.Generator,
    space: SearchSpace | None = None,
) -> np.ndarray:
    """Each batch size halves or doubles with ``probability`` (either way equally likely).

    A step that would leave ``space``'s [batch_min, batch_max] goes the other
    way, so the edges are not sticky. One uniform draw per batch size.
    """
    draws = rng.random(len(batch_size))
    factor = np.where(draws < probability / 2, 0.5, np.where(draws < probability, 2.0, 1.0))
    stepped = np.rint(batch_size * factor).astype(np.int64)
    if space is None:
        return np.maximum(stepped, 1)
    reflected = np.where(
        stepped > space.batch_max,
        np.rint(batch_size * 0.5),
        np.where(stepped < space.batch_min, batch_size * 2, stepped),
    ).astype(np.int64)
    return np.clip(reflected, space.batch_min, space.batch_max)


def explore_pairs(
    lr: np.ndarray, batch_size: np.ndarray, mutation: Mutation, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """PBT's explore for arrays of inherited pairs: perturb each, or sometimes draw a fresh one.

    Draws, in this order: the resample coin of every pair, every step, the
    fresh pairs, then (``batch_step`` > 0 only) the batch steps.
    """
    lr, batch_size = _explore_by_rule(lr, batch_size, mutation, rng)
    if mutation.batch_step > 0 and len(batch_size):
        batch_size = step_batch_sizes(batch_size, mutation.batch_step, rng, mutation.space)
    return lr, batch_size


def _explore_by_rule(
    lr: np.ndarray, batch_size: np.ndarray, mutation: Mutation, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    if mutation.rule == "linear":
        lr = mutate_lrs(lr, mutation.scale, rng)
        if mutation.bounded and mutation.space is not None:
            lr = np.clip(lr, mutation.space.lr_min, mutation.space.lr_max)
        return lr, batch_size
    space = mutation.space
    assert space is not None
    fresh = (
        rng.random(len(lr)) < mutation.resample
        if mutation.resample > 0
        else np.zeros(len(lr), dtype=bool)
    )
    if mutation.scale != 0:
        units = hyperparameter_features(lr, batch_size, space)
        steps = rng.normal(0.0, mutation.scale, size=units.shape)
        moved = _reflect(units + steps)
        lr, batch_size = from_units(moved[:, 0], moved[:, 1], space)
    if fresh.any():
        lr, batch_size = lr.copy(), batch_size.copy()
        lr[fresh], batch_size[fresh] = random_pairs(space, int(fresh.sum()), rng)
    return lr, batch_size


def breed(
    pool: Cohort,
    starts: np.ndarray,
    counts: np.ndarray,
    mutation: Mutation,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Crossover, then explore: one child per entry of ``starts``/``counts``.

    Child i has two parents, uniformly drawn rows of ``pool[starts[i] :
    starts[i] + counts[i]]``, drawn independently (so they may be the same
    row). With ``crossover`` "pick" it takes the first's lr and the second's
    batch size; with "blend", both values between the two parents' (see
    :func:`blend`).
    """
    if len(starts) == 0:
        return np.empty(0, dtype=np.float64), np.empty(0, dtype=np.int64)
    first = starts + rng.integers(0, counts)
    second = starts + rng.integers(0, counts)
    if mutation.crossover == "blend":
        lr, batch_size = blend(
            (pool.lr[first], pool.batch_size[first]),
            (pool.lr[second], pool.batch_size[second]),
            rng,
        )
        return explore_pairs(lr, batch_size, mutation, rng)
    return explore_pairs(pool.lr[first], pool.batch_size[second], mutation, rng)


def blend(
    first: tuple[np.ndarray, np.ndarray],
    second: tuple[np.ndarray, np.ndarray],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Children of paired (lr, batch size) parents, each value at a random point between theirs.

    The point is uniform on the log scale (log lr, log2 batch size), one draw
    per child for the lr, then one per child for the batch size; a batch size
    is rounded half to even, so it stays between its parents' and inside any
    space that holds them.
    """
    lr_weight = rng.random(len(first[0]))
    batch_weight = rng.random(len(first[0]))
    lr = np.exp(lr_weight * np.log(first[0]) + (1 - lr_weight) * np.log(second[0]))
    log_batch = batch_weight * np.log2(first[1]) + (1 - batch_weight) * np.log2(second[1])
    return lr, np.rint(np.exp2(log_batch)).astype(np.int64)


def _by_id(cohort: Cohort, rows: np.ndarray) -> np.ndarray:
    return rows[np.argsort(cohort.client_id[rows], kind="stable")]


def _take(cohort: Cohort, rows: np.ndarray) -> Cohort:
    return Cohort(
        cohort.client_id[rows],
        cohort.lr[rows],
        cohort.batch_size[rows],
        cohort.score[rows],
        cohort.healthy[rows],
    )


def _joined(first: Cohort, second: Cohort) -> Cohort:
    return Cohort(
        *(
            np.concatenate([getattr(first, name), getattr(second, name)])
            for name in ("client_id", "lr", "batch_size", "score", "healthy")
        )
    )


def evolve(
    cohort: Cohort,
    labels: np.ndarray,
    elite: int,
    mutation: Mutation,
    rng: np.random.Generator,
    fallback: Cohort | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Next lr and batch size of every row, each group (rows of one label) evolved on its own.

    In each group the ``elite`` best keep their pair; every other member gets
    an offspring, to its own row. Parents are the group's fit members; a group
    without one breeds from ``fallback`` (default: the cohort's fit rows), or,
    when that is empty too, from all its own members. So a member whose last
    fit diverged or was refused never keeps its pair, even in a group no
    larger than the elite, and never breeds while a fit member exists:
    otherwise a diverging client would keep or spread its exploding lr.
    """
    count = len(cohort)
    new_lr, new_batch = cohort.lr.copy(), cohort.batch_size.copy()
    if count == 0:
        return new_lr, new_batch
    labels = np.asarray(labels)
    fit = cohort.fit
    ranked = np.lexsort((cohort.client_id, np.where(fit, cohort.score, 0.0), ~fit, labels))
    sorted_labels = labels[ranked]
    opens_group = np.r_[True, sorted_labels[1:] != sorted_labels[:-1]]
    first = np.flatnonzero(opens_group)  # each group's first position in ``ranked``
    group_at = np.cumsum(opens_group) - 1  # the group of each position
    sizes = np.diff(np.r_[first, count])
    rank = np.arange(count) - first[group_at]
    children = ranked[~((rank < elite) & fit[ranked])]
    child_group = group_at[np.argsort(ranked)][children]

    # The parent pool: each group's fit members by id, then its other members by id
    # (so a group spans the same positions as in ``ranked``), then the fallback.
    by_group = np.lexsort((cohort.client_id, ~fit, labels))
    fit_in_group = np.add.reduceat(fit[by_group].astype(np.int64), first)
    if fallback is None:
        fallback = _take(cohort, _by_id(cohort, np.flatnonzero(fit)))
    else:
        fallback = _take(fallback, np.argsort(fallback.client_id, kind="stable"))
    pool = _joined(_take(cohort, by_group), fallback)
    starts = np.where(fit_in_group > 0, first, count if len(fallback) else first)
    counts = np.where(fit_in_group > 0, fit_in_group, len(fallback) or sizes)
    lr, batch = breed(pool, starts[child_group], counts[child_group], mutation, rng)
    new_lr[children], new_batch[children] = lr, batch
    return new_lr, new_batch


def migration_count(population: int, fraction: float) -> int:
    """How many of a round's ``population`` clients migrate: ``fraction`` of it, at least one.

    Never more than half, so migrants and donors stay disjoint; 0 when off.
    """
    if fraction <= 0 or population < 2:
        return 0
    return min(max(1, round(fraction * population)), population // 2)


def migration(
    cohort: Cohort,
    fraction: float,
    mutation: Mutation,
    rng: np.random.Generator,
    untrusted: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Island-model migration, as PBT's exploit: the worst ``fraction`` breed from the best.

    ``cohort`` is the whole round, across every group. The bottom
    ``fraction`` (diverged and unscored clients first) each get an offspring
    of the top ``fraction``'s fit members, whatever group either belongs to,
    so a good pair found in one group reaches every other group in the next
    round. Rows marked ``untrusted`` (clients whose replies the server
    refused) migrate too, but outside that share: counted in it, a few hostile
    clients would take every migrant's place, and the honest clients that
    most need a better pair would never get one. Returns the migrants' rows
    (ascending id) and their new lrs and batch sizes; empty when there is no
    fit donor.
    """
    outside = np.zeros(len(cohort), dtype=bool) if untrusted is None else untrusted
    inside = np.flatnonzero(~outside)
    count = migration_count(len(inside), fraction)
    ranked = inside[fitness_order(_take(cohort, inside))]
    top = ranked[:count]
    donors = _by_id(cohort, top[cohort.fit[top]])
    if len(donors) == 0:
        return np.empty(0, dtype=np.int64), *breed(cohort, np.empty(0), np.empty(0), mutation, rng)
    bottom = ranked[len(ranked) - count :]
    migrants = _by_id(cohort, np.concatenate([bottom, np.flatnonzero(outside)]))
    starts = np.zeros(len(migrants), dtype=np.int64)
    counts = np.full(len(migrants), len(donors))
    lr, batch = breed(_take(cohort, donors), starts, counts, mutation, rng)
    return migrants, lr, batch
