"""The run configuration's vocabulary and checks: rule names, per-key range checks, lists."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gcfl.names import BUILTIN_DATASETS

if TYPE_CHECKING:
    from gcfl.config.schema import GcflConfig


class ConfigError(ValueError):
    """A run-config value is missing, of the wrong type or out of range."""


def key_spec(name: str, help_text: str, check: Callable[[Any], str | None] | None = None) -> Any:
    """Metadata for a config field: its kebab-case run-config key and a range check."""
    return {"key": name, "help": help_text, "check": check}


def positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def at_least_one(value: int) -> str | None:
    return None if value >= 1 else "must be >= 1"


def one_of(choices: tuple[str, ...]) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def absolute_or_empty(value: str) -> str | None:
    if value == "" or Path(value).expanduser().is_absolute():
        return None
    return (
        "must be an absolute path (the ServerApp runs in the SuperLink's working "
        "directory, not yours)"
    )


def dataset_name(value: str) -> str | None:
    if value in BUILTIN_DATASETS:
        return None
    if value.endswith(".npz"):
        return absolute_or_empty(value)
    return f"must be one of {', '.join(BUILTIN_DATASETS)} or an absolute path to a .npz file"


def fraction_open_closed(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


def fraction_closed(value: float) -> str | None:
    return None if 0 <= value <= 1 else "must be in [0, 1]"


def fraction_closed_open(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


# The values of refresh-stale, aggregate-floor, batch-step (-1) and crossover ("auto") that
# let gcfl choose by the federation: (when rounds sample a fraction of the clients, when
# every client trains). BENCHMARKS.md section 0: under sampling these rules win on average
# over the four settings measured; with every client training the floor, the batch step
# and blending each cost accuracy (the floor drops useful small updates), and no client
# is stale.
AUTO = -1.0
AUTO_RULE = "auto"


BY_PARTICIPATION: dict[str, tuple[float | str, float | str]] = {
    "refresh_stale": (0.5, 0.0),
    "aggregate_floor": (0.1, 0.0),
    "batch_step": (0.2, 0.0),
    "crossover": ("blend", "pick"),
}


def auto_or(check: Callable[[float], str | None]) -> Callable[[float], str | None]:
    def auto_or_check(value: float) -> str | None:
        if value == AUTO:
            return None
        problem = check(value)
        return None if problem is None else f"{problem} (or -1: auto)"

    return auto_or_check


def fraction_half(value: float) -> str | None:
    return None if 0 <= value <= 0.5 else "must be in [0, 0.5]"


def validation_share(value: float) -> str | None:
    return None if 0 < value < 1 else "must be in (0, 1)"


def model_spec(value: str) -> str | None:
    if value == "" or (":" in value and all(value.split(":", 1))):
        return None
    return "must be empty (the seed CNN) or 'package.module:function'"


def parse_float_list(text: str) -> tuple[float, ...]:
    """Parse a comma-separated list of floats such as ``"1e-1,1e-2"``."""
    return tuple(float(item) for item in text.split(",") if item.strip())


def parse_int_list(text: str) -> tuple[int, ...]:
    """Parse a comma-separated list of integers such as ``"16,32"``."""
    return tuple(int(item) for item in text.split(",") if item.strip())


def lr_list(value: str) -> str | None:
    try:
        values = parse_float_list(value)
    except ValueError:
        return "must be a comma-separated list of numbers"
    if len(values) < 3 or any(not (v > 0 and math.isfinite(v)) for v in values):
        return "must list at least 3 positive learning rates"
    return None


def batch_list(value: str) -> str | None:
    try:
        values = parse_int_list(value)
    except ValueError:
        return "must be a comma-separated list of integers"
    if len(values) < 2 or any(v < 1 for v in values):
        return "must list at least 2 positive batch sizes"
    return None


def resolve_and_check(config: GcflConfig) -> None:
    """Resolve the keys left to gcfl (``-1``/``auto``) and check what spans keys.

    Called once, when a :class:`~gcfl.config.schema.GcflConfig` is made; it is
    frozen, so a resolved value is set on it here and is what runs and what
    results.json records.
    """
    for name, (sampled, every_client) in BY_PARTICIPATION.items():
        if getattr(config, name) in (AUTO, AUTO_RULE):
            # Frozen: the resolved value is what runs and what results.json records.
            value = sampled if config.fraction_fit < 1 else every_client
            object.__setattr__(config, name, value)
    if config.aggregate == "drop-harmful" and config.fitness != "federated":
        raise ConfigError(
            "aggregate: drop-harmful needs the federated evaluation (fitness=federated)"
        )
    if not config.lr_min < config.lr_max:
        raise ConfigError(f"lr-min ({config.lr_min}) must be smaller than lr-max ({config.lr_max})")
    if not config.batch_min <= config.batch_max:
        raise ConfigError(
            f"batch-min ({config.batch_min}) must not exceed batch-max ({config.batch_max})"
        )
    if config.init == "search":
        # The server sends only the grid points inside the search space: a search
        # must never train at a pair the space rules out.
        if len(config.search_lrs) < 3:
            raise ConfigError(
                f"lr-grid: init=search needs at least 3 values inside [lr-min, lr-max] = "
                f"[{config.lr_min:g}, {config.lr_max:g}], got {list(config.search_lrs)}"
            )
        if len(config.search_batch_sizes) < 2:
            raise ConfigError(
                f"batch-grid: init=search needs at least 2 values inside [batch-min, "
                f"batch-max] = [{config.batch_min}, {config.batch_max}], got "
                f"{list(config.search_batch_sizes)}"
            )
