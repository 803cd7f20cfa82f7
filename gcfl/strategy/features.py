"""Hyperparameters as clustering features: lr in log10, batch size in log2, scaled to [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SearchSpace:
    """The ranges over which learning rate and batch size are scaled."""

    lr_min: float
    lr_max: float
    batch_min: int
    batch_max: int


def _scaled(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high == low:
        # A single admissible value carries no information to cluster on.
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def hyperparameter_features(
    lrs: Sequence[float] | np.ndarray, batch_sizes: Sequence[int] | np.ndarray, space: SearchSpace
) -> np.ndarray:
    """Return an ``(n, 2)`` array: scaled log10(lr) and scaled log2(batch size).

    Values outside the search space are clipped to its edge, so a mutated lr
    that drifted past ``lr_max`` clusters with the largest ones.
    """
    lr = np.log10(np.asarray(lrs, dtype=np.float64))
    batch = np.log2(np.asarray(batch_sizes, dtype=np.float64))
    return np.column_stack(
        [
            _scaled(lr, np.log10(space.lr_min), np.log10(space.lr_max)),
            _scaled(batch, np.log2(space.batch_min), np.log2(space.batch_max)),
        ]
    ).reshape(len(lr), 2)


def to_unit(lr: float, batch_size: int, space: SearchSpace) -> tuple[float, float]:
    """One pair as a point of the unit square (the clustering features of that pair)."""
    row = hyperparameter_features([lr], [batch_size], space)[0]
    return float(row[0]), float(row[1])


def from_unit(lr_unit: float, batch_unit: float, space: SearchSpace) -> tuple[float, int]:
    """The inverse of :func:`to_unit`: lr log-uniform, batch size rounded in log2 space."""
    lr, batch = from_units(np.array([lr_unit]), np.array([batch_unit]), space)
    return float(lr[0]), int(batch[0])


def from_units(
    lr_units: np.ndarray, batch_units: np.ndarray, space: SearchSpace
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`from_unit` for arrays of points; batch sizes round half to even, like ``round``."""
    log_lr = np.log10(space.lr_min) + lr_units * (np.log10(space.lr_max) - np.log10(space.lr_min))
    log_batch = np.log2(space.batch_min) + batch_units * (
        np.log2(space.batch_max) - np.log2(space.batch_min)
    )
    lr = np.clip(10.0**log_lr, space.lr_min, space.lr_max)
    batch = np.clip(np.rint(2.0**log_batch), space.batch_min, space.batch_max)
    return lr, batch.astype(np.int64)
