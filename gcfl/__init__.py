"""gcfl: genetic clustered federated learning on Flower.

Clients tune their own learning rate and batch size while they train: every
round the server clusters them by their hyperparameters (DBSCAN) and evolves
each cluster with a genetic algorithm, using each client's relative
improvement of its own loss over its fit as its fitness.

Python API::

    from gcfl import simulate
    result = simulate({"num-server-rounds": 3, "out-dir": "/tmp/gcfl-run"}, num_supernodes=10)
    print(result.results["rounds"][-1]["accuracy"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gcfl.names import VERSION

__version__ = VERSION
__all__ = ["__version__", "simulate"]

if TYPE_CHECKING:
    from gcfl.simulation.launcher import SimulationResult


def simulate(run_config: dict[str, Any], num_supernodes: int, **options: Any) -> SimulationResult:
    """Run the gcfl App in Flower's simulation; see :func:`gcfl.simulation.launcher.simulate`."""
    from gcfl.simulation.launcher import simulate as run

    return run(run_config, num_supernodes, **options)
