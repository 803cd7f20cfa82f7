"""The Keras client: trains with what it is sent and says what it trained with."""

import math

import numpy as np
import pytest

from gcfl.client.client import GcflClient
from gcfl.client.training import divergence, fit_once
from gcfl.config import parse_run_config
from gcfl.data import client_data, load_dataset
from gcfl.model import build_model, cached_model, count_parameters, reset_optimizer


def test_seed_cnn_has_550570_parameters_on_cifar_shapes():
    model = build_model("", (32, 32, 3), 10, seed=0)
    assert count_parameters(model) == 550_570
    assert model.loss == "sparse_categorical_crossentropy"  # not seed bug 2's binary one


def test_builder_named_in_the_config_is_used():
    model = build_model("tests.tiny_model:build", (8, 8, 1), 10, seed=0)
    assert model.name == "tiny"


def test_bad_builder_is_named():
    from gcfl.model import ModelError

    with pytest.raises(ModelError, match="no_such_module"):
        build_model("no_such_module:build", (8, 8, 1), 10, seed=0)


def test_same_seed_same_initial_weights():
    first = build_model("", (8, 8, 1), 10, seed=3).get_weights()
    second = build_model("", (8, 8, 1), 10, seed=3).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_reset_optimizer_zeroes_state_and_sets_lr_in_place():
    model = cached_model("", (8, 8, 1), 10)
    data = client_data("digits", "", 42, "slices", 0.5, 0, 5, 0.2)
    fit_once(model, model.get_weights(), data, 1e-3, 16, 1, 10.0, seed=0)
    assert int(model.optimizer.iterations.numpy()) > 0
    lr = reset_optimizer(model, 3e-4)
    assert int(model.optimizer.iterations.numpy()) == 0
    assert all(
        not np.any(v.numpy()) for v in model.optimizer.variables if v.name != "learning_rate"
    )
    assert lr == pytest.approx(3e-4, rel=1e-6)
    assert cached_model("", (8, 8, 1), 10) is model  # one compiled model per process


@pytest.mark.parametrize(
    ("first", "final", "val", "diverged"),
    [
        (2.3, 1.0, 1.2, False),
        (2.3, 2.3 * 11, 2.0, True),  # final loss > 10 x first, though finite
        (2.3, math.nan, 1.0, True),
        (2.3, 1.0, math.inf, True),
        (1.0, 1e19, 1e19, True),
    ],
)
def test_divergence_rule(first, final, val, diverged):
    assert divergence(first, final, val, factor=10.0) is diverged


def digits_client(partition_id=2, **overrides):
    config = parse_run_config(overrides)
    return GcflClient(partition_id, 10, config), config


def test_fit_reports_what_it_trained_with():
    client, _ = digits_client()
    dataset = load_dataset("digits", "", 42)
    start = build_model("", dataset.input_shape, dataset.num_classes, seed=1).get_weights()
    weights, count, metrics = client.fit(start, {"server-round": 1, "lr": 4e-4, "batch-size": 24})
    assert metrics["client-id"] == 2 and metrics["status"] == "ok"
    assert metrics["lr"] == pytest.approx(4e-4, rel=1e-6)
    assert metrics["batch-size"] == 24
    assert math.isfinite(metrics["val-loss"]) and 0 <= metrics["val-accuracy"] <= 1
    data = client_data("digits", "", 42, "slices", 0.5, 2, 10, 0.2)
    assert count == len(data.x_train)
    assert any(not np.array_equal(a, b) for a, b in zip(weights, start, strict=True))


def test_diverged_fit_returns_no_weights():
    client, _ = digits_client()
    dataset = load_dataset("digits", "", 42)
    start = build_model("", dataset.input_shape, dataset.num_classes, seed=1).get_weights()
    weights, count, metrics = client.fit(start, {"server-round": 1, "lr": 50.0, "batch-size": 16})
    assert metrics["status"] == "diverged"
    assert (weights, count) == ([], 0)


def test_search_init_keeps_the_best_of_three_lrs_and_two_batch_sizes():
    client, config = digits_client(init="search")
    dataset = load_dataset("digits", "", 42)
    start = build_model("", dataset.input_shape, dataset.num_classes, seed=1).get_weights()
    _, _, metrics = client.fit(start, {"server-round": 1, "search": True})
    assert any(math.isclose(metrics["lr"], lr, rel_tol=1e-6) for lr in config.lr_grid_values)
    assert metrics["batch-size"] in config.batch_grid_values
    assert metrics["status"] == "ok"


def test_properties_need_no_tensorflow():
    client, _ = digits_client(partition_id=7)
    assert client.get_properties({}) == {"partition-id": 7, "num-partitions": 10}
