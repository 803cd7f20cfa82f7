"""The grid DBSCAN against scikit-learn's, on random and adversarial inputs."""

import zlib

import numpy as np
import pytest
from sklearn.cluster import DBSCAN

from gcfl.strategy import clustering
from gcfl.strategy.clustering import cluster_labels
from gcfl.strategy.grid_dbscan import NOISE, grid_dbscan


def assert_same_as_sklearn(points: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    """Equal to scikit-learn on core points and noise; border points join a core neighbour."""
    reference = DBSCAN(eps=eps, min_samples=min_samples, algorithm="kd_tree").fit(points)
    core = np.zeros(len(points), dtype=bool)
    core[reference.core_sample_indices_] = True
    labels = grid_dbscan(points, eps, min_samples)
    np.testing.assert_array_equal(labels[core], reference.labels_[core])
    np.testing.assert_array_equal(labels == NOISE, reference.labels_ == NOISE)
    for border in np.flatnonzero(~core & (labels != NOISE)):
        d0 = points[core, 0] - points[border, 0]
        d1 = points[core, 1] - points[border, 1]
        near = (d0 * d0 + d1 * d1) <= eps * eps
        assert labels[border] in set(labels[core][near]), f"border point {border}"
    return labels


def unit_square(rng, count):
    return rng.random((count, 2))


def lattice(rng, count, eps):
    # Points on a grid of step eps/2: many pairs exactly eps apart, many on cell edges.
    return rng.integers(0, 12, size=(count, 2)) * (eps / 2)


def duplicates(rng, count):
    return rng.random((max(1, count // 6), 2))[rng.integers(0, max(1, count // 6), count)]


def hyperparameter_like(rng, count):
    # What gcfl clusters: continuous log-lr, batch sizes on a few log2 levels.
    return np.column_stack([rng.random(count), np.log2(rng.integers(16, 129, count)) / 7 - 4 / 7])


@pytest.mark.parametrize("eps", [0.01, 0.05, 0.15, 0.4])
@pytest.mark.parametrize("min_samples", [1, 2, 5])
@pytest.mark.parametrize("shape", ["unit_square", "lattice", "duplicates", "hyperparameter_like"])
def test_matches_sklearn(shape, eps, min_samples):
    rng = np.random.default_rng(zlib.crc32(f"{shape} {eps} {min_samples}".encode()))
    make = {
        "unit_square": unit_square,
        "lattice": lambda rng, count: lattice(rng, count, eps),
        "duplicates": duplicates,
        "hyperparameter_like": hyperparameter_like,
    }[shape]
    for count in (1, 7, 60, 400):
        assert_same_as_sklearn(make(rng, count), eps, min_samples)


def test_points_exactly_eps_apart_are_neighbours():
    # 3-4-5 triangles scaled by powers of two: every distance is exact in binary.
    points = np.array([[0.0, 0.0], [0.375, 0.5], [0.75, 1.0], [3.0, 3.0]])
    labels = assert_same_as_sklearn(points, 0.625, 2)
    assert list(labels) == [0, 0, 0, NOISE]
    assert list(grid_dbscan(points, np.nextafter(0.625, 0), 2)) == [NOISE] * 4


def test_neighbours_that_rounding_puts_three_cells_apart():
    # 0.15 / 0.05 rounds to 2.999..., 0.25 / 0.05 to 5.0: cells 2 and 5, yet 0.1 apart.
    points = np.array([[0.0, 0.0], [0.15, 0.0], [0.25, 0.0], [0.9, 0.9]])
    assert list(assert_same_as_sklearn(points, 0.1, 2)) == [NOISE, 0, 0, NOISE]


def test_all_noise_and_one_cluster():
    spread = np.array([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5], [0.5, 0.5]])
    assert list(assert_same_as_sklearn(spread, 0.1, 2)) == [NOISE] * 4
    assert list(assert_same_as_sklearn(spread, 0.6, 2)) == [0] * 4
    same = np.zeros((50, 2))
    assert set(assert_same_as_sklearn(same, 0.01, 50)) == {0}
    assert set(assert_same_as_sklearn(same, 0.01, 51)) == {NOISE}


def test_a_chain_of_crowded_cells_is_one_cluster():
    # Crowded cells (checked pair by pair) linked through a thin bridge (checked in batches).
    rng = np.random.default_rng(3)
    blob_a = rng.normal([0.2, 0.5], 0.01, size=(600, 2))
    blob_b = rng.normal([0.8, 0.5], 0.01, size=(600, 2))
    bridge = np.column_stack([np.linspace(0.2, 0.8, 200), np.full(200, 0.5)])
    labels = assert_same_as_sklearn(np.vstack([blob_a, blob_b, bridge]), 0.02, 3)
    assert set(labels) == {0}
    apart = assert_same_as_sklearn(np.vstack([blob_a, blob_b]), 0.02, 3)
    assert len(set(apart) - {NOISE}) == 2


def test_bad_input_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="shape"):
        grid_dbscan(np.zeros((3, 3)), 0.1, 2)
    with pytest.raises(ValueError, match="eps"):
        grid_dbscan(np.zeros((3, 2)), 0.0, 2)
    with pytest.raises(ValueError, match="min_samples"):
        grid_dbscan(np.zeros((3, 2)), 0.1, 0)
    with pytest.raises(ValueError, match="finite"):
        grid_dbscan(np.array([[0.0, np.nan]]), 0.1, 2)
    assert grid_dbscan(np.empty((0, 2)), 0.1, 2).size == 0


def test_cluster_labels_switch_to_the_grid_above_the_threshold(monkeypatch):
    rng = np.random.default_rng(5)
    points = hyperparameter_like(rng, 3000)
    expected = {eps: cluster_labels(points, eps, 2) for eps in (0.0, 0.15)}
    monkeypatch.setattr(clustering, "GRID_MIN_CLIENTS", 100)
    for eps, labels in expected.items():
        grid = cluster_labels(points, eps, 2)
        reference = DBSCAN(eps=eps or clustering.auto_eps(points, 2), min_samples=2).fit(points)
        core = reference.core_sample_indices_
        np.testing.assert_array_equal(grid[core], labels[core])
        np.testing.assert_array_equal(grid == NOISE, labels == NOISE)
