"""The run config: defaults agree with pyproject.toml, bad values name their key."""

import tomllib
from pathlib import Path

import numpy as np
import pytest

from gcfl.config import (
    CONFIG_CACHE_SIZE,
    ConfigError,
    config_keys,
    config_of,
    default_run_config,
    parse_assignment,
    parse_run_config,
)
from gcfl.config_table import PAGE, run_config_table, with_table
from gcfl.names import CROSSOVER_RULES, FITNESS_RULES, MUTATION_RULES
from gcfl.strategy import fitness, genetic
from gcfl.strategy.features import SearchSpace
from gcfl.strategy.population import GeneticSettings

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pyproject_declares_every_key_with_the_same_default():
    declared = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    assert declared == default_run_config()


def test_defaults_are_the_seed_setup_with_gcfl_rules():
    config = parse_run_config({})
    assert (config.strategy, config.num_server_rounds, config.fraction_fit) == ("gcfl", 10, 1.0)
    # A search space that contains the good learning rates of the shipped datasets.
    assert (config.lr_min, config.lr_max, config.batch_min, config.batch_max) == (
        1e-5,
        1e-1,
        16,
        128,
    )
    # The demo setting: 5 local epochs, where FedAvg at its best lr learns (BENCHMARKS.md).
    assert config.local_epochs == 5
    # Migration crosses the search space; mutation only refines (the quality benchmark).
    assert (config.rules, config.fitness, config.migration) == ("gcfl", "improvement", 0.5)
    assert (config.mutation, config.mutation_scale, config.resample) == ("linear", 0.1, 0.0)
    assert (config.dbscan_eps, config.dbscan_min_samples, config.elite) == (0.0, 2, 2)
    assert (config.max_update_norm, config.rollback) == (0.5, True)
    assert config.lr_grid_values == (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
    assert config.batch_grid_values == (16, 32, 64, 128)


def test_notebook_preset_restores_the_notebook_rules_whatever_the_rule_keys_say():
    config = parse_run_config({"rules": "notebook", "migration": 0.4, "fitness": "improvement"})
    assert (config.fitness, config.migration, config.mutation, config.mutation_scale) == (
        "loss",
        0.0,
        "linear",
        0.1,
    )
    assert (config.resample, config.dbscan_eps, config.rollback) == (0.0, 0.15, False)
    # The reliability guards are not the notebook's rules: they stay as set.
    assert config.max_update_norm == 0.5
    # The preset survives the round trip through Flower's flat run config.
    assert parse_run_config(config.to_run_config()) == config


def test_partial_participation_rules_are_on_only_when_rounds_sample_a_fraction():
    # Their default, -1, lets gcfl choose: BENCHMARKS.md section 0 measured them better
    # under sampling and worse when every client trains.
    every_client = parse_run_config({})
    assert (every_client.refresh_stale, every_client.aggregate_floor, every_client.batch_step) == (
        0.0,
        0.0,
        0.0,
    )
    assert every_client.crossover == "pick"
    sampled = parse_run_config({"fraction-fit": 0.3})
    assert (sampled.refresh_stale, sampled.aggregate_floor, sampled.batch_step) == (0.5, 0.1, 0.2)
    assert sampled.crossover == "blend"
    # A value the user sets wins over the choice, in either regime.
    chosen = parse_run_config({"fraction-fit": 0.3, "aggregate-floor": 0.0, "batch-step": 0.4})
    assert (chosen.refresh_stale, chosen.aggregate_floor, chosen.batch_step) == (0.5, 0.0, 0.4)
    assert parse_run_config({"refresh-stale": 1.0}).refresh_stale == 1.0
    assert parse_run_config({"crossover": "blend"}).crossover == "blend"
    assert parse_run_config({"fraction-fit": 0.5, "crossover": "pick"}).crossover == "pick"
    # What ran is what the run config records, and it parses back to the same config.
    assert sampled.to_run_config()["aggregate-floor"] == 0.1
    assert parse_run_config(sampled.to_run_config()) == sampled
    # The notebook preset keeps them off under sampling too.
    notebook = parse_run_config({"rules": "notebook", "fraction-fit": 0.3})
    assert (notebook.refresh_stale, notebook.aggregate_floor, notebook.batch_step) == (0, 0, 0)
    assert notebook.crossover == "pick"


@pytest.mark.parametrize("fitness_rule", FITNESS_RULES)
def test_every_fitness_the_config_accepts_is_one_the_algorithm_scores(fitness_rule):
    # One vocabulary (gcfl.names): a rule the parser accepts must run, not fail mid-run.
    config = parse_run_config({"fitness": fitness_rule})
    assert fitness.fitness_score(config.fitness, 1.0, 0.5, 1.0, 0.5) is not None


@pytest.mark.parametrize("mutation_rule", MUTATION_RULES)
@pytest.mark.parametrize("crossover_rule", CROSSOVER_RULES)
def test_every_mutation_and_crossover_the_config_accepts_runs(mutation_rule, crossover_rule):
    config = parse_run_config({"mutation": mutation_rule, "crossover": crossover_rule})
    mutation = GeneticSettings.from_config(config).mutation
    rng = np.random.default_rng(0)
    pool = genetic.Cohort(
        np.arange(2), np.array([1e-3, 1e-2]), np.array([16, 64]), np.zeros(2), np.ones(2, bool)
    )
    lrs, batches = genetic.breed(pool, np.zeros(3, np.int64), np.full(3, 2), mutation, rng)
    assert len(lrs) == len(batches) == 3


def test_a_rule_name_outside_the_vocabulary_is_refused_naming_the_key():
    for key in ("fitness", "mutation", "crossover", "aggregate", "fitness-candidates"):
        with pytest.raises(ConfigError, match=key):
            parse_run_config({key: "nonsense"})


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigError) as error:
        parse_run_config({"learning-rate": 0.1})
    message = str(error.value)
    assert "learning-rate" in message
    assert all(key in message for key in config_keys())


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"lr-min": 1e-3, "lr-max": 1e-4}, "lr-min"),
        ({"fraction-fit": 0.0}, "fraction-fit"),
        ({"fraction-fit": 1.5}, "fraction-fit"),
        ({"dbscan-eps": -0.1}, "dbscan-eps"),
        ({"rules": "pbt"}, "rules"),
        ({"fitness": "accuracy"}, "fitness"),
        ({"migration": 0.6}, "migration"),
        ({"mutation": 0.1}, "mutation"),
        ({"mutation-scale": 1.0}, "mutation-scale"),
        ({"resample": -0.1}, "resample"),
        ({"rollback": "yes"}, "rollback"),
        ({"elite": -1}, "elite"),
        ({"num-server-rounds": 0}, "num-server-rounds"),
        ({"num-server-rounds": 2.5}, "num-server-rounds"),
        ({"lr-max": "big"}, "lr-max"),
        ({"batch-min": 64, "batch-max": 32}, "batch-min"),
        ({"strategy": "fedprox"}, "strategy"),
        ({"init": "zeros"}, "init"),
        ({"partition": "shards"}, "partition"),
        ({"out-dir": "relative/dir"}, "out-dir"),
        ({"dataset": "imagenet"}, "dataset"),
        ({"dataset": "data/x.npz"}, "dataset"),
        ({"val-fraction": 1.0}, "val-fraction"),
        ({"lr-grid": "0.1,abc"}, "lr-grid"),
        ({"batch-grid": "32"}, "batch-grid"),
        ({"model": "no_colon"}, "model"),
        ({"diverge-factor": 1.0}, "diverge-factor"),
        ({"lr-min": float("nan")}, "lr-min"),
        ({"aggregate-clip": 0.5}, "aggregate-clip"),
        ({"aggregate-clip": float("nan")}, "aggregate-clip"),
        ({"aggregate-floor": -0.5}, r"aggregate-floor: -0.5 must be in \[0, 1\) \(or -1: auto\)"),
        ({"refresh-stale": 1.5}, "refresh-stale"),
        ({"batch-step": -2.0}, "batch-step"),
        ({"crossover": "uniform"}, "crossover"),
    ],
)
def test_bad_values_name_the_key(overrides, named):
    with pytest.raises(ConfigError, match=named):
        parse_run_config(overrides)


