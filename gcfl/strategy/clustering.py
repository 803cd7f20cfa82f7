"""Group clients by their hyperparameters with DBSCAN."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.cluster import DBSCAN

NOISE = -1


def cluster_labels(features: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN labels for each row of ``features``; ``NOISE`` (-1) for outliers."""
    if len(features) == 0:
        return np.empty(0, dtype=np.int64)
    return DBSCAN(eps=eps, min_samples=min_samples).fit_predict(features).astype(np.int64)


def groups(client_ids: Sequence[int], labels: Sequence[int]) -> dict[int, list[int]]:
    """Map each label to its client ids (ascending).

    DBSCAN's noise points form one group of their own under ``NOISE``, as in
    the seed notebook: outliers evolve among themselves rather than not at all.
    """
    grouped: dict[int, list[int]] = {}
    for client_id, label in sorted(zip(client_ids, labels, strict=True)):
        grouped.setdefault(int(label), []).append(int(client_id))
    return dict(sorted(grouped.items()))
