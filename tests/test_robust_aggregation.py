"""Robust aggregation: Flower's definitions, and what each rule leaves out of a hostile round."""

import numpy as np
import pytest
from flwr.server.strategy.aggregate import aggregate_krum, aggregate_median, aggregate_trimmed_avg

from gcfl.strategy.aggregation import agreeing, agreement, krum_selection, robust_average

GLOBAL = [np.zeros((40, 30), np.float32), np.zeros(300, np.float32)]


def _honest(count, seed=0):
    """Updates that share one direction, each with its own noise."""
    rng = np.random.default_rng(seed)
    direction = [rng.normal(size=a.shape) for a in GLOBAL]
    return [
        [(0.1 * d + 0.05 * rng.normal(size=d.shape)).astype(np.float32) for d in direction]
        for _ in range(count)
    ]


def _flipped(update, scale=5.0):
    return [(-scale * a).astype(np.float32) for a in update]


@pytest.mark.parametrize("count", [3, 6, 7])
def test_median_and_trimmed_mean_are_flowers(count):
    updates = _honest(count)
    results = [(u, 10 + i) for i, u in enumerate(updates)]
    median, _ = robust_average(updates, "median")
    trimmed, _ = robust_average(updates, "trimmed-mean", 0.2)
    for ours, theirs in zip(median, aggregate_median(results), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    for ours, theirs in zip(trimmed, aggregate_trimmed_avg(results, 0.2), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)


def test_krum_picks_what_flowers_krum_picks():
    updates = [*_honest(5), _flipped(_honest(1, seed=3)[0])]
    results = [(u, 10) for u in updates]
    (chosen,) = krum_selection(updates, byzantine=1, keep=1)
    for ours, theirs in zip(updates[chosen], aggregate_krum(results, 1, 0), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert 5 not in krum_selection(updates, byzantine=1, keep=5)


def test_the_outlier_share_marks_the_update_trimmed_almost_everywhere():
    updates = [*_honest(5), _flipped(_honest(1, seed=3)[0])]
    _, shares = robust_average(updates, "trimmed-mean", 0.2)
    assert shares[5] > 0.8 and max(shares[:5]) < 0.6


def test_sign_flips_and_noise_disagree_and_honest_updates_agree():
    honest = _honest(4)
    rng = np.random.default_rng(9)
    noise = [rng.normal(size=a.shape).astype(np.float32) for a in GLOBAL]
    updates = [*honest, _flipped(honest[0]), noise]
    cosines = agreement(updates, GLOBAL)
    assert min(cosines[:4]) > 0.3
    assert cosines[4] < 0 and abs(cosines[5]) < 0.3
    assert agreeing(cosines, 0.5) == [0, 1, 2, 3]


def test_two_colluding_sign_flips_of_six_still_disagree():
    honest = _honest(4)
    updates = [*honest, _flipped(honest[1]), _flipped(honest[2])]
    cosines = agreement(updates, GLOBAL)
    assert max(cosines[4:]) < 0 < min(cosines[:4])


def test_a_minority_can_never_make_the_majority_fall_out():
    # Every update disagrees: the most agreeing majority is kept all the same.
    assert agreeing([-0.5, -0.1, -0.3, -0.2, -0.9], 0.5) == [1, 2, 3]
    assert agreeing([0.4, 0.5, 0.45, 0.05], 0.5) == [0, 1, 2]


def test_two_colluders_trained_towards_another_task_do_not_vouch_for_each_other():
    # Late in training honest moves share little (pairwise cosine ~0.2) while two nodes
    # trained on the same flipped labels share a lot (~0.6) and nothing with the honest.
    rng = np.random.default_rng(4)
    honest_direction = [rng.normal(size=a.shape) for a in GLOBAL]
    other_task = [rng.normal(size=a.shape) for a in GLOBAL]

    def move(direction, noise):
        return [(d + noise * rng.normal(size=d.shape)).astype(np.float32) for d in direction]

    updates = [
        *(move(honest_direction, 2.0) for _ in range(4)),
        move(other_task, 0.8),
        move(other_task, 0.8),
    ]
    cosines = agreement(updates, GLOBAL)
    assert max(cosines[4:]) < 0.5 * min(cosines[:4])
    assert agreeing(cosines, 0.5) == [0, 1, 2, 3]


def test_an_update_that_did_not_move_does_not_pull_the_others_agreement_down():
    # Free riders return the global model unchanged: the honest still agree with each other.
    honest = _honest(3)
    unchanged = [a.copy() for a in GLOBAL]
    cosines = agreement([*honest, unchanged, unchanged, unchanged], GLOBAL)
    assert min(cosines[:3]) > 0.3 and cosines[3:] == [0.0, 0.0, 0.0]
