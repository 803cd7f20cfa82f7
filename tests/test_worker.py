"""The warm training worker: same results as training in-process, clear errors, and a fallback."""

import json
import logging
import socket
import stat
import struct
import sys
import threading
import time

import numpy as np
import pytest

from gcfl.client.client import GcflClient
from gcfl.client.client_app import WorkerBackedClient, train_for_worker
from gcfl.config import parse_run_config
from gcfl.data import load_dataset
from gcfl.model import build_model
from gcfl.protocol import TrainInstruction
from gcfl.worker import framing as worker_protocol
from gcfl.worker.client import fit_on_worker, ping
from gcfl.worker.framing import (
    MAX_MESSAGE_BYTES,
    ProtocolError,
    encode_message,
    receive_message,
    send_message,
)
from gcfl.worker.messages import (
    PROTOCOL_VERSION,
    Failed,
    FitRequest,
    Trained,
    WorkerFitError,
    WorkerRefused,
    WorkerTimeout,
    WorkerUnavailable,
    parse_reply,
    parse_request,
)
from gcfl.worker.policy import WorkerPolicy, policy_from_args
from gcfl.worker.server import _bind, serve

RUN_CONFIG = {"local-epochs": 1, "num-server-rounds": 2}
# Spelled by gcfl.protocol, so it carries the protocol version a client insists on.
FIT_CONFIG = TrainInstruction(server_round=1, lr=1e-3, batch_size=16).to_config()


def _initial_weights(spec: str = "") -> list[np.ndarray]:
    dataset = load_dataset("digits", "", 42)
    return build_model(spec, dataset.input_shape, dataset.num_classes, seed=0).get_weights()


def _in_process(run_config, parameters, partition_id=1):
    client = GcflClient(partition_id, 5, parse_run_config(run_config))
    return client.fit(parameters, dict(FIT_CONFIG))


def _serve_in_thread(path, **options):
    """A worker serving at ``path`` in a daemon thread of this process, once it answers."""
    options.setdefault("train", train_for_worker)
    thread = threading.Thread(target=serve, args=(path,), kwargs=options, daemon=True)
    thread.start()
    # Generous: the first start imports TensorFlow, slow on a busy machine.
    deadline = time.monotonic() + 120.0
    while not ping(str(path), timeout_s=0.5):
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the worker did not start")
        time.sleep(0.05)
    return str(path)


@pytest.fixture
def worker(tmp_path):
    """A worker serving in a thread of this process; stopped by closing its listener."""
    return _serve_in_thread(tmp_path / "w.sock")


