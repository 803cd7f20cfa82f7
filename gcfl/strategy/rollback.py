"""Whether the last aggregate made the global model worse, judged by the clients' own data.

Each sampled client evaluates the global model it receives on its own
validation split before it trains. The server compares the round's mean of
those losses with the mean the previous global model got when it was sent
out: if the new model is worse by more than a tolerance, the last aggregate
is discarded. The test set is never consulted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def mean_finite(values: Iterable[float | None]) -> float | None:
    """The mean of the finite values, or None when there are none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def median_finite(values: Iterable[float | None]) -> float | None:
    """The median of the finite values, or None when there are none.

    What a robust aggregate judges the rollback by: a minority of clients
    that report honestly on data the model is not meant to fit (labels
    flipped) cannot make a better model look worse.
    """
    finite = sorted(float(v) for v in values if v is not None and math.isfinite(v))
    if not finite:
        return None
    middle = len(finite) // 2
    return finite[middle] if len(finite) % 2 else (finite[middle - 1] + finite[middle]) / 2


def rollback_needed(reference: float | None, current: float | None, tolerance: float) -> bool:
    """True when ``current`` (the new model's mean loss) exceeds ``reference`` by > tolerance.

    ``tolerance`` is relative: 0.1 lets the loss rise 10% before rolling back,
    so the noise of comparing two samples of clients does not throw away good
    rounds. A non-finite or missing current loss against a known reference
    means the model broke: roll back. Without a reference there is nothing to
    compare against.
    """
    if reference is None:
        return False
    if current is None:
        return True
    return current > reference * (1.0 + tolerance)