def test_integral_float_is_accepted_for_an_integer_key():
    assert parse_run_config({"num-server-rounds": 3.0}).num_server_rounds == 3


def test_round_trip_through_run_config():
    config = parse_run_config({"elite": 3, "out-dir": "/tmp/x"})
    assert parse_run_config(config.to_run_config()) == config


def test_command_line_assignments_get_the_key_type():
    assert parse_assignment("elite=3") == ("elite", 3)
    assert parse_assignment("lr-max=1e-2") == ("lr-max", 0.01)
    assert parse_assignment("init='search'") == ("init", "search")
    with pytest.raises(ConfigError, match="elite"):
        parse_assignment("elite=many")
    with pytest.raises(ConfigError, match="valid keys"):
        parse_assignment("no-such-key=1")


def test_config_of_returns_the_same_object_for_the_same_items():
    run_config = {"elite": 3, "migration": 0.4}
    first = config_of(run_config)
    assert first == parse_run_config(run_config)
    # A new mapping with the same items, in another order, is the same config.
    assert config_of({"migration": 0.4, "elite": 3}) is first
    assert config_of(dict(run_config)) is first


def test_config_of_a_different_mapping_is_a_different_config():
    first = config_of({"elite": 3})
    other = config_of({"elite": 4})
    assert other is not first and other.elite == 4
    # An integral float parses to the same value, but is not the same mapping.
    assert config_of({"num-server-rounds": 3.0}).num_server_rounds == 3


