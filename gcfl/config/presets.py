"""Run-config presets: the seed notebook's rules, for reproducing its result."""

from __future__ import annotations

from typing import Any

# The seed notebook's algorithm (bugs fixed): what ``rules = "notebook"`` sets,
# whatever the same keys say, so that its results stay reproducible.
NOTEBOOK_RULES: dict[str, Any] = {
    "fitness": "loss",
    "migration": 0.0,
    "crossover": "pick",
    "mutation": "linear",
    "mutation-scale": 0.1,
    "resample": 0.0,
    "dbscan-eps": 0.15,
    "rollback": False,
    "refresh-stale": 0.0,
    "aggregate-floor": 0.0,
    "aggregate-clip": 0.0,
    "aggregate-share": 1.0,
    "batch-step": 0.0,
}
