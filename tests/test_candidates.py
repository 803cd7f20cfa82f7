"""The federated fitness' pure rules: groups, candidates, robust judgement, scores."""

import math

import numpy as np
import pytest

from gcfl.strategy.aggregation import weighted_average
from gcfl.strategy.candidates import (
    MAX_PLAUSIBLE_LOSS,
    GroupJudgement,
    candidates_for,
    client_scores,
    fitness_groups,
    group_contributions,
    harmful_groups,
    judgeable_groups,
    loss_problem,
    trimmed_mean,
)


def _features(**points):
    return {int(k[1:]): v for k, v in points.items()}


def test_a_cluster_of_one_joins_the_nearest_group():
    labels = {0: 0, 1: 0, 2: 1, 3: 1, 4: 2}
    features = _features(c0=(0.0, 0.0), c1=(0.1, 0.0), c2=(0.9, 0.9), c3=(1.0, 1.0), c4=(0.8, 0.8))
    assert fitness_groups(labels, features) == {0: (0, 1), 1: (2, 3, 4)}


def test_no_group_has_fewer_than_two_members():
    rng = np.random.default_rng(0)
    for _ in range(50):
        count = int(rng.integers(2, 12))
        labels = {c: int(rng.integers(-1, 5)) for c in range(count)}
        features = {c: tuple(rng.random(2)) for c in range(count)}
        groups = fitness_groups(labels, features)
        assert sorted(c for members in groups.values() for c in members) == list(range(count))
        assert all(len(members) >= 2 for members in groups.values())


def test_fewer_than_two_clients_make_no_group():
    assert fitness_groups({3: 0}, {3: (0.5, 0.5)}) == {}


def _updates():
    rng = np.random.default_rng(1)
    return {c: ([rng.normal(size=(3, 2)).astype(np.float32)], 10 + c) for c in range(6)}


def test_leave_out_candidates_are_the_aggregates_without_each_group():
    updates = _updates()
    groups = {0: (0, 1), 1: (2, 3), 2: (4, 5)}
    candidates = candidates_for("leave-out", updates, groups, [])
    expected_all = weighted_average(list(updates.values()))
    np.testing.assert_allclose(candidates.aggregate[0], expected_all[0], rtol=1e-6)
    for label, members in groups.items():
        rest = [updates[c] for c in updates if c not in members]
        np.testing.assert_allclose(
            candidates.per_group[label][0], weighted_average(rest)[0], rtol=1e-5, atol=1e-6
        )
    assert math.isclose(sum(candidates.shares.values()), 1.0)
    assert candidates.shares[2] == pytest.approx((14 + 15) / sum(10 + c for c in range(6)))


def test_leave_out_needs_two_groups():
    with pytest.raises(ValueError, match="two groups"):
        candidates_for("leave-out", _updates(), {0: tuple(range(6))}, [])


def test_an_evaluator_never_judges_its_own_group():
    groups = {0: (0, 1), 1: (2, 3), 2: (4, 5)}
    assert judgeable_groups(2, groups) == [0, 2]
    assert judgeable_groups(9, groups) == [0, 1, 2]


@pytest.mark.parametrize(
    ("losses", "phrase"),
    [
        ((1.0,), "reported 1 candidate losses, 2"),
        ((1.0, math.nan), "candidate-loss-1"),
        ((1.0, -0.1), "candidate-loss-1"),
        ((MAX_PLAUSIBLE_LOSS * 2, 1.0), "candidate-loss-0"),
    ],
)
def test_implausible_candidate_losses_are_named(losses, phrase):
    problem = loss_problem(losses, 2)
    assert problem is not None and phrase in problem


def test_plausible_losses_pass():
    assert loss_problem((0.0, 2.3), 2) is None


def test_the_trimmed_mean_ignores_one_extreme_value():
    honest = [0.01, 0.02, 0.0, 0.015, 0.012, 0.018, 0.011, 0.009, 0.014, 0.016]
    liar = [*honest[:-1], 1e3]
    assert trimmed_mean(liar) <= max(honest)
    assert abs(trimmed_mean(liar) - trimmed_mean(honest)) <= (max(honest) - min(honest)) / 8


def test_a_lying_evaluator_moves_a_group_by_at_most_its_share():
    groups = {0: (0, 1), 1: (2, 3)}
    honest = {e: {0: (1.0, 1.02), 1: (1.0, 0.99)} for e in range(10, 20)}
    truth = group_contributions(honest, groups)
    # The liar says group 1 is indispensable and group 0 worthless, as strongly as it can.
    lied = {**honest, 19: {0: (1.0, 0.0), 1: (1.0, MAX_PLAUSIBLE_LOSS)}}
    judged = group_contributions(lied, groups)
    assert judged[0].contribution > 0 > judged[1].contribution
    assert judged[0].contribution == pytest.approx(truth[0].contribution, abs=0.02 / 8)
    assert judged[1].contribution == pytest.approx(truth[1].contribution, abs=0.01 / 8)


def test_the_contribution_is_the_relative_rise_of_the_loss_without_the_group():
    groups = {0: (0, 1), 1: (2, 3)}
    reports = {9: {0: (2.0, 2.2)}, 8: {0: (1.0, 1.1), 1: (1.0, 0.9)}}
    judged = group_contributions(reports, groups)
    assert judged[0] == GroupJudgement(pytest.approx(0.1), 2)
    assert judged[1] == GroupJudgement(pytest.approx(-0.1), 1)


def test_harmful_groups_are_those_whose_absence_helped_but_never_all():
    judged = {
        0: GroupJudgement(0.05, 5),
        1: GroupJudgement(-0.01, 5),
        2: GroupJudgement(None, 0),
    }
    assert harmful_groups(judged) == {1}
    all_bad = {0: GroupJudgement(-0.05, 5), 1: GroupJudgement(-0.01, 5)}
    assert harmful_groups(all_bad) == {0}


def test_scores_rank_groups_by_contribution_per_example_then_members_by_their_own():
    groups = {0: (0, 1), 1: (2, 3), 2: (4, 5)}
    judged = {0: GroupJudgement(0.02, 4), 1: GroupJudgement(0.02, 4), 2: GroupJudgement(None, 0)}
    shares = {0: 0.5, 1: 0.25, 2: 0.25}
    local = {0: -0.5, 1: -0.2, 2: 0.3, 3: -0.9, 4: None, 5: -0.1}
    scores = client_scores(groups, judged, shares, local)
    order = sorted(scores, key=lambda c: scores[c])
    # Group 1 gives as much with half the examples: its members rank first; then group 0;
    # the unjudged group last; inside a group, the member that improved its own loss more.
    assert order == [3, 2, 0, 1, 5, 4]
