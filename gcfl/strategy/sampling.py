"""Seeded client sampling over partition ids."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gcfl.config import GcflConfig


class FederationSizeError(ValueError):
    """Too few clients for the sampling or the elite; the message names the setting."""


def num_sampled(num_clients: int, fraction: float, min_clients: int) -> int:
    """How many of ``num_clients`` a round samples: Flower's FedAvg rule, capped at all."""
    # The epsilon keeps 0.3 * 10 = 3.0000000000000004 from becoming 3 only by luck.
    return min(num_clients, max(int(num_clients * fraction + 1e-9), min_clients))


def sample_clients(client_ids: Sequence[int], count: int, rng: np.random.Generator) -> list[int]:
    """``count`` distinct ids drawn uniformly from ``client_ids``, returned ascending.

    Ids are sorted first, so the draw depends only on the set of ids and the
    Generator's state, not on the order in which clients connected.
    """
    ordered = sorted(client_ids)
    if count >= len(ordered):
        # Draw anyway: the Generator then advances the same way every round.
        rng.permutation(len(ordered))
        return ordered
    chosen = rng.choice(len(ordered), size=count, replace=False)
    return sorted(ordered[int(i)] for i in chosen)


def check_federation_size(config: GcflConfig, num_clients: int) -> None:
    """Fail at start, naming the setting, when sampling or the elite cannot work."""
    if config.min_fit_clients > num_clients:
        raise FederationSizeError(
            f"min-fit-clients={config.min_fit_clients} but only {num_clients} SuperNodes exist; "
            "start more SuperNodes (num-supernodes) or lower min-fit-clients"
        )
    per_round = num_sampled(num_clients, config.fraction_fit, config.min_fit_clients)
    if config.strategy == "gcfl" and per_round <= config.elite:
        raise FederationSizeError(
            f"each round samples {per_round} of {num_clients} clients and elite={config.elite} "
            "keeps them all, so no hyperparameter would ever evolve; start more SuperNodes "
            "(num-supernodes), raise fraction-fit or lower elite"
        )
