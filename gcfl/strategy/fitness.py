"""How good a client's fit was, as one number comparable across the round's clients.

Lower is better throughout (a "score"), so that every rule ranks the same way.
"""

from __future__ import annotations

import math

from gcfl.names import FITNESS_RULES


def relative_change(before: float | None, after: float | None) -> float | None:
    """``after / before - 1``; None unless both are finite and ``before`` is positive."""
    if before is None or after is None or not (math.isfinite(before) and math.isfinite(after)):
        return None
    return float(after / before - 1.0) if before > 0 else None


def fitness_score(
    rule: str,
    val_before: float | None,
    val_after: float | None,
    local_before: float | None = None,
    local_after: float | None = None,
) -> float | None:
    """The score of one fit; None when the fit gives nothing to rank on.

    ``"loss"`` (the notebook's rule) is the validation loss after training.
    Clients hold different data, so a client with easy data has a low loss
    whatever its learning rate: raw losses rank the data, not the hyperparameters.

    ``"val-improvement"`` is the relative change of the client's validation
    loss over its fit, starting from the global model it received: every
    client starts from the same model, so it measures what the client's lr
    and batch size did, not how easy its data is. -0.4: the fit cut the loss
    by 40%.

    ``"improvement"`` is the same relative change measured on all the
    client's local examples (training and validation splits): five times the
    examples, hence far less noise when the fits barely move the loss.
    """
    if rule == "loss":
        return None if val_after is None or not math.isfinite(val_after) else float(val_after)
    if rule == "val-improvement":
        return relative_change(val_before, val_after)
    if rule in ("improvement", "federated"):
        # "federated" ranks by what other clients measure (gcfl.strategy.candidates);
        # a round without that evaluation, and ties inside a group, fall back to this.
        return relative_change(local_before, local_after)
    raise ValueError(f"fitness rule must be one of {', '.join(FITNESS_RULES)}, got {rule!r}")
