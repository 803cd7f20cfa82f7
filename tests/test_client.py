"""The Keras client: trains with what it is sent and says what it trained with."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gcfl.client.client import GcflClient
from gcfl.client.training import divergence, fit_once, search_init
from gcfl.config import parse_run_config
from gcfl.data import client_data, load_dataset
from gcfl.model import (
    build_model,
    cached_model,
    make_training_reproducible,
    reset_optimizer,
)
from gcfl.model_steps import compiled_steps, evaluate_weights
from gcfl.processes import tool_environment
from gcfl.protocol import (
    EvaluateInstruction,
    EvaluateReport,
    FitReport,
    NodeInfo,
    PropertiesRequest,
    ProtocolError,
    SearchInstruction,
    TrainInstruction,
    evaluate_config,
)


def test_seed_cnn_has_550570_parameters_on_cifar_shapes():
    model = build_model("", (32, 32, 3), 10, seed=0)
    assert model.count_params() == 550_570
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


def digits(partition_id=3):
    """A digits client: partition 3 of 10 has 82 training and 20 validation samples."""
    return client_data("digits", "", 42, "slices", 0.5, partition_id, 10, 0.2)


def keras_evaluate(model, weights, x, y):
    model.set_weights(weights)
    return model.evaluate(x, y, batch_size=256, verbose=0)


def test_same_weights_and_seed_give_the_same_fit_bit_for_bit():
    make_training_reproducible()
    model = cached_model("", (8, 8, 1), 10)
    start = build_model("", (8, 8, 1), 10, seed=1).get_weights()
    first = fit_once(model, start, digits(), 1e-3, 32, 2, 10.0, seed=5)
    again = fit_once(model, start, digits(), 1e-3, 32, 2, 10.0, seed=5)  # Adam state reset
    other = fit_once(model, start, digits(), 1e-3, 32, 2, 10.0, seed=6)  # another shuffle
    assert first.status == again.status == "ok"
    assert all(np.array_equal(a, b) for a, b in zip(first.weights, again.weights, strict=True))
    assert (first.first_loss, first.train_loss) == (again.first_loss, again.train_loss)
    assert any(not np.array_equal(a, b) for a, b in zip(first.weights, other.weights, strict=True))


def test_dropout_is_reseeded_per_fit():
    import keras

    from gcfl.model import compile_for_training

    layers = keras.layers
    model = compile_for_training(
        keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                layers.Flatten(),
                layers.Dropout(0.5),
                layers.Dense(10, activation="softmax"),
            ]
        )
    )
    start = model.get_weights()
    first, again = (fit_once(model, start, digits(), 1e-2, 16, 2, 10.0, seed=5) for _ in "12")
    assert all(np.array_equal(a, b) for a, b in zip(first.weights, again.weights, strict=True))


def test_losses_are_keras_evaluations_of_the_received_and_the_trained_weights():
    model = cached_model("", (8, 8, 1), 10)
    start = build_model("", (8, 8, 1), 10, seed=1).get_weights()
    data = digits()
    outcome = fit_once(model, start, data, 1e-3, 16, 1, 10.0, seed=0)
    before, _ = keras_evaluate(model, start, data.x_val, data.y_val)
    after, accuracy = keras_evaluate(model, outcome.weights, data.x_val, data.y_val)
    assert outcome.val_loss_before == pytest.approx(before, abs=1e-5)
    assert outcome.val_loss == pytest.approx(after, abs=1e-5)
    assert outcome.val_accuracy == pytest.approx(accuracy, abs=1e-6)
    # The fitness losses: all local examples, training and validation pooled.
    x_all = np.concatenate([data.x_train, data.x_val])
    y_all = np.concatenate([data.y_train, data.y_val])
    local_before, _ = keras_evaluate(model, start, x_all, y_all)
    local_after, _ = keras_evaluate(model, outcome.weights, x_all, y_all)
    assert outcome.local_loss_before == pytest.approx(local_before, abs=1e-5)
    assert outcome.local_loss_after == pytest.approx(local_after, abs=1e-5)
    # More samples than one evaluation batch of 256: batch means weighted as Keras does.
    test = load_dataset("digits", "", 42)
    loss, accuracy = evaluate_weights(model, start, test.x_test, test.y_test)
    expected = keras_evaluate(model, start, test.x_test, test.y_test)
    assert (loss, accuracy) == pytest.approx(expected, abs=1e-5)


def test_train_losses_are_the_first_batch_and_the_last_epoch():
    # At lr 0 the weights never move: the last epoch's size-weighted mean batch loss is the
    # loss on the whole training set, and the first batch is the seed's first shuffled one.
    model = build_model("tests.tiny_model:build", (8, 8, 1), 10, seed=0)
    start, data = model.get_weights(), digits()
    outcome = fit_once(model, start, data, 0.0, 24, 3, 10.0, seed=9)
    first = np.random.default_rng(9).permutation(len(data.x_train))[:24]
    first_loss, _ = keras_evaluate(model, start, data.x_train[first], data.y_train[first])
    train_loss, _ = keras_evaluate(model, start, data.x_train, data.y_train)
    assert outcome.first_loss == pytest.approx(first_loss, abs=1e-5)
    assert outcome.train_loss == pytest.approx(train_loss, abs=1e-5)
    assert outcome.val_loss == outcome.val_loss_before
    assert all(np.array_equal(a, b) for a, b in zip(outcome.weights, start, strict=True))


def test_loss_falls_on_an_easy_fit():
    model = build_model("tests.tiny_model:build", (8, 8, 1), 10, seed=0)
    outcome = fit_once(model, model.get_weights(), digits(), 1e-2, 16, 5, 10.0, seed=0)
    assert outcome.status == "ok"
    assert outcome.train_loss < 0.7 * outcome.first_loss
    assert outcome.val_loss < 0.7 * outcome.val_loss_before
    assert outcome.val_accuracy > 0.5


def test_fit_at_lr_10_diverges():
    model = cached_model("", (8, 8, 1), 10)
    start = build_model("", (8, 8, 1), 10, seed=1).get_weights()
    outcome = fit_once(model, start, digits(), 10.0, 16, 2, 10.0, seed=0)
    assert outcome.status == "diverged" and outcome.weights is None
    assert math.isfinite(outcome.val_loss_before)


def test_no_retrace_across_batch_sizes_and_client_sizes():
    model = build_model("tests.tiny_model:build", (8, 8, 1), 10, seed=0)
    start = model.get_weights()
    fit_once(model, start, digits(3), 1e-3, 16, 2, 10.0, seed=0)
    test = load_dataset("digits", "", 42)
    evaluate_weights(model, start, test.x_test, test.y_test)
    steps = compiled_steps(model)
    # One trace of the train loop, one of each evaluation (both splits; one array).
    assert (steps.train_traces, steps.eval_traces) == (1, 2)
    for partition, batch_size, epochs in ((0, 33, 1), (4, 128, 2), (8, 17, 3)):
        fit_once(model, start, digits(partition), 1e-3, batch_size, epochs, 10.0, seed=1)
    evaluate_weights(model, start, test.x_test[:7], test.y_test[:7])
    assert (steps.train_traces, steps.eval_traces) == (1, 2)


def test_search_init_reports_the_loss_of_the_received_weights():
    model = build_model("tests.tiny_model:build", (8, 8, 1), 10, seed=0)
    start, data = model.get_weights(), digits()
    outcome = search_init(
        model, start, data, (1e-1, 1e-2, 1e-3), (16, 32), 10.0, np.random.default_rng(0), 0
    )
    assert outcome.val_loss_before == evaluate_weights(model, start, data.x_val, data.y_val)[0]
    assert outcome.status == "ok" and outcome.batch_size in (16, 32)


def digits_client(partition_id=2, **overrides):
    config = parse_run_config(overrides)
    return GcflClient(partition_id, 10, config), config


def test_fit_reports_what_it_trained_with():
    client, _ = digits_client()
    dataset = load_dataset("digits", "", 42)
    start = build_model("", dataset.input_shape, dataset.num_classes, seed=1).get_weights()
    instruction = TrainInstruction(server_round=1, lr=4e-4, batch_size=24)
    weights, count, metrics = client.fit(start, instruction.to_config())
    report = FitReport.from_metrics(metrics)
    assert report.client_id == 2 and report.status == "ok"
    assert report.lr == pytest.approx(4e-4, rel=1e-6)
    assert report.batch_size == 24
    assert math.isfinite(report.val_loss) and 0 <= report.val_accuracy <= 1
    data = client_data("digits", "", 42, "slices", 0.5, 2, 10, 0.2)
    assert count == len(data.x_train)
    assert any(not np.array_equal(a, b) for a, b in zip(weights, start, strict=True))


def test_diverged_fit_returns_no_weights():
    client, _ = digits_client()
    dataset = load_dataset("digits", "", 42)
    start = build_model("", dataset.input_shape, dataset.num_classes, seed=1).get_weights()
    instruction = TrainInstruction(server_round=1, lr=50.0, batch_size=16)
    weights, count, metrics = client.fit(start, instruction.to_config())
    assert FitReport.from_metrics(metrics).status == "diverged"
    assert (weights, count) == ([], 0)


def test_search_init_keeps_the_best_pair_of_the_grids_the_server_sent():
    client, _ = digits_client(init="search")
    dataset = load_dataset("digits", "", 42)
    start = build_model("", dataset.input_shape, dataset.num_classes, seed=1).get_weights()
    # Grids other than the run config's: the client searches what it was sent.
    grids = SearchInstruction(1, lr_grid=(3e-3, 2e-3, 5e-4, 7e-4), batch_grid=(20, 40))
    _, _, metrics = client.fit(start, grids.to_config())
    report = FitReport.from_metrics(metrics)
    assert any(math.isclose(report.lr, lr, rel_tol=1e-6) for lr in grids.lr_grid)
    assert report.batch_size in grids.batch_grid
    assert report.status == "ok"


def test_a_fit_instruction_without_the_protocol_version_is_refused():
    client, _ = digits_client()
    with pytest.raises(ProtocolError, match="gcfl-protocol"):
        client.fit([], {"server-round": 1, "lr": 1e-3, "batch-size": 16})


def test_evaluate_scores_the_global_model_on_the_clients_validation_split():
    client, _ = digits_client()
    dataset = load_dataset("digits", "", 42)
    start = build_model("", dataset.input_shape, dataset.num_classes, seed=1).get_weights()
    loss, count, metrics = client.evaluate(start, evaluate_config(1))
    report = EvaluateReport.from_reply(loss, metrics)
    data = client_data("digits", "", 42, "slices", 0.5, 2, 10, 0.2)
    assert count == len(data.x_val) and report.client_id == 2
    assert math.isfinite(loss) and 0.0 <= report.accuracy <= 1.0


def test_evaluate_scores_every_candidate_on_all_local_examples():
    client, _ = digits_client()
    dataset = load_dataset("digits", "", 42)
    first = build_model("", dataset.input_shape, dataset.num_classes, seed=1).get_weights()
    second = build_model("", dataset.input_shape, dataset.num_classes, seed=2).get_weights()
    instruction = EvaluateInstruction(3, candidates=3, split="local")
    loss, count, metrics = client.evaluate([*first, *second, *first], instruction.to_config())
    report = EvaluateReport.from_reply(loss, metrics)
    data = client_data("digits", "", 42, "slices", 0.5, 2, 10, 0.2)
    assert count == len(data.x_train) + len(data.x_val)
    assert len(report.losses) == 3 and report.losses[0] == report.loss == loss
    assert report.losses[2] == pytest.approx(report.losses[0])
    assert report.losses[1] != pytest.approx(report.losses[0])


def test_evaluate_refuses_arrays_that_are_not_the_models_announced():
    client, _ = digits_client()
    dataset = load_dataset("digits", "", 42)
    weights = build_model("", dataset.input_shape, dataset.num_classes, seed=1).get_weights()
    instruction = EvaluateInstruction(1, candidates=2, split="local")
    with pytest.raises(ValueError, match="not 2 model"):
        client.evaluate(weights, instruction.to_config())


def test_an_evaluate_request_of_another_protocol_version_is_refused():
    client, _ = digits_client()
    with pytest.raises(ProtocolError, match="gcfl-protocol"):
        client.evaluate([], {"server-round": 1, "gcfl-protocol": 1})


def test_a_properties_request_without_the_protocol_version_is_refused():
    client, _ = digits_client()
    with pytest.raises(ProtocolError, match="gcfl-protocol"):
        client.get_properties({})


def test_properties_say_how_many_examples_the_node_holds():
    client, _ = digits_client()
    info = NodeInfo.from_properties(client.get_properties(PropertiesRequest().to_config()))
    data = client_data("digits", "", 42, "slices", 0.5, 2, 10, 0.2)
    assert (info.partition_id, info.num_partitions, info.num_examples) == (2, 10, len(data.x_train))


PROPERTIES_PROBE = """
import sys
from flwr.common import Context, GetPropertiesIns, RecordDict
from gcfl.client.client_app import client_fn
from gcfl.config import default_run_config
from gcfl.protocol import PropertiesRequest