def _fit_on_worker(socket_path, parameters, *, partition_id, run_config=RUN_CONFIG):
    return fit_on_worker(
        socket_path,
        partition_id=partition_id,
        num_partitions=5,
        run_config=run_config,
        parameters=parameters,
        fit_config=FIT_CONFIG,
        deadline_s=300.0,
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


def test_a_run_with_another_model_gets_that_model(tmp_path):
    worker = _serve_in_thread(
        tmp_path / "w.sock", policy=WorkerPolicy(models=("tests.tiny_model:build",))
    )
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
        ({"version": PROTOCOL_VERSION, "method": "evaluate"}, "unknown method 'evaluate'"),
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
        serve(worker, train=train_for_worker, max_requests=0)


FIT_HEADER = {
    "version": PROTOCOL_VERSION,
    "method": "fit",
    "partition-id": 0,
    "num-partitions": 5,
    "run-config": RUN_CONFIG,
    "fit-config": FIT_CONFIG,
}


def _reply_to(socket_path, payload, timeout_s=10.0):
    """Send raw ``payload`` to the worker and read its reply; the sender never closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(socket_path)
        connection.sendall(payload)
        reply, _ = receive_message(connection, timeout_s=timeout_s)
    return reply


def test_a_stalled_request_is_dropped_and_the_worker_keeps_serving(tmp_path):
    worker = _serve_in_thread(tmp_path / "w.sock", request_timeout_s=1.0)
    message = encode_message(FIT_HEADER, [np.zeros(1000, dtype=np.float32)])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stalled:
        stalled.connect(worker)
        stalled.sendall(message[:-100])  # the header, then most of the array, then nothing
        # Served while the stalled request is still being waited for.
        assert ping(worker, timeout_s=0.5)
        started = time.monotonic()
        reply, _ = receive_message(stalled, timeout_s=10.0)
    assert time.monotonic() - started < 10.0
    assert not reply["ok"]
    assert "request not received within 1 s" in reply["message"]
    assert "of array 0" in reply["message"]
    assert ping(worker)


def _announcing(header, sizes):
    """A message's framing up to its first array's bytes: ``sizes`` are only announced."""
    body = json.dumps({**header, "arrays": len(sizes)}).encode()
    return b"GCFLW1" + struct.pack(">I", len(body)) + body + struct.pack(">Q", sizes[0])


def test_a_message_over_the_cap_is_refused_unread_and_the_worker_keeps_serving(worker):
    # One array announced at the whole cap and none of its bytes sent: a worker
    # that tried to read it would time out rather than refuse.
    reply = _reply_to(worker, _announcing(FIT_HEADER, [MAX_MESSAGE_BYTES]))
    assert not reply["ok"]
    assert f"exceeds the cap of {MAX_MESSAGE_BYTES} bytes" in reply["message"]
    assert ping(worker)
    _, count, _ = _fit_on_worker(worker, _initial_weights(), partition_id=0)
    assert count > 0


def test_the_cap_is_on_the_whole_message_not_each_array(monkeypatch):
    monkeypatch.setattr(worker_protocol, "MAX_MESSAGE_BYTES", 3000)
    arrays = [np.zeros(200, dtype=np.float64)] * 2  # each about 1.7 kB: under the cap alone
    with pytest.raises(ProtocolError, match="exceeds the cap of 3000 bytes"):
        encode_message({}, arrays)
    monkeypatch.setattr(worker_protocol, "MAX_MESSAGE_BYTES", 1 << 30)
    payload = encode_message({}, arrays)
    monkeypatch.setattr(worker_protocol, "MAX_MESSAGE_BYTES", 3000)
    left, right = _pair()
    with left, right:
        left.sendall(payload)
        with pytest.raises(ProtocolError, match=r"array 1 .* exceeds the cap of 3000 bytes"):
            receive_message(right)


def _silent_worker(socket_path, stop, reply=None):
    """A worker that takes one request, sends ``reply`` (a header) if given, and then says
    nothing more until ``stop`` is set."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(1)

    def take_and_hang():
        with listener:
            connection, _ = listener.accept()
            with connection:
                receive_message(connection)
                if reply is not None:
                    send_message(connection, reply)
                stop.wait(30)

    threading.Thread(target=take_and_hang, daemon=True).start()


def test_a_worker_that_never_replies_times_out_the_fit_without_a_fallback(tmp_path):
    path, stop = str(tmp_path / "silent.sock"), threading.Event()
    _silent_worker(path, stop)
    started = time.monotonic()
    try:
        with pytest.raises(WorkerTimeout, match=r"did not answer within 1 s") as error:
            fit_on_worker(
                path,
                partition_id=0,
                num_partitions=5,
                run_config=RUN_CONFIG,
                parameters=[np.zeros(3, dtype=np.float32)],
                fit_config=FIT_CONFIG,
                deadline_s=1.0,
            )
    finally:
        stop.set()
    assert time.monotonic() - started < 10.0
    # WorkerBackedClient retries only WorkerUnavailable in process.
    assert not isinstance(error.value, WorkerUnavailable)


def test_the_client_fails_a_fit_its_worker_did_not_answer_in_the_round_timeout(tmp_path):
    path, stop = str(tmp_path / "silent.sock"), threading.Event()
    _silent_worker(path, stop)
    run_config = {**RUN_CONFIG, "round-timeout": 1.0}
    client = WorkerBackedClient(1, 5, parse_run_config(run_config), run_config, path)
    try:
        with pytest.raises(WorkerTimeout, match="round-timeout"):
            client.fit(_initial_weights(), dict(FIT_CONFIG))
    finally:
        stop.set()


# The worker writes "busy" and closes without reading the request: one
# larger than the socket buffers meets a broken pipe, but the reply waits.
@pytest.mark.parametrize("request_floats", [0, 4_000_000], ids=["small", "larger-than-buffers"])
def test_a_full_worker_is_unavailable_so_the_client_falls_back(tmp_path, request_floats):
    worker = _serve_in_thread(tmp_path / "w.sock", request_timeout_s=5.0, max_connections=1)
    parameters = [np.zeros(request_floats, dtype=np.float32)] if request_floats else []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stalled:
        stalled.connect(worker)  # holds the only slot until its request times out
        with pytest.raises(WorkerUnavailable, match="busy"):
            fit_on_worker(
                worker,
                partition_id=0,
                num_partitions=5,
                run_config=RUN_CONFIG,
                parameters=parameters,
                fit_config=FIT_CONFIG,
                deadline_s=30.0,
            )


def test_a_client_that_has_its_reply_may_connect_again_at_once(tmp_path):
    # The slot is freed before the reply is sent: otherwise the next request
    # of the same client races the previous handler and can be told "busy".
    worker = _serve_in_thread(tmp_path / "w.sock", max_connections=1)
    answered = [ping(worker, timeout_s=5.0) for _ in range(200)]
    assert all(answered), f"{answered.count(False)} of 200 back-to-back pings were refused"


def test_bind_refuses_to_replace_a_file_that_is_not_a_socket(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("round,accuracy\n1,0.9\n")
    with pytest.raises(RuntimeError, match=rf"{path} exists and is not a Unix socket"):
        _bind(path)
    assert path.read_text() == "round,accuracy\n1,0.9\n"


def test_bind_replaces_a_stale_socket(tmp_path):
    path = tmp_path / "w.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a killed worker's socket file: nobody listens
    with pytest.raises(ConnectionRefusedError), socket.socket(socket.AF_UNIX) as probe:
        probe.connect(str(path))
    with _bind(path) as listener, socket.socket(socket.AF_UNIX) as probe:
        probe.connect(str(path))  # refused on the stale file; accepted now
        assert listener.accept()[0]
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# --- The node's allow-list: what a fit request may name ------------------------

FOREIGN_MODULE = "gcfl_test_foreign_model"
FOREIGN_MODEL = f"{FOREIGN_MODULE}:build"


@pytest.fixture
def foreign_model(tmp_path, monkeypatch):
    """A model module on sys.path that leaves a marker file if it is ever imported."""
    marker = tmp_path / "foreign-model-imported"
    (tmp_path / f"{FOREIGN_MODULE}.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n"
        "def build(input_shape, num_classes):\n    raise AssertionError('called')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    assert FOREIGN_MODULE not in sys.modules, "the foreign model was imported"
    assert not marker.exists(), "the foreign model was imported"


def _digits_like_npz(path):
    """A tiny dataset shaped like digits (8x8x1, 10 classes), so the cached model fits it."""
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (200, 8, 8), dtype=np.uint8),
        y_train=np.arange(200) % 10,
        x_test=rng.integers(0, 256, (50, 8, 8), dtype=np.uint8),
        y_test=np.arange(50) % 10,
    )
    return str(path)


def test_the_default_policy_allows_the_builtin_model_and_datasets_only(tmp_path):
    policy = WorkerPolicy()
    assert policy.check({}) is None
    assert policy.check(RUN_CONFIG) is None
    for dataset in ("digits", "mnist", "cifar10"):
        assert policy.check({"model": "", "dataset": dataset, "data-dir": ""}) is None
    assert "--allow-model" in policy.check({"model": "tests.tiny_model:build"})
    assert "--data-dir" in policy.check({"dataset": "mnist", "data-dir": str(tmp_path)})
    assert "--allow-dataset" in policy.check({"dataset": str(tmp_path / "d.npz")})


def test_a_foreign_model_is_refused_naming_the_flag_that_would_allow_it():
    policy = WorkerPolicy(models=("tests.tiny_model:build",))
    assert policy.check({"model": "tests.tiny_model:build"}) is None
    assert policy.check({"model": ""}) is None  # the built-in CNN stays allowed
    assert policy.check({"model": "evil.module:build"}) == (
        "model 'evil.module:build' is not allowed on this node; "
        "start the worker with --allow-model evil.module:build"
    )
    # Compared as spelled: that spelling is what would be imported.
    assert policy.check({"model": "tests.tiny_model:other"}) is not None
    assert "must be a string" in policy.check({"model": 5})


@pytest.fixture
def folders(tmp_path):
    """An allowed folder, a folder outside it, a symlink out of it and an alias of it."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "link-out").symlink_to(outside)
    (tmp_path / "alias").symlink_to(allowed)
    return allowed, outside


def test_a_data_dir_outside_the_allow_list_is_refused(folders):
    allowed, outside = folders
    policy = WorkerPolicy(data_dirs=(str(allowed),))
    for escape in (
        str(outside),
        f"{allowed}/../outside",
        str(allowed / "link-out"),
        str(allowed / "sub"),  # a folder inside an allowed one is a folder of its own
        "/",
    ):
        refusal = policy.check({"dataset": "cifar10", "data-dir": escape})
        assert refusal is not None and refusal.startswith(f"data-dir {escape!r}")
        assert "start the worker with --data-dir" in refusal
    link_refusal = policy.check({"data-dir": str(allowed / "link-out")})
    assert f"(resolves to {outside})" in link_refusal
    assert link_refusal.endswith(f"--data-dir {allowed / 'link-out'}")
    assert "absolute path" in policy.check({"data-dir": "allowed"})


def test_an_allowed_data_dir_passes_however_it_is_spelled(folders):
    allowed, _ = folders
    policy = WorkerPolicy(data_dirs=(str(allowed),))
    for spelling in (
        str(allowed),
        f"{allowed}/",
        f"{allowed}/../allowed",
        str(allowed.parent / "alias"),
    ):
        assert policy.check({"dataset": "mnist", "data-dir": spelling}) is None, spelling
    # Allowed through its alias, too: both sides are compared resolved.
    assert (
        WorkerPolicy(data_dirs=(str(allowed.parent / "alias"),)).check({"data-dir": str(allowed)})
        is None
    )


def test_a_dataset_file_is_allowed_only_when_listed(folders):
    allowed, outside = folders
    listed = allowed / "data.npz"
    policy = WorkerPolicy(datasets=(str(listed),))
    assert policy.check({"dataset": str(listed)}) is None
    assert policy.check({"dataset": str(allowed.parent / "alias" / "data.npz")}) is None
    for other in (
        str(allowed / "other.npz"),
        str(outside / "data.npz"),
        f"{allowed}/../outside/data.npz",
        str(allowed / "link-out" / "data.npz"),
    ):
        refusal = policy.check({"dataset": other})
        assert refusal is not None and "start the worker with --allow-dataset" in refusal, other
    # Listing a folder for data-dir allows no .npz in it: the keys are separate.
    assert WorkerPolicy(data_dirs=(str(allowed),)).check({"dataset": str(listed)}) is not None
    assert WorkerPolicy().check({"dataset": "/etc/passwd"}) is not None


def test_worker_flags_give_the_policy_and_round_trip(tmp_path, monkeypatch):
    from gcfl.cli import make_parser

    monkeypatch.chdir(tmp_path)
    argv = ["--allow-model", "a.b:c", "--allow-model", "d:e", "--data-dir", "data"]
    argv += ["--allow-dataset", "/x/y.npz"]
    args = make_parser().parse_args(["worker", "--socket", "w.sock", *argv])
    policy = policy_from_args(args)
    assert policy == WorkerPolicy(("a.b:c", "d:e"), (str(tmp_path / "data"),), ("/x/y.npz",))
    again = make_parser().parse_args(["worker", "--socket", "w.sock", *policy.to_args()])
    assert policy_from_args(again) == policy
    assert policy_from_args(make_parser().parse_args(["worker", "--socket", "s"])) == (
        WorkerPolicy()
    )
    for bad in (["--allow-model", "no-function"], ["--allow-dataset", "/x/y.csv"]):
        with pytest.raises(SystemExit):
            make_parser().parse_args(["worker", "--socket", "s", *bad])


def test_gcfl_node_passes_its_allow_list_to_the_worker(tmp_path, monkeypatch):
    import gcfl.deploy.node as node
    from gcfl.cli import main

    calls = []
    monkeypatch.setattr(node, "run_node", lambda *args: calls.append(args) or 0)
    path = str(tmp_path / "w.sock")
    supernode = ["flower-supernode", "--insecure"]
    assert main(["node", "--worker-socket", path, "--allow-model", "a:b", "--", *supernode]) == 0
    assert main(["node", "--worker-socket", path, "--", *supernode]) == 0
    assert calls == [
        (path, supernode, WorkerPolicy(models=("a:b",))),
        (path, supernode, WorkerPolicy()),  # nothing beyond the built-ins
    ]
    monkeypatch.undo()

    class Process:
        pid = 0

        def wait(self):
            return 0

    started = []
    monkeypatch.setattr(
        node.subprocess, "Popen", lambda command, **_: started.append(command) or Process()
    )
    monkeypatch.setattr(node, "wait_for_worker", lambda *_: True)
    monkeypatch.setattr(node, "stop_process_tree", lambda pid: None)
    monkeypatch.setattr(node.signal, "signal", lambda *_: None)
    assert node.run_node("/s", ["flower-supernode"], WorkerPolicy(data_dirs=("/data",))) == 0
    assert node.run_node("/s", ["flower-supernode"]) == 0
    assert started[0][-4:] == ["--socket", "/s", "--data-dir", "/data"]
    assert started[2][-2:] == ["--socket", "/s"]


def _refusal_case(case, tmp_path):
    """The run config of a request naming something the default policy refuses, and its flag."""
    if case == "model":
        return {**RUN_CONFIG, "model": FOREIGN_MODEL}, f"--allow-model {FOREIGN_MODEL}"
    if case == "data-dir":
        outside = tmp_path / "outside"
        outside.mkdir()
        _digits_like_npz(outside / "mnist.npz")
        return {**RUN_CONFIG, "dataset": "mnist", "data-dir": str(outside)}, "--data-dir"
    npz = _digits_like_npz(tmp_path / "outside.npz")
    return {**RUN_CONFIG, "dataset": npz}, f"--allow-dataset {npz}"


@pytest.mark.parametrize("case", ["model", "data-dir", "dataset"])
def test_a_request_naming_what_the_node_does_not_allow_is_refused_and_the_worker_keeps_serving(
    worker, foreign_model, tmp_path, case
):
    run_config, flag = _refusal_case(case, tmp_path)
    parameters = _initial_weights()
    header = {**FIT_HEADER, "run-config": run_config}
    reply = _reply_to(worker, encode_message(header, parameters))
    assert not reply["ok"] and reply["error"] == "NotAllowed"
    assert f"{case} " in reply["message"] and "is not allowed on this node" in reply["message"]
    assert flag in reply["message"]
    with pytest.raises(WorkerRefused, match="refused the fit"):
        _fit_on_worker(worker, parameters, partition_id=0, run_config=run_config)
    assert ping(worker)
    _, count, _ = _fit_on_worker(worker, parameters, partition_id=0)
    assert count > 0


def test_the_client_fails_a_refused_fit_rather_than_train_it_in_process(worker, foreign_model):
    run_config = {**RUN_CONFIG, "model": FOREIGN_MODEL}
    client = WorkerBackedClient(1, 5, parse_run_config(run_config), run_config, worker)
    with pytest.raises(WorkerRefused, match=f"--allow-model {FOREIGN_MODEL}"):
        client.fit(_initial_weights(), dict(FIT_CONFIG))
    # The fixture checks the module was imported neither by the worker nor here.


def test_allowed_data_dirs_and_dataset_files_are_trained_on(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _digits_like_npz(data_dir / "mnist.npz")
    npz = _digits_like_npz(tmp_path / "set.npz")
    policy = WorkerPolicy(data_dirs=(str(data_dir),), datasets=(npz,))
    worker = _serve_in_thread(tmp_path / "w.sock", policy=policy)
    parameters = _initial_weights()
    for run_config in (
        {**RUN_CONFIG, "dataset": "mnist", "data-dir": str(data_dir)},
        {**RUN_CONFIG, "dataset": npz},
    ):
        weights, count, _ = _fit_on_worker(
            worker, parameters, partition_id=0, run_config=run_config
        )
        expected, expected_count, _ = _in_process(run_config, parameters, partition_id=0)
        assert count == expected_count > 0
        assert all(np.array_equal(a, b) for a, b in zip(weights, expected, strict=True))


def test_gcfl_deploy_lets_its_workers_load_what_its_run_config_names(tmp_path):
    npz = str(tmp_path / "data.npz")
    policy = WorkerPolicy.for_run("tests.tiny_model:build", str(tmp_path), npz)
    run_config = {"model": "tests.tiny_model:build", "data-dir": str(tmp_path), "dataset": npz}
    assert policy.check(run_config) is None
    assert WorkerPolicy.for_run("", "", "digits") == WorkerPolicy()
    flags = policy.to_args()
    assert flags[flags.index("--allow-model") + 1] == "tests.tiny_model:build"


def test_fit_requests_and_replies_round_trip_through_their_headers():
    request = FitRequest(3, 5, dict(RUN_CONFIG), dict(FIT_CONFIG), 12.5)
    assert parse_request(json.loads(json.dumps(request.to_header()))) == request
    for reply in (Trained(40, {"val-loss": 0.5}), Failed("WorkerBusy", "8 requests")):
        assert parse_reply(json.loads(json.dumps(reply.to_header()))) == reply


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"partition-id": "0"}, "'partition-id' must be an integer"),
        ({"num-partitions": None}, "'num-partitions' must be an integer"),
        ({"fit-config": [1]}, "must be JSON objects"),
        ({"deadline-s": float("inf")}, "'deadline-s' must be seconds"),
    ],
)
def test_a_mangled_fit_request_is_refused_by_the_key_it_mangles(change, named):
    with pytest.raises(ProtocolError, match=named):
        parse_request({**FIT_HEADER, **change})


def test_a_reply_from_a_worker_of_another_version_is_refused_not_read(tmp_path):
    # A worker left running from another gcfl answers in its own words: the
    # ClientApp says so, rather than read its metrics as if they were ours.
    path, stop = str(tmp_path / "old.sock"), threading.Event()
    header = {**Trained(40, {}).to_header(), "version": PROTOCOL_VERSION + 1}
    _silent_worker(path, stop, reply=header)
    try:
        with pytest.raises(WorkerFitError, match=f"version {PROTOCOL_VERSION + 1}"):
            _fit_on_worker(path, _initial_weights(), partition_id=0)
    finally:
        stop.set()
