"""The warm training worker: same results as training in-process, clear errors, and a fallback."""

import logging
import socket
import threading

import numpy as np
import pytest

from gcfl.client.client import GcflClient
from gcfl.client.client_app import WorkerBackedClient
from gcfl.client.worker import (
    WorkerFitError,
    WorkerUnavailable,
    fit_on_worker,
    ping,
    serve,
)
from gcfl.client.worker_protocol import (
    ProtocolError,
    encode_message,
    receive_message,
    send_message,
)
from gcfl.config import parse_run_config
from gcfl.data import load_dataset
from gcfl.model import build_model

RUN_CONFIG = {"local-epochs": 1, "num-server-rounds": 2}
FIT_CONFIG = {"server-round": 1, "lr": 1e-3, "batch-size": 16, "search": False}


def _initial_weights(spec: str = "") -> list[np.ndarray]:
    dataset = load_dataset("digits", "", 42)
    return build_model(spec, dataset.input_shape, dataset.num_classes, seed=0).get_weights()


def _in_process(run_config, parameters, partition_id=1):
    client = GcflClient(partition_id, 5, parse_run_config(run_config))
    return client.fit(parameters, dict(FIT_CONFIG))


@pytest.fixture
def worker(tmp_path):
    """A worker serving in a thread of this process; stopped by closing its listener."""
    path = tmp_path / "w.sock"
    thread = threading.Thread(target=serve, args=(path,), daemon=True)
    thread.start()
    for _ in range(200):
        if ping(str(path), timeout_s=0.5):
            break
        threading.Event().wait(0.05)
    else:
        pytest.fail("the worker did not start")
    yield str(path)


def _fit_on_worker(socket_path, parameters, *, partition_id, run_config=RUN_CONFIG):
    return fit_on_worker(
        socket_path,
        partition_id=partition_id,
        num_partitions=5,
        run_config=run_config,
        parameters=parameters,
        fit_config=FIT_CONFIG,
    )


def _pair():
    left, right = socket.socketpair()
    return left, right


def test_messages_round_trip_arrays_exactly():
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64)]
    left, right = _pair()
    with left, right:
        send_message(left, {"method": "fit", "x": float("nan")}, arrays)
        header, received = receive_message(right)
    assert header["method"] == "fit" and np.isnan(header["x"])
    assert [a.dtype for a in received] == [np.float32, np.int64]
    assert all(np.array_equal(a, b) for a, b in zip(arrays, received, strict=True))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"HELLO!\x00\x00\x00\x02{}", "not a gcfl worker message"),
        (b"GCFLW1\x00\x00\x00\x05[1,2]", "not an object"),
        (b"GCFLW1\x00\x00\x00\x03{x}", "not JSON"),
        (encode_message({"a": 1}, [np.zeros(3)])[:-5], "connection closed"),
    ],
)
def test_malformed_messages_are_protocol_errors(payload, message):
    left, right = _pair()
    with left, right:
        left.sendall(payload)
        left.shutdown(socket.SHUT_WR)
        with pytest.raises(ProtocolError, match=message):
            receive_message(right)


def test_pickled_arrays_are_refused():
    import io
    import struct

    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    body = b'{"arrays": 1}'
    payload = b"GCFLW1" + struct.pack(">I", len(body)) + body
    payload += struct.pack(">Q", buffer.tell()) + buffer.getvalue()
    left, right = _pair()
    with left, right:
        left.sendall(payload)
        with pytest.raises(ProtocolError, match=r"not a plain \.npy array"):
            receive_message(right)


def test_worker_fit_equals_in_process_fit(worker):
    parameters = _initial_weights()
    weights, count, metrics = _fit_on_worker(worker, parameters, partition_id=1)
    expected_weights, expected_count, expected_metrics = _in_process(RUN_CONFIG, parameters)
    assert count == expected_count
    assert all(np.array_equal(a, b) for a, b in zip(weights, expected_weights, strict=True))
    assert metrics["lr"] == pytest.approx(expected_metrics["lr"])
    assert metrics["val-loss"] == pytest.approx(expected_metrics["val-loss"])


def test_wrong_shapes_are_an_error_and_the_worker_keeps_serving(worker):
    parameters = _initial_weights()
    wrong = [np.zeros((3, 3), dtype=np.float32), *parameters[1:]]
    with pytest.raises(WorkerFitError, match="shape"):
        _fit_on_worker(worker, wrong, partition_id=0)
    _, count, _ = _fit_on_worker(worker, parameters, partition_id=0)
    assert count > 0


def test_a_run_with_another_model_gets_that_model(worker):
    run_config = {**RUN_CONFIG, "model": "tests.tiny_model:build"}
    parameters = _initial_weights("tests.tiny_model:build")
    # The default model first, so the worker has one cached.
    _fit_on_worker(worker, _initial_weights(), partition_id=2)
    weights, _, _ = _fit_on_worker(worker, parameters, partition_id=2, run_config=run_config)
    expected, _, _ = _in_process(run_config, parameters, partition_id=2)
    assert [w.shape for w in weights] == [w.shape for w in parameters]
    assert all(np.array_equal(a, b) for a, b in zip(weights, expected, strict=True))


def test_other_protocol_versions_and_methods_get_clear_errors(worker):
    for header, message in (
        ({"version": 99, "method": "ping"}, "protocol version 99"),
        ({"version": 1, "method": "evaluate"}, "unknown method 'evaluate'"),
    ):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.connect(worker)
            send_message(connection, header)
            reply, _ = receive_message(connection)
        assert not reply["ok"] and message in reply["message"]


def test_no_worker_means_unavailable(tmp_path):
    stale = tmp_path / "stale.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(stale))
    listener.close()  # the socket file stays, nobody listens: a killed worker
    for path in (tmp_path / "missing.sock", stale):
        with pytest.raises(WorkerUnavailable, match=str(path)):
            _fit_on_worker(str(path), [], partition_id=0)


def test_client_falls_back_to_in_process_training_with_a_warning(tmp_path, caplog):
    parameters = _initial_weights()
    client = WorkerBackedClient(
        1, 5, parse_run_config(RUN_CONFIG), RUN_CONFIG, str(tmp_path / "none.sock")
    )
    logging.getLogger("flwr").addHandler(caplog.handler)
    try:
        weights, count, _ = client.fit(parameters, dict(FIT_CONFIG))
    finally:
        logging.getLogger("flwr").removeHandler(caplog.handler)
    expected, expected_count, _ = _in_process(RUN_CONFIG, parameters)
    assert count == expected_count
    assert all(np.array_equal(a, b) for a, b in zip(weights, expected, strict=True))
    assert "training in the ClientApp process instead" in caplog.text


def test_a_second_worker_on_a_live_socket_is_refused(worker):
    with pytest.raises(RuntimeError, match="already answers"):
        serve(worker, max_requests=0)
