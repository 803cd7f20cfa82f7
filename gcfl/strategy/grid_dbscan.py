"""Exact DBSCAN for 2-D points on a grid, in O(n) memory.

scikit-learn's DBSCAN first lists every point's neighbours. With a fixed eps on
the unit square that is a fixed fraction of all points per point: 100,000
clients at eps 0.15 make about 7x10^8 neighbour indices (9 GB). This module
gives the same clusters without listing neighbours:

- points fall into square cells of side ``eps / 2``; two points of one cell are
  at most ``eps / sqrt(2)`` apart, so they are neighbours with a margin that no
  float rounding can eat;
- every point of a cell holding at least ``min_samples`` points is a core point;
  a point of any other cell is core when its ``min_samples``-th nearest point
  (itself first, found on a KD-tree) is within eps, the distance recomputed
  with the same arithmetic as scikit-learn's KD-tree;
- the core points of one cell form one cluster; two cells' clusters join when
  some pair of their core points is within eps. Small cell pairs are checked in
  vectorised batches, large ones with a nearest-neighbour query, skipped when
  the two cells are already joined;
- a border point joins the cluster of its nearest core point within eps.

Memory stays O(n): every candidate pair is made and tested in bounded batches.

The labels equal scikit-learn's on core points (clusters numbered, as there,
in the order of their lowest-index core point) and noise; a border point gets
a cluster one of its core neighbours belongs to, where scikit-learn takes the
first such cluster in its own visiting order.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.neighbors import KDTree

NOISE = -1
# Cell pairs with at most this many point pairs are checked in vectorised batches.
_SMALL_PAIR = 256
# Candidate pairs per vectorised batch: bounds the memory of the batch arrays.
_BATCH_PAIRS = 1 << 20
# Cells at most this many cells apart along each axis can hold neighbours. With
# cells of side eps/2, neighbours are at most 2 cells apart; one more on each
# side covers a point that float rounding put into the next cell (points lying
# on cell edges, as on a lattice).
_REACH = 3
_OFFSETS = np.array(
    [(dx, dy) for dx in range(-_REACH, _REACH + 1) for dy in range(-_REACH, _REACH + 1)],
    dtype=np.int64,
)
# Each cell pair once: the offsets after (0, 0).
_FORWARD_OFFSETS = np.array([o for o in _OFFSETS.tolist() if tuple(o) > (0, 0)], dtype=np.int64)


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # The same operations, in the same order, as scikit-learn's KD-tree "rdist".
    d0 = a[:, 0] - b[:, 0]
    d1 = a[:, 1] - b[:, 1]
    return d0 * d0 + d1 * d1


def _segments(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For segments of the given lengths laid end to end: each slot's segment and place in it."""
    owner = np.repeat(np.arange(len(lengths)), lengths)
    place = np.arange(len(owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return owner, place


def _batches(lengths: np.ndarray) -> list[slice]:
    """Consecutive slices of ``lengths`` whose sums stay near ``_BATCH_PAIRS``."""
    ends = np.cumsum(lengths)
    slices = []
    first = 0
    while first < len(lengths):
        done = ends[first] - lengths[first]
        last = max(int(np.searchsorted(ends, done + _BATCH_PAIRS, "right")), first + 1)
        slices.append(slice(first, last))
        first = last
    return slices


class _Cells:
    """Points sorted into square cells of side eps/2, addressed by an integer key."""

    def __init__(self, keys: np.ndarray, members: np.ndarray) -> None:
        order = members[np.argsort(keys[members], kind="stable")]
        self.points_in_order = order
        self.keys, self.start, self.sizes = np.unique(
            keys[order], return_index=True, return_counts=True
        )

    def find(self, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each wanted key: whether that cell exists, and its index where it does."""
        if len(self.keys) == 0:
            return np.zeros(len(wanted), dtype=bool), np.zeros(len(wanted), dtype=np.int64)
        found = np.minimum(np.searchsorted(self.keys, wanted), len(self.keys) - 1)
        return self.keys[found] == wanted, found


def _close_pairs(
    points: np.ndarray, keys: np.ndarray, queries: np.ndarray, cells: _Cells, width: int, eps: float
):
    """Yield (query, neighbour) point-index arrays of every pair within eps, in batches.

    The neighbours are the points held by ``cells``; a query point is its own
    neighbour when it is one of them.
    """
    limit = eps * eps
    for dx, dy in _OFFSETS:
        present, found = cells.find(keys[queries] + dx * width + dy)
        query = queries[present]
        cell = found[present]
        lengths = cells.sizes[cell]
        for part in _batches(lengths):
            owner, place = _segments(lengths[part])
            left = query[part][owner]
            right = cells.points_in_order[cells.start[cell[part]][owner] + place]
            close = _squared_distances(points[left], points[right]) <= limit
            yield left[close], right[close]


def _kth_squared_distance(
    points: np.ndarray, queries: np.ndarray, nearest: np.ndarray
) -> np.ndarray:
    """Each query's squared distance to the farthest of its ``nearest`` points.

    Recomputed with scikit-learn's arithmetic rather than squaring the tree's
    rounded square roots, so that a point exactly eps away counts as it does there.
    """
    squared = np.stack(
        [
            _squared_distances(points[queries], points[nearest[:, j]])
            for j in range(nearest.shape[1])
        ],
        axis=1,
    )
    return squared.max(axis=1)


class _UnionFind:
    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


def grid_dbscan(
    points: np.ndarray, eps: float, min_samples: int, tree: KDTree | None = None
) -> np.ndarray:
    """DBSCAN labels of the rows of an ``(n, 2)`` array; ``NOISE`` (-1) for noise.

    Euclidean distance; a point is core when at least ``min_samples`` points
    (itself included) lie within ``eps`` of it, as in
    ``sklearn.cluster.DBSCAN(eps, min_samples=min_samples)``. ``tree``, a
    KD-tree of ``points`` the caller already has, saves building one.
    """
    points = np.ascontiguousarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"grid_dbscan needs an (n, 2) array of points, got shape {points.shape}")
    if not (eps > 0 and np.isfinite(eps)):
        raise ValueError(f"grid_dbscan needs a finite eps > 0, got {eps}")
    if min_samples < 1:
        raise ValueError(f"grid_dbscan needs min_samples >= 1, got {min_samples}")
    count = len(points)
    labels = np.full(count, NOISE, dtype=np.int64)
    if count == 0:
        return labels
    if not np.isfinite(points).all():
        raise ValueError("grid_dbscan needs finite points")

    cell_xy = np.floor((points - points.min(axis=0)) / (eps / 2.0)).astype(np.int64)
    width = int(cell_xy[:, 1].max()) + 2 * _REACH + 2  # offsets never wrap into the next column
    keys = (cell_xy[:, 0] + _REACH + 1) * width + (cell_xy[:, 1] + _REACH + 1)
    everyone = _Cells(keys, np.arange(count))

    # Core points: every point of a full cell; for the others, whether their
    # min_samples-th nearest point (themselves first) is within eps.
    _, cell = everyone.find(keys)
    core = everyone.sizes[cell] >= min_samples
    unsure = np.flatnonzero(~core)
    if len(unsure) and count >= min_samples:
        tree = tree if tree is not None else KDTree(points)
        nearest = tree.query(points[unsure], k=min_samples, return_distance=False)
        core[unsure] = _kth_squared_distance(points, unsure, nearest) <= eps * eps
    core_points = np.flatnonzero(core)
    if len(core_points) == 0:
        return labels

    core_cells = _Cells(keys, core_points)
    cluster_of_core = _core_clusters(points, core_points, core_cells, width, eps)
    # Number clusters by their lowest-index core point, as scikit-learn does.
    first_seen = np.sort(np.unique(cluster_of_core, return_index=True)[1])
    renumber = np.empty(int(cluster_of_core.max()) + 1, dtype=np.int64)
    renumber[cluster_of_core[first_seen]] = np.arange(len(first_seen))
    labels[core_points] = renumber[cluster_of_core]

    # Border points: the cluster of the nearest core point within eps.
    others = np.flatnonzero(~core)
    if len(others):
        nearest = np.full(count, -1, dtype=np.int64)
        best = np.full(count, np.inf)
        for query, neighbour in _close_pairs(points, keys, others, core_cells, width, eps):
            distance = _squared_distances(points[query], points[neighbour])
            # Closest first, then keep each query's first pair.
            order = np.lexsort((neighbour, distance, query))
            query, neighbour, distance = query[order], neighbour[order], distance[order]
            first = np.ones(len(query), dtype=bool)
            first[1:] = query[1:] != query[:-1]
            query, neighbour, distance = query[first], neighbour[first], distance[first]
            better = distance < best[query]
            best[query[better]] = distance[better]
            nearest[query[better]] = neighbour[better]
        border = others[nearest[others] >= 0]
        labels[border] = labels[nearest[border]]
    return labels


def _core_clusters(
    points: np.ndarray, core_points: np.ndarray, cells: _Cells, width: int, eps: float
) -> np.ndarray:
    """A cluster id for each core point (ids are arbitrary; equal id, same cluster).

    The core points of one cell are one cluster; two cells join when some pair
    of their core points is within eps: cheap pairs of cells are tested in
    vectorised batches, the costly ones (both cells crowded) one by one, and
    only while the two cells are not already joined through others. ``cells``
    holds exactly the core points.
    """
    sorted_points = points[cells.points_in_order]
    count = len(cells.keys)
    cheap_a, cheap_b, costly_a, costly_b = [], [], [], []
    for dx, dy in _FORWARD_OFFSETS:
        present, found = cells.find(cells.keys + dx * width + dy)
        cell_a = np.flatnonzero(present)
        cell_b = found[present]
        cheap = cells.sizes[cell_a] * cells.sizes[cell_b] <= _SMALL_PAIR
        cheap_a.append(cell_a[cheap])
        cheap_b.append(cell_b[cheap])
        costly_a.append(cell_a[~cheap])
        costly_b.append(cell_b[~cheap])
    edge_a, edge_b = _touching_cheap_pairs(
        sorted_points, cells, np.concatenate(cheap_a), np.concatenate(cheap_b), eps
    )
    graph = coo_matrix((np.ones(len(edge_a), dtype=np.int8), (edge_a, edge_b)), (count, count))
    components, component = connected_components(graph, directed=False)
    costly = list(
        zip(np.concatenate(costly_a).tolist(), np.concatenate(costly_b).tolist(), strict=True)
    )
    if costly:
        joined = _UnionFind(components)
        for cell_a, cell_b in costly:
            group_a, group_b = int(component[cell_a]), int(component[cell_b])
            if joined.find(group_a) != joined.find(group_b) and _cells_touch(
                sorted_points, cells, cell_a, cell_b, eps
            ):
                joined.union(group_a, group_b)
        component = np.array([joined.find(c) for c in range(components)])[component]
    cluster_of_sorted = np.repeat(component, cells.sizes)
    cluster = np.empty(len(points), dtype=np.int64)
    cluster[cells.points_in_order] = cluster_of_sorted
    return cluster[core_points]


def _touching_cheap_pairs(
    sorted_points: np.ndarray, cells: _Cells, cell_a: np.ndarray, cell_b: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """The cell pairs among (cell_a, cell_b) with some pair of their points within eps."""
    limit = eps * eps
    work = cells.sizes[cell_a] * cells.sizes[cell_b]
    touching_a, touching_b = [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=np.int64)]
    for part in _batches(work):
        a, b = cell_a[part], cell_b[part]
        pair, place = _segments(work[part])
        size_b = cells.sizes[b][pair]
        index_a = cells.start[a][pair] + place // size_b
        index_b = cells.start[b][pair] + place % size_b
        close = _squared_distances(sorted_points[index_a], sorted_points[index_b]) <= limit
        hit = np.unique(pair[close])
        touching_a.append(a[hit])
        touching_b.append(b[hit])
    return np.concatenate(touching_a), np.concatenate(touching_b)


def _cells_touch(
    sorted_points: np.ndarray, cells: _Cells, cell_a: int, cell_b: int, eps: float
) -> bool:
    """Whether some point of cell_a is within eps of some point of cell_b."""
    points_a = sorted_points[cells.start[cell_a] : cells.start[cell_a] + cells.sizes[cell_a]]
    points_b = sorted_points[cells.start[cell_b] : cells.start[cell_b] + cells.sizes[cell_b]]
    if len(points_a) > len(points_b):
        points_a, points_b = points_b, points_a
    nearest = KDTree(points_b).query(points_a, k=1, return_distance=False)[:, 0]
    return bool((_squared_distances(points_a, points_b[nearest]) <= eps * eps).any())
