"""The genetic clustered strategy.

The algorithm lives in pure modules (numpy and scikit-learn only, every random
draw from an explicit ``numpy.random.Generator``):

- :mod:`gcfl.strategy.features`: hyperparameters as scaled features;
- :mod:`gcfl.strategy.clustering` (and :mod:`gcfl.strategy.grid_dbscan`):
  DBSCAN grouping, noise as one more group;
- :mod:`gcfl.strategy.genetic`: ranking, elitism, crossover, mutation;
- :mod:`gcfl.strategy.fitness`, :mod:`gcfl.strategy.candidates`: how a fit is scored;
- :mod:`gcfl.strategy.population` and :mod:`gcfl.strategy.policy`: every
  client's state and one evolution step (FedAvg's fixed policy beside it);
- :mod:`gcfl.strategy.sampling`, :mod:`gcfl.strategy.aggregation`,
  :mod:`gcfl.strategy.robust`, :mod:`gcfl.strategy.rollback`.

The server's round without Flower is :mod:`gcfl.strategy.coordinator` (with
:mod:`gcfl.strategy.judge`, the edge rules, and :mod:`gcfl.strategy.record`).
Two modules import Flower: :mod:`gcfl.strategy.flower_strategy`, the thin
adapter to Flower's Strategy, and :mod:`gcfl.strategy.discovery`, which asks
the SuperNodes for their partitions; importing this package imports neither
Flower nor TensorFlow.
"""
