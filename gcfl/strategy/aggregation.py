"""Checking and averaging model updates (numpy only)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Weights = list[np.ndarray]


def _squared_norm(values: np.ndarray, minus: np.ndarray | None = None) -> float:
    """Sum of squares of ``values - minus`` in float64 (inf or NaN if any value is)."""
    flat = values.astype(np.float64).ravel()
    if minus is not None:
        flat -= minus.ravel()
    return float(np.dot(flat, flat))


def check_update(
    update: Sequence[np.ndarray], reference: Sequence[np.ndarray], max_update_norm: float | None
) -> tuple[str | None, float | None]:
    """Why ``update`` must not be aggregated into ``reference`` (None: it is fine), and,
    once its shapes and values have passed, its ratio ||update - reference|| /
    ||reference||: how far one round moves the global model (None when the
    reference is all zeros, which gives no scale)."""
    if len(update) != len(reference):
        return f"{len(update)} arrays, expected {len(reference)}", None
    squared = 0.0
    for index, (new, old) in enumerate(zip(update, reference, strict=True)):
        if new.shape != old.shape:
            return f"array {index} has shape {new.shape}, expected {old.shape}", None
        # One pass per array: the squared distance is finite exactly when every value is
        # (float32 squares cannot overflow float64; a float64 value whose square does is
        # refused as non-finite too), and it is the ratio's numerator.
        part = _squared_norm(new, old)
        if not math.isfinite(part):
            return f"array {index} has non-finite values", None
        squared += part
    scale = math.sqrt(sum(_squared_norm(o) for o in reference))
    ratio = math.sqrt(squared) / scale if scale > 0 else None
    if max_update_norm is not None and ratio is not None and ratio > max_update_norm:
        return f"update norm is {ratio:.3g} x the global model's, above max-update-norm", ratio
    return None, ratio


def update_problem(
    update: Sequence[np.ndarray], reference: Sequence[np.ndarray], max_update_norm: float | None
) -> str | None:
    """Why ``update`` must not be aggregated into ``reference``, or None when it is fine."""
    return check_update(update, reference, max_update_norm)[0]


def best_share(scores: Sequence[float | None], share: float, minimum: int) -> list[int]:
    """Positions of the updates to average: the best ``share`` by score (lower is better).

    Keeps ``ceil(share * n)`` of the ``n`` updates, but never fewer than
    ``minimum`` (nor more than ``n``), so that one client whose fit looked
    best cannot become the global model on its own. Unscored updates rank
    last; ties keep the given order. Returned ascending.
    """
    count = len(scores)
    keep = min(count, max(minimum, int(np.ceil(share * count - 1e-9))))
    return sorted(_ranked(scores)[:keep])


def improved_enough(scores: Sequence[float | None], floor: float, minimum: int) -> list[int]:
    """Positions of the updates whose fit improved the loss by ``floor`` x the round's best.

    ``scores`` are relative changes (-0.3: the loss fell by 30%). A fit at an
    lr far too small barely moves the model, and averaged in it only pulls
    the others back; a fit that improved its loss by a tenth of what the
    round's best did is such a one at ``floor`` 0.1. Unscored updates are
    kept (nothing says they did not help), as are all when no fit improved;
    fewer than ``minimum`` are topped up best first. Returned ascending.
    """
    finite = [s for s in scores if s is not None and np.isfinite(s)]
    best = min(finite, default=0.0)
    if best >= 0:
        return list(range(len(scores)))
    keep = {i for i, s in enumerate(scores) if s is None or not np.isfinite(s) or s <= floor * best}
    for i in _ranked(scores):
        if len(keep) >= minimum:
            break
        keep.add(i)
    return sorted(keep)


def _ranked(scores: Sequence[float | None]) -> list[int]:
    """Positions from the best score to the worst; unscored last, ties in order."""
    return sorted(
        range(len(scores)),
        key=lambda i: (scores[i] is None or not np.isfinite(scores[i]), scores[i] or 0.0, i),
    )


def clip_factors(ratios: Sequence[float | None], clip: float) -> list[float]:
    """Scale factors that shorten every update to at most ``clip`` x the median's length.

    ``ratios`` are the updates' ratios from :func:`check_update` (their distance from the
    global model, all on one scale). In a round whose clients train at lrs
    decades apart, the few at the largest lrs move the model furthest and so
    outweigh all others in the average; on skewed local data their moves are
    also the most local. Shortened to ``clip`` x the median, each update counts
    by its direction. Updates without a ratio keep theirs (factor 1).
    """
    known = [r for r in ratios if r is not None and r > 0]
    if clip <= 0 or not known:
        return [1.0] * len(ratios)
    limit = clip * float(np.median(known))
    return [1.0 if r is None or r <= limit else limit / r for r in ratios]


def shortened(
    update: Sequence[np.ndarray], reference: Sequence[np.ndarray], factor: float
) -> Weights:
    """``reference + factor * (update - reference)``, in each array's dtype (``update`` if 1)."""
    if factor == 1.0:
        return list(update)
    return [
        (old.astype(np.float64) + factor * (new.astype(np.float64) - old)).astype(new.dtype)
        for new, old in zip(update, reference, strict=True)
    ]


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
