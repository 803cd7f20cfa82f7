"""The run configuration: every run-config key, its default, type and valid range.

Flower hands the ServerApp and every ClientApp the run config as a flat dict of
kebab-case keys (``context.run_config``). :func:`parse_run_config` turns it into
one frozen :class:`GcflConfig`, checked once; the ClientApp's worker link
passes the same dict on, and the worker parses it the same way.

The defaults here and in ``pyproject.toml``'s ``[tool.flwr.app.config]`` must
agree: the test suite compares them. The package: ``schema`` (the keys),
``checks`` (rule names and range checks), ``presets`` (the notebook's rules),
``parsing`` (from a dict or a command line).
"""

from gcfl.config.checks import (
    AUTO,
    AUTO_RULE,
    BY_PARTICIPATION,
    ConfigError,
    parse_float_list,
    parse_int_list,
)
from gcfl.config.parsing import (
    CONFIG_CACHE_SIZE,
    config_keys,
    config_of,
    default_run_config,
    parse_assignment,
    parse_run_config,
)
from gcfl.config.presets import NOTEBOOK_RULES
from gcfl.config.schema import GcflConfig
from gcfl.names import (
    AGGREGATE_RULES,
    BUILTIN_DATASETS,
    CANDIDATE_KINDS,
    CROSSOVER_RULES,
    FITNESS_RULES,
    INITS,
    MUTATION_RULES,
    PARTITIONS,
    RULE_PRESETS,
    STRATEGIES,
)

__all__ = [
    "AGGREGATE_RULES",
    "AUTO",
    "AUTO_RULE",
    "BUILTIN_DATASETS",
    "BY_PARTICIPATION",
    "CANDIDATE_KINDS",
    "CONFIG_CACHE_SIZE",
    "CROSSOVER_RULES",
    "FITNESS_RULES",
    "INITS",
    "MUTATION_RULES",
    "NOTEBOOK_RULES",
    "PARTITIONS",
    "RULE_PRESETS",
    "STRATEGIES",
    "ConfigError",
    "GcflConfig",
    "config_keys",
    "config_of",
    "default_run_config",
    "parse_assignment",
    "parse_float_list",
    "parse_int_list",
    "parse_run_config",
]
