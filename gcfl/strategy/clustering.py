"""Group clients by their hyperparameters with DBSCAN."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import DBSCAN
from sklearn.neighbors import KDTree

from gcfl.strategy.grid_dbscan import NOISE, grid_dbscan

__all__ = ["GRID_MIN_CLIENTS", "MIN_EPS", "NOISE", "auto_eps", "cluster_labels"]

# Below this, points that differ only by float rounding would count as apart.
MIN_EPS = 1e-3
# From this many clients on, the grid DBSCAN (same clusters, O(n) memory) replaces
# scikit-learn's, which lists every neighbour of every point first
# (BENCHMARKS.md, "The algorithm alone", has the crossover).
GRID_MIN_CLIENTS = 5_000


def auto_eps(features: np.ndarray, min_samples: int, tree: KDTree | None = None) -> float:
    """A DBSCAN radius chosen from the population: the k-distance rule.

    The median, over all points, of the distance to the ``min_samples``-th
    nearest other point. A fixed radius puts every client in one cluster once
    a round has a few hundred of them (the unit square fills up); this one
    shrinks as the population grows, so a cluster stays a handful of clients
    with similar hyperparameters (3-4 on average with ``min_samples`` 2,
    whatever the population). Identical rows give a distance of 0, hence the
    floor ``MIN_EPS``. ``tree``: a KD-tree of ``features`` already built.
    """
    count = len(features)
    if count < 2:
        return 1.0
    k = min(min_samples, count - 1)
    tree = tree if tree is not None else KDTree(features)
    distances, _ = tree.query(features, k=k + 1)
    return max(float(np.median(distances[:, k])), MIN_EPS)


def cluster_labels(features: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN labels for each row of ``features``; ``NOISE`` (-1) for outliers.

    ``eps`` 0 means "choose it from the population" (:func:`auto_eps`). From
    ``GRID_MIN_CLIENTS`` rows on, the labels come from :func:`grid_dbscan`:
    the same clusters, except that a border point within eps of two clusters
    may join the other one.
    """
    if len(features) == 0:
        return np.empty(0, dtype=np.int64)
    large = len(features) >= GRID_MIN_CLIENTS
    tree = KDTree(features) if large or eps == 0 else None
    radius = auto_eps(features, min_samples, tree) if eps == 0 else eps
    if large:
        return grid_dbscan(features, radius, min_samples, tree)
    return DBSCAN(eps=radius, min_samples=min_samples).fit_predict(features).astype(np.int64)
