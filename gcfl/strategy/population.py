"""gcfl's hyperparameter policy: cluster the clients that trained, evolve each group.

:class:`GeneticPopulation` implements :class:`~gcfl.strategy.policy.HyperparameterPolicy`
(whose other implementation is the FedAvg baseline's); :func:`make_policy`
chooses between them once, from the run config.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gcfl.config import GcflConfig
from gcfl.strategy.clustering import NOISE, cluster_labels
from gcfl.strategy.features import SearchSpace, hyperparameter_features
from gcfl.strategy.fitness import fitness_score
from gcfl.strategy.genetic import (
    Cohort,
    Hyperparameters,
    Mutation,
    breed,
    evolve,
    fitness_order,
    migration,
    random_pairs,
)
from gcfl.strategy.policy import (
    TRAINED,
    ClientState,
    FixedHyperparameters,
    HyperparameterPolicy,
    Report,
    RoundRules,
    record_reports,
)


@dataclass(frozen=True)
class GeneticSettings:
    """The algorithm's parameters, taken from the run config.

    ``dbscan_eps`` 0 chooses the radius from the population each time.
    ``migration`` is the share of a round's clients, from the worst, that
    breed from the round's best across clusters (0: clusters never exchange).
    ``refresh_stale``: the chance that a sampled client that did not train in
    the latest round with trained clients trains with an offspring of that
    round's best half instead of its old pair (see :meth:`GeneticPopulation.prepare`).
    """

    # No defaults: the run config (gcfl.config.GcflConfig) is their one source, so
    # tests and benchmarks take them via ``from_config(GcflConfig())``.
    space: SearchSpace
    dbscan_eps: float
    dbscan_min_samples: int
    elite: int
    mutation: Mutation
    recluster_every: int
    fitness: str
    migration: float
    refresh_stale: float

    @property
    def explore(self) -> Mutation:
        # Kept as an alias: ``step`` and older callers read the mutation by this name.
        return self.mutation

    @classmethod
    def from_config(cls, config: GcflConfig) -> GeneticSettings:
        """The settings a run config gives (its defaults: gcfl's defaults)."""
        space = SearchSpace(config.lr_min, config.lr_max, config.batch_min, config.batch_max)
        return cls(
            space=space,
            dbscan_eps=config.dbscan_eps,
            dbscan_min_samples=config.dbscan_min_samples,
            elite=config.elite,
            mutation=Mutation(
                config.mutation,
                config.mutation_scale,
                config.resample,
                space,
                # The notebook's lr drifted past its range; gcfl's stays in the space.
                bounded=config.rules != "notebook",
                batch_step=config.batch_step,
                crossover=config.crossover,
            ),
            recluster_every=config.recluster_every,
            fitness=config.fitness,
            migration=config.migration,
            refresh_stale=config.refresh_stale,
        )


def reclusters_in(server_round: int, recluster_every: int) -> bool:
    """Whether DBSCAN runs at the end of ``server_round`` (1-based).

    ``recluster_every`` = 1 clusters every round; k every k-th round starting
    with round 1; 0 only once, after round 1, as the seed notebook did.
    """
    if recluster_every == 0:
        return server_round == 1
    return (server_round - 1) % recluster_every == 0


class GeneticPopulation:
    """gcfl's policy: cluster the clients that trained, evolve each group's hyperparameters."""

    rules = RoundRules()  # make_policy gives it the run config's

    def __init__(
        self,
        states: dict[int, ClientState],
        settings: GeneticSettings,
        rng: np.random.Generator,
    ) -> None:
        self.states = states
        self.settings = settings
        self.rng = rng
        self.migrants: set[int] = set()  # the clients the last step migrated

    @classmethod
    def random_init(
        cls, client_ids: Iterable[int], settings: GeneticSettings, rng: np.random.Generator
    ) -> GeneticPopulation:
        """Every client starts at a random pair; pairs are drawn in ascending id order."""
        ids = sorted(client_ids)
        lrs, batch_sizes = random_pairs(settings.space, len(ids), rng)
        states = {
            cid: ClientState(lr, batch)
            for cid, lr, batch in zip(ids, lrs.tolist(), batch_sizes.tolist(), strict=True)
        }
        return cls(states, settings, rng)

    @classmethod
    def search_init(
        cls, client_ids: Iterable[int], settings: GeneticSettings, rng: np.random.Generator
    ) -> GeneticPopulation:
        """Clients pick their first pair themselves by a small grid search (seed In [8])."""
        return cls({cid: ClientState(None, None) for cid in client_ids}, settings, rng)

    def prepare(self, server_round: int, sampled: list[int]) -> set[int]:
        """PBT's exploit for the absent: stale sampled clients start from the latest best.

        The genetic step evolves only the clients that trained in a round. When
        a round samples a fraction of the federation, a client sampled now may
        hold a pair from many rounds ago (or its random initial one) while the
        population has since learnt better ones. With ``refresh_stale``, every
        sampled client that did not train in the latest round with trained
        clients gets, with that chance, an offspring (crossover, then
        mutation) of that round's best half instead. Clients are taken in
        ascending id; no random draw when none is stale, so
        full-participation runs keep their stream.
        """
        chance = self.settings.refresh_stale
        if chance <= 0:
            return set()
        pool, latest = latest_best(self.states)
        stale = [cid for cid in sorted(sampled) if self.states[cid].trained_round != latest]
        if len(pool) == 0 or not stale:
            return set()
        if chance < 1:
            # The rest keep their pairs: a pool learnt from one round of a few clients
            # can be all bad, and a population that copied it would have nothing else.
            draws = self.rng.random(len(stale))
            stale = [cid for cid, draw in zip(stale, draws, strict=True) if draw < chance]
            if not stale:
                return set()
        lrs, batch_sizes = breed(
            pool,
            np.zeros(len(stale), dtype=np.int64),
            np.full(len(stale), len(pool)),
            self.settings.explore,
            self.rng,
        )
        lrs, batch_sizes = self._inside_space(lrs, batch_sizes)
        for cid, lr, batch in zip(stale, lrs.tolist(), batch_sizes.tolist(), strict=True):
            self.states[cid].lr, self.states[cid].batch_size = lr, batch
        return set(stale)

    def assignment(self, client_id: int) -> Hyperparameters | None:
        state = self.states[client_id]
        if state.lr is None or state.batch_size is None:
            return None
        return Hyperparameters(state.lr, state.batch_size)

    def step(self, server_round: int, reports: Mapping[int, Report]) -> dict[int, int]:
        labels = self.record(server_round, reports)
        scores = {
            cid: fitness_score(
                self.settings.fitness,
                state.val_loss_before,
                state.val_loss,
                state.local_loss_before,
                state.local_loss_after,
            )
            for cid, state in ((cid, self.states[cid]) for cid in labels)
        }
        self.evolve(labels, scores)
        return labels

    def record(self, server_round: int, reports: Mapping[int, Report]) -> dict[int, int]:
        record_reports(self.states, server_round, reports)
        self._settle(reports)
        trained = sorted(cid for cid, r in reports.items() if r.status in TRAINED)
        labels = self._labels(server_round, trained)
        for cid, label in labels.items():
            self.states[cid].cluster = label
        return labels

    def local_scores(self, client_ids: Iterable[int]) -> dict[int, float | None]:
        return {
            cid: fitness_score(
                "improvement",
                None,
                None,
                self.states[cid].local_loss_before,
                self.states[cid].local_loss_after,
            )
            for cid in client_ids
        }

    def evolve(self, labels: Mapping[int, int], scores: Mapping[int, float | None]) -> None:
        trained = list(labels)
        states = [self.states[cid] for cid in trained]
        for cid, state in zip(trained, states, strict=True):
            state.score = scores.get(cid)
        cohort = Cohort(
            client_id=np.array(trained, dtype=np.int64),
            lr=np.array([s.lr for s in states], dtype=np.float64),
            batch_size=np.array([s.batch_size for s in states], dtype=np.int64),
            score=np.array(
                [np.nan if s.score is None else s.score for s in states], dtype=np.float64
            ),
            healthy=np.array([s.status == "ok" for s in states], dtype=bool),
        )
        explore = self.settings.explore
        lrs, batch_sizes = evolve(
            cohort,
            np.array(list(labels.values()), dtype=np.int64),
            self.settings.elite,
            explore,
            self.rng,
        )
        refused = np.array([s.status == "refused" for s in states], dtype=bool)
        migrants, migrant_lrs, migrant_batch_sizes = migration(
            cohort, self.settings.migration, explore, self.rng, untrusted=refused
        )
        lrs[migrants], batch_sizes[migrants] = migrant_lrs, migrant_batch_sizes
        self.migrants = set(cohort.client_id[migrants].tolist())
        lrs, batch_sizes = self._inside_space(lrs, batch_sizes)
        for state, lr, batch in zip(states, lrs.tolist(), batch_sizes.tolist(), strict=True):
            state.lr, state.batch_size = lr, batch

    def _settle(self, reports: Mapping[int, Report]) -> None:
        """Give every reported client a pair inside the space before anything is clustered.

        A search whose reply was refused or never came leaves no pair the
        server could trust: such a client draws a fresh random one. A grid
        point outside the space (the seed's lr grid reaches 1e-6) is brought
        to the space's edge.
        """
        unknown = sorted(cid for cid in reports if self.states[cid].lr is None)
        if unknown:  # no draw otherwise: runs without such clients keep their random stream
            lrs, batch_sizes = random_pairs(self.settings.space, len(unknown), self.rng)
            for cid, lr, batch in zip(unknown, lrs.tolist(), batch_sizes.tolist(), strict=True):
                self.states[cid].lr, self.states[cid].batch_size = lr, batch
        for cid in reports:
            state = self.states[cid]
            (lr,), (batch,) = self._inside_space(
                np.array([state.lr], dtype=np.float64), np.array([state.batch_size])
            )
            state.lr, state.batch_size = float(lr), int(batch)

    def _inside_space(
        self, lrs: np.ndarray, batch_sizes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The pairs clipped to the search space; the notebook preset's lr may drift out."""
        space = self.settings.space
        batch_sizes = np.clip(batch_sizes, space.batch_min, space.batch_max)
        if self.settings.explore.bounded:
            lrs = np.clip(lrs, space.lr_min, space.lr_max)
        return lrs, batch_sizes

    def _labels(self, server_round: int, trained: list[int]) -> dict[int, int]:
        if not reclusters_in(server_round, self.settings.recluster_every):
            # Between reclusterings a client keeps its group; one never clustered is noise.
            return {cid: _cluster_or_noise(self.states[cid]) for cid in trained}
        # _settle gave every reported client a pair before this.
        pairs = [_known_pair(self.states[cid]) for cid in trained]
        features = hyperparameter_features(
            [lr for lr, _ in pairs], [batch for _, batch in pairs], self.settings.space
        )
        found = cluster_labels(features, self.settings.dbscan_eps, self.settings.dbscan_min_samples)
        return {cid: int(label) for cid, label in zip(trained, found, strict=True)}


def _cluster_or_noise(state: ClientState) -> int:
    return NOISE if state.cluster is None else state.cluster


def _known_pair(state: ClientState) -> tuple[float, int]:
    assert state.lr is not None and state.batch_size is not None, "a settled client has a pair"
    return state.lr, state.batch_size


def latest_best(states: Mapping[int, ClientState]) -> tuple[Cohort, int | None]:
    """The best half (at least one) of the latest round's scored clients, by the pairs they
    trained with, ascending id; and that round (None before any client trained).

    Derived from the states alone, so a resumed run finds the same pool.
    """
    latest = max(
        (s.trained_round for s in states.values() if s.trained_round is not None), default=None
    )
    scored = sorted(
        cid
        for cid, s in states.items()
        if s.trained_round == latest
        and latest is not None
        and s.status == "ok"
        and s.score is not None
        and np.isfinite(s.score)
        and s.trained_lr is not None
        and s.trained_batch_size is not None
    )
    members = Cohort(
        client_id=np.array(scored, dtype=np.int64),
        lr=np.array([states[c].trained_lr for c in scored], dtype=np.float64),
        batch_size=np.array([states[c].trained_batch_size for c in scored], dtype=np.int64),
        score=np.array([states[c].score for c in scored], dtype=np.float64),
        healthy=np.ones(len(scored), dtype=bool),
    )
    best = fitness_order(members)[: max(1, len(scored) // 2)] if scored else np.arange(0)
    best = np.sort(best)  # ascending id: the draw depends on who, not on the ranking's ties
    return (
        Cohort(
            members.client_id[best],
            members.lr[best],
            members.batch_size[best],
            members.score[best],
            members.healthy[best],
        ),
        latest,
    )


def make_policy(
    config: GcflConfig, client_ids: list[int], rng: np.random.Generator
) -> HyperparameterPolicy:
    """The hyperparameter policy that ``config.strategy`` names, for these clients, with its
    rules for the updates: the one place where FedAvg and gcfl part."""
    if config.strategy == "fedavg":
        return FixedHyperparameters(
            client_ids, Hyperparameters(config.fedavg_lr, config.fedavg_batch_size)
        )
    settings = GeneticSettings.from_config(config)
    if config.init == "search":
        population = GeneticPopulation.search_init(client_ids, settings, rng)
    else:
        population = GeneticPopulation.random_init(client_ids, settings, rng)
    population.rules = RoundRules(
        aggregate=config.aggregate,
        clip=config.aggregate_clip,
        # fitness=loss scores no improvement for a floor to read.
        floor=config.aggregate_floor if config.fitness != "loss" else 0.0,
        share=config.aggregate_share,
        federated=config.fitness == "federated",
    )
    return population
