"""``gcfl compare``: genetic clustered FL against FedAvg, tuned FedAvg and centralised training.

- :mod:`gcfl.compare.plan`: what runs (strategies, fedavg-tuned's lr grid, seeds, configs);
- :mod:`gcfl.compare.runner`: running the jobs and writing the report;
- :mod:`gcfl.compare.view`: the terminal display (progress, then the tables);
- :mod:`gcfl.compare.centralized`: the centralised baseline.

Nothing here imports :mod:`gcfl.cli`; the CLI imports this package.
"""

from gcfl.compare.plan import STRATEGIES, ComparePlan, parse_lr_grid, parse_strategies

__all__ = ["STRATEGIES", "ComparePlan", "parse_lr_grid", "parse_strategies"]
