"""What ``gcfl compare`` runs: the strategies, FedAvg's lr grid, the seeds, each run's config.

Everything here is checked before anything starts, and nothing here trains.
``fedavg-tuned`` is not one run but one FedAvg run per lr of a grid; each grid
point is a strategy of its own, named ``fedavg@<lr>`` (``fedavg@0.001``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gcfl.config import parse_run_config

STRATEGIES = ("gcfl", "fedavg", "fedavg-tuned", "centralized")
DEFAULT_STRATEGIES = ",".join(STRATEGIES)
TUNED = "fedavg-tuned"
GRID_PREFIX = "fedavg@"
DEFAULT_GRID_POINTS = 5


def grid_name(lr: float) -> str:
    """The strategy name of FedAvg at one lr of the grid: ``fedavg@0.001``, ``fedavg@1e-05``."""
    return f"{GRID_PREFIX}{lr:g}"


def default_lr_grid(
    lr_min: float, lr_max: float, points: int = DEFAULT_GRID_POINTS
) -> tuple[float, ...]:
    """``points`` lrs log-spaced over [lr_min, lr_max], ends included, 3 significant digits."""
    if points == 1:
        return (float(f"{lr_max:.3g}"),)
    low, high = math.log10(lr_min), math.log10(lr_max)
    values = (10 ** (low + (high - low) * i / (points - 1)) for i in range(points))
    return tuple(dict.fromkeys(float(f"{value:.3g}") for value in values))


FINE_GRID = "fine"
FINE_MANTISSAS = (1, 2, 3, 5)


def fine_lr_grid(lr_min: float, lr_max: float) -> tuple[float, ...]:
    """1, 2, 3 and 5 times each power of ten inside [lr_min, lr_max], ascending.

    The grid a careful user would search: 17 points over the default 1e-5..1e-1.
    """
    low, high = math.floor(math.log10(lr_min)), math.ceil(math.log10(lr_max))
    values = (float(f"{m}e{e}") for e in range(low, high + 1) for m in FINE_MANTISSAS)
    return tuple(v for v in values if lr_min * (1 - 1e-9) <= v <= lr_max * (1 + 1e-9))


def parse_lr_grid(text: str) -> tuple[float, ...]:
    """``"1e-3,0.01"`` -> (0.001, 0.01), ascending; refuses non-numbers, <= 0, inf, repeats.

    ``"fine"`` is resolved against the search space by :meth:`ComparePlan.lr_grid`.
    """
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"--fedavg-lr-grid: {text!r} holds no learning rate; give e.g. 1e-3,1e-2")
    values: dict[str, float] = {}
    for item in items:
        try:
            lr = float(item)
        except ValueError:
            raise ValueError(f"--fedavg-lr-grid: {item!r} is not a number") from None
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"--fedavg-lr-grid: {item!r} is not a positive finite number")
        name = grid_name(lr)
        if name in values:
            raise ValueError(f"--fedavg-lr-grid: {item!r} repeats {name} (given twice)")
        values[name] = lr
    return tuple(sorted(values.values()))


ENGINES = ("inprocess", "simulation")


def parse_strategies(text: str) -> tuple[str, ...]:
    """``"gcfl,fedavg"`` -> ("gcfl", "fedavg"), refusing unknown or repeated names."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in STRATEGIES]
    if unknown or not names:
        raise ValueError(
            f"--strategies: unknown {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(STRATEGIES)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"--strategies: {text!r} names a strategy twice")
    return names


@dataclass(frozen=True)
class ComparePlan:
    """What ``gcfl compare`` will run, fully checked before anything starts."""

    run_config: dict[str, Any]  # shared run-config overrides (no strategy, seed, out-dir)
    strategies: tuple[str, ...]
    num_clients: int
    repeats: int
    out_dir: Path
    centralized_data: str = "whole"
    fedavg_lr_grid: tuple[float, ...] = ()  # empty: the default grid over [lr-min, lr-max]
    fine_grid: bool = False  # fedavg-tuned over fine_lr_grid(lr-min, lr-max)
    engine: str = "inprocess"  # or "simulation": each federation through ``flwr run``
    workers: int = 1  # in-process runs at once, each in a fresh process

    def seeds(self) -> list[int]:
        base = parse_run_config(self.run_config).seed
        return [base + repeat for repeat in range(self.repeats)]

    def lr_grid(self) -> tuple[float, ...]:
        """fedavg-tuned's lrs, ascending: the given grid, else 5 log-spaced in [lr-min, lr-max]."""
        if self.fedavg_lr_grid:
            return tuple(sorted(self.fedavg_lr_grid))
        config = parse_run_config(self.run_config)
        if self.fine_grid:
            return fine_lr_grid(config.lr_min, config.lr_max)
        return default_lr_grid(config.lr_min, config.lr_max)

    def grid_runs(self) -> dict[str, float]:
        """Name -> lr of every fedavg-tuned grid point (empty without fedavg-tuned)."""
        if TUNED not in self.strategies:
            return {}
        return {grid_name(lr): lr for lr in self.lr_grid()}

    def run_names(self) -> list[str]:
        """The strategies as they are run and reported: fedavg-tuned becomes its grid points."""
        names: list[str] = []
        for strategy in self.strategies:
            names.extend(self.grid_runs() if strategy == TUNED else [strategy])
        return names

    def config_for(self, name: str, repeat: int) -> dict[str, Any]:
        """The run config of one run name and repeat (its own out-dir and seed)."""
        seed = self.seeds()[repeat]
        config = {
            **self.run_config,
            "strategy": "gcfl" if name == "centralized" else name,
            "seed": seed,
            "out-dir": str(self.out_dir / "runs" / f"{name}-seed{seed}"),
        }
        grid = self.grid_runs()
        if name in grid:
            config["strategy"] = "fedavg"
            config["fedavg-lr"] = grid[name]
        return config

    def jobs(self) -> list[tuple[str, int]]:
        return [(name, r) for r in range(self.repeats) for name in self.run_names()]
