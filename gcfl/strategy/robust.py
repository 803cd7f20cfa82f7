"""The robust aggregates of a round (``aggregate``): the rule, and what it left out, on record."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gcfl.config import GcflConfig
from gcfl.strategy.aggregation import (
    agreeing,
    agreement,
    clip_factors,
    krum_selection,
    move_norm,
    robust_average,
    shortened,
    weighted_average,
)
from gcfl.strategy.record import ClientRecord

Weights = list[np.ndarray]
# aggregate=guarded: the kept updates are shortened to this many times their median move.
GUARD_CLIP = 2.0


def robust_aggregate(
    rule: str,
    config: GcflConfig,
    client_ids: Sequence[int],
    updates: Sequence[tuple[Weights, int]],
    global_weights: Weights,
    clients: dict[int, ClientRecord],
) -> tuple[Weights, int]:
    """The round's aggregate by ``rule`` (the policy's, with ``config``'s parameters) and how
    many updates it averaged.

    Each client's record gets what the rule saw of it (``agreement``,
    ``outlier_share``) and whether it was ``left_out``.
    """
    if rule in ("mean", "drop-harmful") or len(updates) < 3:
        return weighted_average(updates), len(updates)
    if rule == "guarded":
        cosines = agreement([w for w, _ in updates], global_weights)
        kept = agreeing(cosines, config.aggregate_agreement)
        for position, cid in enumerate(client_ids):
            clients[cid].agreement = round(cosines[position], 4)
            clients[cid].left_out = position not in kept
        kept_updates = [updates[i] for i in kept]
        factors = clip_factors([move_norm(w, global_weights) for w, _ in kept_updates], GUARD_CLIP)
        shortened_updates = [
            (shortened(w, global_weights, f), n)
            for (w, n), f in zip(kept_updates, factors, strict=True)
        ]
        return weighted_average(shortened_updates), len(kept)
    if rule == "krum":
        keep = len(updates) - config.aggregate_byzantine
        kept = krum_selection([w for w, _ in updates], config.aggregate_byzantine, keep)
        for position, cid in enumerate(client_ids):
            clients[cid].left_out = position not in kept
        return weighted_average([updates[i] for i in kept]), len(kept)
    merged, shares = robust_average([w for w, _ in updates], rule, config.aggregate_trim)
    for cid, share in zip(client_ids, shares, strict=True):
        clients[cid].outlier_share = round(share, 4)
    return merged, len(updates)