for extra in ({}, {"worker-socket": "/nonexistent/gcfl-worker.sock"}):
    node_config = {"partition-id": 7, "num-partitions": 10, **extra}
    context = Context(1, 8, node_config, RecordDict(), default_run_config())
    request = GetPropertiesIns(config=PropertiesRequest().to_config())
    reply = client_fn(context).get_properties(request)
    assert reply.status.code.name == "OK", reply.status
    assert reply.properties["partition-id"] == 7, reply.properties
    assert reply.properties["num-partitions"] == 10, reply.properties
imported = sorted({"tensorflow", "keras"} & set(sys.modules))
assert not imported, f"get_properties imported {imported}"
"""


def test_properties_are_answered_without_importing_tensorflow():
    # The server asks every node for its properties before round 1; a
    # ClientApp process that imported TensorFlow for that would pay seconds
    # per node. A process of its own: this one has imported TensorFlow already.
    probe = subprocess.run(
        [sys.executable, "-c", PROPERTIES_PROBE], capture_output=True, text=True, timeout=300
    )
    assert probe.returncode == 0, probe.stderr


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )


ONEDNN_PROBE = (
    "import os\n"
    "from gcfl.model import make_training_reproducible, onednn_enabled\n"
    "make_training_reproducible()\n"
    "print(onednn_enabled(), os.environ.get('TF_ENABLE_ONEDNN_OPTS'))\n"
)


@pytest.mark.parametrize("user_choice", [None, "0"])
def test_every_process_of_a_launched_run_makes_the_same_onednn_choice(monkeypatch, user_choice):
    # oneDNN's kernels round differently, and TensorFlow chooses at import.
    # Flower's actors import TensorFlow before any gcfl code; gcfl's worker and
    # in-process engine import gcfl first. Both must end with the same choice:
    # TensorFlow's own, or the user's variable, and gcfl must not set it.
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    if user_choice is not None:
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", user_choice)
    launched = tool_environment(Path("/tmp"), Path("/tmp"))
    assert launched.get("TF_ENABLE_ONEDNN_OPTS") == user_choice

    tensorflow_first = run_python("import tensorflow\n" + ONEDNN_PROBE, launched)
    gcfl_first = run_python(ONEDNN_PROBE, launched)
    assert tensorflow_first.returncode == 0, tensorflow_first.stderr
    assert gcfl_first.returncode == 0, gcfl_first.stderr
    assert tensorflow_first.stdout == gcfl_first.stdout
    assert tensorflow_first.stdout.split()[1] == str(user_choice)
    if user_choice == "0":
        assert tensorflow_first.stdout.split()[0] == "False"
