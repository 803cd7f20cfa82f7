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


def move_norm(update: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """``||update - reference||`` over every array, in float64."""
    return math.sqrt(
        sum(_squared_norm(new, old) for new, old in zip(update, reference, strict=True))
    )


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

    def key(i: int) -> tuple[bool, float, int]:
        score = scores[i]
        if score is None or not np.isfinite(score):
            return True, 0.0, i
        return False, score, i

    return sorted(range(len(scores)), key=key)


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


def _stacked(updates: Sequence[Sequence[np.ndarray]], index: int) -> np.ndarray:
    return np.stack([np.asarray(update[index], dtype=np.float64) for update in updates])


def trim_count(count: int, trim: float) -> int:
    """How many values a trimmed mean drops at each end: ``int(trim * count)``, as Flower's."""
    return int(trim * count)


def robust_average(
    updates: Sequence[Sequence[np.ndarray]], rule: str, trim: float = 0.0
) -> tuple[Weights, list[float]]:
    """The coordinate-wise ``"median"`` or ``"trimmed-mean"`` of ``updates``, and per update
    the share of its coordinates that the rule left out.

    Unweighted by examples, as Flower's ``aggregate_median`` and
    ``aggregate_trimmed_avg`` (whose results these equal): a weight would let
    one client claim a larger say. The trimmed mean drops
    :func:`trim_count` values at each end of every coordinate; the median of
    an even count averages the middle two. A share near 1 marks an update
    that is an outlier almost everywhere (a sign flip, noise).
    """
    count = len(updates)
    if count == 0:
        raise ValueError("no updates to average")
    if rule == "median":
        cut = (count - 1) // 2
    elif rule == "trimmed-mean":
        if not 0.0 <= trim < 0.5:
            raise ValueError(f"trim must be in [0, 0.5), got {trim}")
        cut = trim_count(count, trim)
    else:
        raise ValueError(f"unknown robust rule {rule!r}")
    result: Weights = []
    dropped = np.zeros(count, dtype=np.int64)
    total = 0
    for index, reference in enumerate(updates[0]):
        values = _stacked(updates, index).reshape(count, -1)
        if cut:
            ranks = np.argsort(np.argsort(values, axis=0, kind="stable"), axis=0, kind="stable")
            outside = (ranks < cut) | (ranks >= count - cut)
            dropped += outside.sum(axis=1)
        total += values.shape[1]
        if rule == "median":
            merged = np.median(values, axis=0)
        else:
            ordered = np.sort(values, axis=0)
            merged = ordered[cut : count - cut].mean(axis=0)
        result.append(merged.reshape(np.shape(reference)).astype(np.asarray(reference).dtype))
    shares = (dropped / total).tolist() if total else [0.0] * count
    return result, [float(s) for s in shares]


def krum_selection(updates: Sequence[Sequence[np.ndarray]], byzantine: int, keep: int) -> list[int]:
    """Multi-Krum: the positions of the ``keep`` updates with the smallest Krum scores.

    An update's score is the sum of its squared distances to its ``n - f - 2``
    nearest others (at least 1), ``f`` = ``byzantine``: as Flower's
    ``aggregate_krum`` ranks them. Returned ascending.
    """
    count = len(updates)
    flat = np.stack(
        [np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in u]) for u in updates]
    )
    squared = np.sum(flat * flat, axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2.0 * flat @ flat.T, 0.0)
    nearest = max(1, count - byzantine - 2)
    scores = [float(np.sort(row)[1 : nearest + 1].sum()) for row in distances]
    order = sorted(range(count), key=lambda i: (scores[i], i))
    return sorted(order[: max(1, min(keep, count))])


def agreement(
    updates: Sequence[Sequence[np.ndarray]], reference: Sequence[np.ndarray]
) -> list[float]:
    """Each update's agreement with the others: per array, the median cosine of its move with
    each other update's move, averaged over the arrays.

    A move is ``update - reference`` (the global model), per array, so that
    every array (a convolution's kernel, the classifier's bias) has one say:
    an update trained towards another task (labels flipped) differs most in
    the few weights of the classifier, which a cosine over all weights would
    drown. The median over the others, not their mean direction, is what
    keeps colluders from vouching for each other: late in training honest
    moves agree only weakly with one another (0.1-0.4), while two nodes
    trained on the same flipped labels agree strongly (0.6), so one
    colluder's move would dominate the mean direction the other is compared
    with; the median of the cosines belongs to the honest as long as they
    are the majority. A sign flip of an honest move then scores below 0,
    random noise near 0, another task's moves near 0, honest moves of one
    task above 0. An array that did not move scores 0.
    """
    count = len(updates)
    totals = np.zeros(count, dtype=np.float64)
    arrays = len(reference)
    if count < 2:
        return totals.tolist()
    for index in range(arrays):
        base = np.asarray(reference[index], np.float64).ravel()
        units = np.stack([np.asarray(u[index], np.float64).ravel() - base for u in updates])
        norms = np.linalg.norm(units, axis=1)
        moved = norms > 0
        units[moved] /= norms[moved, None]
        cosines = units @ units.T
        for position in range(count):
            # Only peers that moved this array have a direction to agree with: a free
            # rider returning the model unchanged must not pull the honest towards 0.
            peers = moved.copy()
            peers[position] = False
            if moved[position] and peers.any():
                totals[position] += float(np.median(cosines[position][peers]))
    return (totals / max(arrays, 1)).tolist()


def agreeing(cosines: Sequence[float], share: float) -> list[int]:
    """Positions of the updates to keep: those that agree with the others about as well as
    the round's typical update does.

    An update is kept when its cosine (:func:`agreement`) is positive and at
    least ``share`` times the round's median cosine: a sign flip (negative)
    and noise (near 0) fall out, and so does an update trained towards
    another task (labels flipped), which agrees a little where honest ones
    agree a lot. Relative, so that on skewed data, where every honest update
    agrees less, the honest still pass. Never fewer than ``n // 2 + 1``: when
    more fall out, the most agreeing are kept, so no minority can make the
    round drop the majority. Returned ascending.
    """
    count = len(cosines)
    threshold = max(0.0, share * float(np.median(cosines))) if count else 0.0
    keep = {i for i, c in enumerate(cosines) if c > 0 and c >= threshold}
    for i in sorted(range(count), key=lambda i: (-cosines[i], i)):
        if len(keep) >= count // 2 + 1:
            break
        keep.add(i)
    return sorted(keep)
