"""The pure algorithm: features, DBSCAN groups, the genetic step, sampling, aggregation."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from gcfl.strategy.aggregation import update_problem, weighted_average
from gcfl.strategy.clustering import NOISE, cluster_labels, groups
from gcfl.strategy.features import SearchSpace, hyperparameter_features
from gcfl.strategy.genetic import Member, evolve_group, mutate_lr, rank_by_fitness
from gcfl.strategy.population import (
    GeneticPopulation,
    GeneticSettings,
    Report,
    random_hyperparameters,
    reclusters_in,
    states_from_dict,
    states_to_dict,
)
from gcfl.strategy.sampling import num_sampled, sample_clients

SPACE = SearchSpace(lr_min=1e-7, lr_max=1e-3, batch_min=16, batch_max=128)


def rng(seed=0):
    return np.random.default_rng(seed)


def test_pure_modules_import_neither_flower_nor_tensorflow():
    code = (
        "import sys; import gcfl.strategy.population, gcfl.strategy.aggregation, "
        "gcfl.strategy.sampling, gcfl.config; "
        "bad = [m for m in ('flwr', 'tensorflow', 'keras') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class TestFeatures:
    def test_log_scaled_to_unit_square(self):
        features = hyperparameter_features([1e-7, 1e-5, 1e-3], [16, 45.254834, 128], SPACE)
        np.testing.assert_allclose(features, [[0, 0], [0.5, 0.5], [1, 1]], atol=1e-6)

    def test_values_outside_the_space_are_clipped(self):
        features = hyperparameter_features([1e-9, 1.0], [8, 512], SPACE)
        np.testing.assert_array_equal(features, [[0, 0], [1, 1]])

    def test_seed_bug_4_sign_is_fixed(self):
        # The notebook clustered on (log10(lr) - 3) / 4, which is negative for every lr.
        lr_feature = hyperparameter_features([1e-4], [32], SPACE)[0, 0]
        assert lr_feature == pytest.approx(0.75)


class TestClustering:
    def test_dbscan_groups_and_noise(self):
        features = np.array([[0.0, 0.0], [0.05, 0.0], [1.0, 1.0], [0.95, 1.0], [0.5, 0.5]])
        labels = cluster_labels(features, eps=0.15, min_samples=2)
        assert labels[0] == labels[1] != labels[2] == labels[3]
        assert labels[4] == NOISE

    def test_noise_is_one_group_of_its_own(self):
        grouped = groups([7, 3, 5, 1], [NOISE, 0, NOISE, 0])
        assert grouped == {NOISE: [5, 7], 0: [1, 3]}

    def test_no_clients_no_labels(self):
        assert cluster_labels(np.empty((0, 2)), 0.15, 2).size == 0


def members(*rows):
    return [Member(cid, lr, bs, loss) for cid, lr, bs, loss in rows]


class TestGenetic:
    def test_rank_puts_non_finite_and_unhealthy_last(self):
        group = members(
            (0, 1e-4, 32, math.nan),
            (1, 1e-4, 32, 0.5),
            (2, 1e-4, 32, math.inf),
            (3, 1e-4, 32, 0.2),
            (4, 1e-4, 32, None),
        )
        group.append(Member(5, 1e-4, 32, 0.01, healthy=False))
        assert [m.client_id for m in rank_by_fitness(group)][:2] == [3, 1]
        assert {m.client_id for m in rank_by_fitness(group)[2:]} == {0, 2, 4, 5}

    def test_elite_keep_their_pair_others_get_offspring_by_id(self):
        # The best two are ids 9 and 4, not the first two by position (seed bug 7).
        group = members(
            (2, 1e-5, 16, 0.9),
            (4, 2e-4, 64, 0.3),
            (7, 5e-6, 32, 0.8),
            (9, 1e-3, 128, 0.1),
            (11, 3e-7, 20, 0.7),
        )
        result = evolve_group(group, elite=2, mutation=0.1, rng=rng())
        assert result[9].lr == 1e-3 and result[9].batch_size == 128
        assert result[4].lr == 2e-4 and result[4].batch_size == 64
        parent_lrs = [m.lr for m in group]
        for cid in (2, 7, 11):
            assert any(
                math.isclose(result[cid].lr, lr * f, rel_tol=1e-12)
                for lr in parent_lrs
                for f in (0.9, 1.0, 1.1)
            )
            assert result[cid].batch_size in {m.batch_size for m in group}

    def test_offspring_draw_lr_and_batch_from_independent_members(self):
        group = members(*[(i, 10.0 ** -(i + 2), 16 * (i + 1), float(i)) for i in range(5)])
        pairs = set()
        generator = rng(1)
        for _ in range(200):
            for pair in evolve_group(group, 0, 0.0, generator).values():
                lr_parent = round(-math.log10(pair.lr)) - 2
                batch_parent = pair.batch_size // 16 - 1
                pairs.add((lr_parent, batch_parent))
        # With independent draws, mismatched parents are common.
        assert len(pairs) == 25

    def test_mutation_factors_are_exactly_one_minus_one_plus(self):
        generator = rng(2)
        factors = {round(mutate_lr(1.0, 0.1, generator), 12) for _ in range(300)}
        assert factors == {0.9, 1.0, 1.1}

    def test_same_seed_same_offspring_different_seed_differs(self):
        group = members(*[(i, 1e-4 * (i + 1), 16 + i, 1.0 / (i + 1)) for i in range(8)])
        first = evolve_group(group, 2, 0.1, rng(5))
        assert first == evolve_group(group, 2, 0.1, rng(5))
        assert any(evolve_group(group, 2, 0.1, rng(s)) != first for s in range(6, 10))

    def test_group_without_healthy_member_breeds_from_the_fallback(self):
        group = [Member(0, 5.0, 16, None, healthy=False), Member(1, 8.0, 32, math.inf)]
        fallback = [Member(7, 1e-4, 64, 0.2)]
        result = evolve_group(group, elite=2, mutation=0.1, rng=rng(), fallback_parents=fallback)
        for pair in result.values():
            assert any(math.isclose(pair.lr, 1e-4 * f) for f in (0.9, 1.0, 1.1))
            assert pair.batch_size == 64
        alone = evolve_group(group, elite=2, mutation=0.1, rng=rng())
        assert all(pair.lr >= 4.5 for pair in alone.values())

    def test_unhealthy_member_never_keeps_its_pair(self):
        group = [Member(0, 5.0, 16, None, healthy=False), Member(1, 1e-4, 32, 0.3)]
        result = evolve_group(group, elite=2, mutation=0.1, rng=rng())
        assert result[1].lr == 1e-4
        # The diverged client breeds from the healthy member only.
        assert any(math.isclose(result[0].lr, 1e-4 * f) for f in (0.9, 1.0, 1.1))


def population(n=6, **settings):
    return GeneticPopulation.random_init(range(n), GeneticSettings(space=SPACE, **settings), rng(3))


def reports_for(pop, losses, status="ok"):
    return {
        cid: Report(pop.states[cid].lr, pop.states[cid].batch_size, loss, status)
        for cid, loss in losses.items()
    }


class TestPopulation:
    def test_random_init_within_the_space(self):
        generator = rng(0)
        for _ in range(500):
            pair = random_hyperparameters(SPACE, generator)
            assert 1e-7 <= pair.lr <= 1e-3 and 16 <= pair.batch_size <= 128

    def test_step_keeps_cluster_elite_and_breeds_within_cluster(self):
        pop = population(8)
        before = {cid: (s.lr, s.batch_size) for cid, s in pop.states.items()}
        losses = {cid: 1.0 + cid for cid in range(8)}
        labels = pop.step(1, reports_for(pop, losses))
        for members_ in groups(list(labels), list(labels.values())).values():
            ranked = sorted(members_, key=lambda c: losses[c])
            for cid in ranked[:2]:
                assert (pop.states[cid].lr, pop.states[cid].batch_size) == before[cid]
            for cid in ranked[2:]:
                assert any(
                    math.isclose(pop.states[cid].lr, before[m][0] * f, rel_tol=1e-12)
                    for m in members_
                    for f in (0.9, 1.0, 1.1)
                )
                assert pop.states[cid].batch_size in {before[m][1] for m in members_}

    def test_failed_clients_keep_their_state_and_are_not_clustered(self):
        pop = population(6)
        before = vars(pop.states[5]).copy()
        reports = reports_for(pop, {cid: 1.0 for cid in range(5)})
        reports[5] = Report(math.nan, 0, None, "failed")
        labels = pop.step(1, reports)
        assert 5 not in labels
        after = vars(pop.states[5])
        assert (after["lr"], after["batch_size"], after["loss"]) == (
            before["lr"],
            before["batch_size"],
            before["loss"],
        )
        assert after["status"] == "failed"

    def test_same_seed_same_losses_same_assignments(self):
        def run():
            pop = population(10)
            for server_round in (1, 2, 3):
                pop.step(server_round, reports_for(pop, {c: 1.0 / (c + 1) for c in range(10)}))
            return {cid: (s.lr, s.batch_size, s.cluster) for cid, s in pop.states.items()}

        assert run() == run()

    @pytest.mark.parametrize(("every", "rounds"), [(1, {1, 2, 3, 4}), (2, {1, 3}), (0, {1})])
    def test_recluster_schedule(self, every, rounds):
        assert {r for r in range(1, 5) if reclusters_in(r, every)} == rounds

    def test_recluster_zero_keeps_round_one_clusters(self):
        pop = population(8, recluster_every=0)
        first = pop.step(1, reports_for(pop, {c: 1.0 for c in range(8)}))
        second = pop.step(2, reports_for(pop, {c: 1.0 for c in range(8)}))
        assert first == second

    def test_search_init_has_no_pair_until_the_client_reports(self):
        pop = GeneticPopulation.search_init(range(3), GeneticSettings(space=SPACE), rng())
        assert pop.assignment(0) is None
        pop.step(1, {0: Report(1e-3, 64, 0.5, "ok")})
        assert pop.assignment(0) is not None and pop.assignment(1) is None

    def test_states_round_trip_through_plain_data(self):
        pop = population(3)
        pop.step(1, reports_for(pop, {0: 0.5, 1: math.inf, 2: 0.1}))
        data = json.loads(json.dumps(states_to_dict(pop.states)))
        assert set(data) == {"0", "1", "2"}
        assert states_from_dict(data) == pop.states


class TestSampling:
    def test_fraction_and_minimum(self):
        assert num_sampled(100, 0.3, 2) == 30
        assert num_sampled(10, 0.3, 2) == 3
        assert num_sampled(10, 0.05, 2) == 2
        assert num_sampled(3, 1.0, 2) == 3

    def test_same_seed_same_clients_regardless_of_connection_order(self):
        ids = list(range(100))
        shuffled = list(rng(9).permutation(ids))
        a = [sample_clients(ids, 30, rng(4)) for _ in range(1)]
        b = [sample_clients(shuffled, 30, rng(4)) for _ in range(1)]
        assert a == b and a[0] == sorted(a[0]) and len(set(a[0])) == 30

    def test_all_clients_when_count_covers_them(self):
        assert sample_clients([5, 1, 3], 3, rng()) == [1, 3, 5]


class TestAggregation:
    def test_weighted_by_examples(self):
        a = [np.array([0.0, 0.0], dtype=np.float32)]
        b = [np.array([3.0, 6.0], dtype=np.float32)]
        (average,) = weighted_average([(a, 1), (b, 2)])
        np.testing.assert_allclose(average, [2.0, 4.0])
        assert average.dtype == np.float32

    def test_problems_are_named(self):
        reference = [np.zeros((2, 2), np.float32)]
        assert "shape" in update_problem([np.zeros((3, 2), np.float32)], reference, None)
        assert "non-finite" in update_problem([np.full((2, 2), np.nan)], reference, None)
        assert "arrays" in update_problem([], reference, None)
        assert update_problem([np.ones((2, 2), np.float32)], reference, None) is None
        big = [np.full((2, 2), 100.0)]
        assert "norm" in update_problem(big, [np.ones((2, 2))], max_update_norm=10)
