"""Checking and averaging model updates (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Weights = list[np.ndarray]


def update_problem(
    update: Sequence[np.ndarray], reference: Sequence[np.ndarray], max_update_norm: float | None
) -> str | None:
    """Why ``update`` must not be aggregated into ``reference``, or None when it is fine."""
    if len(update) != len(reference):
        return f"{len(update)} arrays, expected {len(reference)}"
    for index, (new, old) in enumerate(zip(update, reference, strict=True)):
        if new.shape != old.shape:
            return f"array {index} has shape {new.shape}, expected {old.shape}"
        if not np.all(np.isfinite(new)):
            return f"array {index} has non-finite values"
    if max_update_norm is not None:
        delta = np.sqrt(
            sum(float(np.sum((n - o) ** 2)) for n, o in zip(update, reference, strict=True))
        )
        scale = np.sqrt(sum(float(np.sum(o**2)) for o in reference))
        if delta > max_update_norm * max(scale, 1e-12):
            return f"update norm {delta:.3g} exceeds {max_update_norm} x global norm {scale:.3g}"
    return None


def weighted_average(updates: Sequence[tuple[Sequence[np.ndarray], int]]) -> Weights:
    """Average weights by each update's number of examples, in the order given.

    Accumulates in float64, so the result does not depend on float32 rounding
    of partial sums beyond the final cast back to each array's dtype.
    """
    if not updates:
        raise ValueError("no updates to average")
    total = sum(count for _, count in updates)
    if total <= 0:
        raise ValueError("updates carry no examples")
    first = updates[0][0]
    sums = [np.zeros(array.shape, dtype=np.float64) for array in first]
    for weights, count in updates:
        for acc, array in zip(sums, weights, strict=True):
            acc += array.astype(np.float64) * count
    return [(acc / total).astype(ref.dtype) for acc, ref in zip(sums, first, strict=True)]
