"""The genetic clustered strategy.

The algorithm lives in pure modules (numpy and scikit-learn only, every random
draw from an explicit ``numpy.random.Generator``):

- :mod:`gcfl.strategy.features`: hyperparameters as scaled features;
- :mod:`gcfl.strategy.clustering`: DBSCAN grouping, noise as one more group;
- :mod:`gcfl.strategy.genetic`: ranking, elitism, crossover, mutation;
- :mod:`gcfl.strategy.population`: every client's state and one evolution step;
- :mod:`gcfl.strategy.sampling` and :mod:`gcfl.strategy.aggregation`.

:mod:`gcfl.strategy.flower_strategy` adapts it to Flower; it is the only module
here that imports Flower, so importing this package imports neither Flower nor
TensorFlow.
"""