@pytest.mark.parametrize(
    "run_config",
    [{"elite": -1}, {"learning-rate": 0.1}, {"rollback": 1}, {"elite": True}, {"elite": [3]}],
)
def test_config_of_raises_for_a_bad_config_on_every_call(run_config):
    # True == 1 and they hash alike: cached valid twins must not answer for them.
    valid = [config_of({"rollback": True}), config_of({"elite": 1})]
    for _ in range(2):
        with pytest.raises(ConfigError):
            config_of(run_config)
    # The bad config displaced nothing: the valid ones still come back as they were.
    assert config_of({"rollback": True}) is valid[0] and config_of({"elite": 1}) is valid[1]


def test_config_of_keeps_only_the_most_recent_configs():
    configs = [config_of({"seed": seed}) for seed in range(3 * CONFIG_CACHE_SIZE)]
    # The most recent stay cached; the oldest were dropped and parse anew.
    recent = range(2 * CONFIG_CACHE_SIZE + 1, 3 * CONFIG_CACHE_SIZE)
    assert all(config_of({"seed": seed}) is configs[seed] for seed in recent)
    again = config_of({"seed": 0})
    assert again == configs[0] and again is not configs[0]


def test_the_algorithm_runs_the_rules_the_run_config_names():
    # GcflConfig is the one source of the algorithm's parameters: a setting the
    # run config changes must reach the genetic step unchanged.
    config = parse_run_config(
        {
            "elite": 3,
            "migration": 0.25,
            "mutation": "log",
            "mutation-scale": 0.2,
            "resample": 0.1,
            "batch-step": 0.3,
            "crossover": "blend",
            "dbscan-eps": 0.2,
            "dbscan-min-samples": 3,
            "recluster-every": 2,
            "fitness": "loss",
            "lr-min": 1e-4,
            "lr-max": 1e-2,
            "batch-min": 8,
            "batch-max": 64,
        }
    )
    settings = GeneticSettings.from_config(config)
    assert (settings.elite, settings.migration, settings.fitness) == (3, 0.25, "loss")
    assert (settings.dbscan_eps, settings.dbscan_min_samples, settings.recluster_every) == (
        0.2,
        3,
        2,
    )
    assert settings.space == SearchSpace(1e-4, 1e-2, 8, 64)
    mutation = settings.mutation
    assert (mutation.rule, mutation.scale, mutation.resample) == ("log", 0.2, 0.1)
    assert (mutation.batch_step, mutation.crossover, mutation.space) == (
        0.3,
        "blend",
        settings.space,
    )
    # The notebook's lr may drift past its range; gcfl's stays in the space.
    assert mutation.bounded
    assert not GeneticSettings.from_config(parse_run_config({"rules": "notebook"})).mutation.bounded


def test_the_configuration_page_holds_the_table_the_config_generates():
    # A key missing from the docs is a key a user cannot discover; a stale default or
    # meaning misleads. Regenerate with `python -m gcfl.config_table`.
    page = PAGE.read_text(encoding="utf-8")
    assert with_table(page) == page, "docs/configuration.md is stale: python -m gcfl.config_table"
    table = run_config_table()
    for key in default_run_config():
        assert f"| `{key}` |" in table
    assert table.count("\n| `") == len(default_run_config())
