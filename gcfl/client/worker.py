"""The warm training worker: one long-lived process per SuperNode that trains for its ClientApps.

Flower 1.42 starts a fresh ClientApp process for every message, so without
help every round on every node pays the TensorFlow import and a first traced
fit. The worker pays them once: it imports TensorFlow when it starts, keeps
the process caches (dataset, partitions, compiled model) across runs and
rounds, and trains whenever a ClientApp process on its node asks over a Unix
socket (``worker-socket`` in the node config). A run with another dataset or
model gets its own cache entries, so nothing of one run leaks into another.

What the worker trusts, and what it does not:

* It trusts whoever can connect to ask for training, and nothing more. The
  socket is created mode 0600, so only the node's user (and root) can send a
  request at all.
* It does not trust what a request names. A fit request's run config comes
  from the federation's ServerApp, relayed by the ClientApp; its ``model`` (a
  ``package.module:function`` that would be imported and called) and its
  ``data-dir`` and ``dataset`` (files that would be read, CIFAR-10 batches
  unpickled) are checked against the node's own allow-list,
  :class:`WorkerPolicy`, before anything is imported or read. The node sets it
  (``gcfl worker``/``gcfl node`` flags ``--allow-model``, ``--data-dir``,
  ``--allow-dataset``); by default only gcfl's built-in CNN and built-in
  datasets (scikit-learn's digits, MNIST and CIFAR-10 from Keras' cache or
  download) pass. Anything else is refused with an error reply naming the key,
  the value and the flag that would allow it, and the worker keeps serving.
* It does not trust a message's framing or its sender's pace
  (:mod:`gcfl.client.worker_protocol`): no pickle, at most
  ``MAX_MESSAGE_BYTES`` per message checked before reading, and a deadline
  for the whole request (``REQUEST_TIMEOUT_S``, 30 s) and for sending the
  reply (``REPLY_TIMEOUT_S``). A malformed,
  oversized, stalled or trickling request ends with an error reply and costs
  the worker nothing else: each connection is received in its own thread (at
  most ``MAX_CONNECTIONS`` at once; one more is told the worker is busy), so
  other ClientApps keep being served. Only the training itself is serialised
  by a lock (one Keras model per process: fits never overlap), and a request
  waits for that lock no longer than its own deadline (``deadline-s`` in the
  request), so fits nobody waits for any more are not run.

What the ClientApp does when the worker does not deliver
(:func:`fit_on_worker`, called by ``WorkerBackedClient``):

* No worker takes the request (no socket, nobody listening, the worker busy,
  the connection cut while the round still has time):
  :class:`WorkerUnavailable`; the ClientApp trains in its own process, with a
  warning. Training is deterministic, so the fallback gives the result the
  worker would have.
* The worker took the request but sent no reply within the run's
  ``round-timeout``: :class:`WorkerTimeout`, and the fit fails with that
  reason. It is not retried in process: the server has stopped waiting for
  this reply, and a second training would only answer later still.
* An error while training (bad weights, an injected fault):
  :class:`WorkerFitError`, an error of the fit, reported as such and not
  retried.
* The worker refused what the request names (a model or data outside the
  node's allow-list): :class:`WorkerRefused`, a :class:`WorkerFitError`. Not
  retried in process either: that would run the refused model in the
  ClientApp's process instead.

Run it with ``gcfl worker --socket PATH [--allow-model SPEC] [--data-dir DIR]
[--allow-dataset NPZ]``; ``gcfl node`` starts one beside a SuperNode with the
same flags, and ``gcfl deploy`` and docker-compose.yml do that for every node.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import shlex
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gcfl.client.worker_protocol import (
    MESSAGE_TIMEOUT_S,
    MessageTimeout,
    ProtocolError,
    receive_message,
    send_message,
)
from gcfl.protocol import NUM_PARTITIONS, PARTITION_ID, ROUND

PROTOCOL_VERSION = 1
CONNECT_TIMEOUT_S = 5.0
NODE_CONFIG_KEY = "worker-socket"
# The whole request, from its first byte to its last: a few MB over a local
# socket take milliseconds, so only a stalled or hostile sender gets near it.
REQUEST_TIMEOUT_S = MESSAGE_TIMEOUT_S
# Sending the reply: the ClientApp is waiting for it, so it is read at once.
REPLY_TIMEOUT_S = MESSAGE_TIMEOUT_S
# Connections received at once. A node runs one ClientApp per message, a few
# at most; the rest is room for stalled peers, each gone after its deadline.
MAX_CONNECTIONS = 8
# How long a request without its own ``deadline-s`` waits for the training
# lock: the default round-timeout, after which nobody waits for its reply.
DEFAULT_FIT_WAIT_S = 1800.0
# How long serve(max_requests=...) waits for its last requests before returning.
SHUTDOWN_TIMEOUT_S = 60.0
BUSY_ERROR = "WorkerBusy"
NOT_ALLOWED_ERROR = "NotAllowed"
# The run config's ``model`` for gcfl's own seed CNN: always allowed.
BUILTIN_MODEL = ""

log = logging.getLogger(__name__)

FitResult = tuple[list[np.ndarray], int, dict[str, Any]]


class WorkerUnavailable(ConnectionError):
    """No worker answered at the socket; the caller trains in-process instead."""


class WorkerFitError(RuntimeError):
    """The worker was reached and the fit itself failed there; the message is the worker's."""


class WorkerTimeout(TimeoutError):
    """The worker took the request and sent no reply in time; not to be retried in process."""


class WorkerRefused(WorkerFitError):
    """The worker refused a model or data outside its node's allow-list; not retried in process."""


class NotAllowed(PermissionError):
    """A fit request names a model or data that the node's :class:`WorkerPolicy` does not allow."""


def _not_listed(value: str, allowed: Sequence[str]) -> bool:
    """Whether absolute ``value`` is none of ``allowed``, compared as resolved real paths.

    Resolved, so that ``/allowed/../etc`` or a symlink inside an allowed
    folder that points out of it is what it leads to, not what it spells.
    """
    if not os.path.isabs(value):
        return True
    real = os.path.realpath(value)
    return real not in {os.path.realpath(path) for path in allowed}


def _resolved_note(value: str) -> str:
    real = os.path.realpath(value) if os.path.isabs(value) else value
    return "" if real == os.path.normpath(value) else f" (resolves to {real})"


@dataclass(frozen=True)
class WorkerPolicy:
    """What a fit request may name, set by the node: the worker's guard on its run config.

    gcfl's built-in CNN (``model`` empty) and built-in datasets (digits, and
    mnist/cifar10 from Keras' cache or download when ``data-dir`` is empty)
    are always allowed: they run only gcfl's own code on files the node's
    user put in its Keras cache. Beyond them a request may name only
    ``models`` (``package.module:function`` specs, compared as spelled: the
    spec is what gets imported), ``data_dirs`` (folders) and ``datasets``
    (``.npz`` files), the paths compared after resolving symlinks and ``..``.
    """

    models: tuple[str, ...] = ()
    data_dirs: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()

    def check(self, run_config: Mapping[str, Any]) -> str | None:
        """Why this run config may not be trained here, or None if it may.

        Reads no file and imports nothing: only the paths are resolved.
        """
        from gcfl.config import BUILTIN_DATASETS

        model = run_config.get("model", BUILTIN_MODEL)
        if model != BUILTIN_MODEL and (not isinstance(model, str) or model not in self.models):
            return self._refusal("model", model, "--allow-model")
        data_dir = run_config.get("data-dir", "")
        if data_dir != "" and (
            not isinstance(data_dir, str) or _not_listed(data_dir, self.data_dirs)
        ):
            return self._refusal("data-dir", data_dir, "--data-dir")
        dataset = run_config.get("dataset", "digits")
        if dataset not in BUILTIN_DATASETS and (
            not isinstance(dataset, str)
            or not dataset.endswith(".npz")
            or _not_listed(dataset, self.datasets)
        ):
            return self._refusal("dataset", dataset, "--allow-dataset")
        return None

    @staticmethod
    def _refusal(key: str, value: object, flag: str) -> str:
        if not isinstance(value, str):
            return f"{key} {value!r} is not allowed on this node: it must be a string"
        if key != "model" and not os.path.isabs(value):
            return f"{key} {value!r} is not allowed on this node: it must be an absolute path"
        return (
            f"{key} {value!r}{'' if key == 'model' else _resolved_note(value)} is not allowed "
            f"on this node; start the worker with {flag} {shlex.quote(value)}"
        )

    @classmethod
    def for_run(cls, model: str, data_dir: str, dataset: str) -> WorkerPolicy:
        """What one run config names, for nodes whose operator also chose that run config."""
        return cls(
            models=(model,) if model else (),
            data_dirs=(data_dir,) if data_dir else (),
            datasets=(dataset,) if dataset.endswith(".npz") else (),
        )

    def to_args(self) -> list[str]:
        """The ``gcfl worker`` flags that give a worker this policy."""
        flags = [("--allow-model", self.models), ("--data-dir", self.data_dirs)]
        flags.append(("--allow-dataset", self.datasets))
        return [part for flag, values in flags for value in values for part in (flag, value)]


def _model_arg(value: str) -> str:
    if value != BUILTIN_MODEL and not (":" in value and all(value.split(":", 1))):
        raise argparse.ArgumentTypeError(f"{value!r} is not 'package.module:function'")
    return value


def _folder_arg(value: str) -> str:
    # Absolute now: the worker may run in another working directory than its flags were written in.
    return os.path.abspath(os.path.expanduser(value))


def _npz_arg(value: str) -> str:
    if not value.endswith(".npz"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a .npz file")
    return os.path.abspath(os.path.expanduser(value))


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """The allow-list flags of ``gcfl worker`` and ``gcfl node`` (see :class:`WorkerPolicy`)."""
    parser.add_argument(
        "--allow-model",
        action="append",
        type=_model_arg,
        metavar="SPEC",
        help="a run config's 'model' (package.module:function) this worker may import and "
        "call; repeatable (default: only gcfl's built-in CNN)",
    )
    parser.add_argument(
        "--data-dir",
        action="append",
        type=_folder_arg,
        metavar="DIR",
        help="a folder a run config's 'data-dir' may name, for the worker to read mnist or "
        "CIFAR-10 from; repeatable (default: none, only Keras' cache or download)",
    )
    parser.add_argument(
        "--allow-dataset",
        action="append",
        type=_npz_arg,
        metavar="NPZ",
        help="a .npz file a run config's 'dataset' may name; repeatable (default: none, "
        "only the built-in datasets)",
    )


def policy_from_args(args: argparse.Namespace) -> WorkerPolicy:
    """The :class:`WorkerPolicy` that :func:`add_policy_arguments`' flags ask for."""
    return WorkerPolicy(
        models=tuple(args.allow_model or ()),
        data_dirs=tuple(args.data_dir or ()),
        datasets=tuple(args.allow_dataset or ()),
    )


def _left(deadline: float) -> float:
    return deadline - time.monotonic()


def _reply_left_before_close(
    connection: socket.socket, send_error: OSError
) -> tuple[dict[str, Any], list]:
    # A full worker writes its "busy" reply and closes without reading, so
    # our send can fail while that reply still waits in our receive buffer.
    try:
        return receive_message(connection, timeout_s=1.0, what="reply")
    except (OSError, ProtocolError):
        raise send_error from None


# --- ClientApp side ----------------------------------------------------------


def fit_on_worker(
    socket_path: str,
    *,
    partition_id: int,
    num_partitions: int,
    run_config: Mapping[str, Any],
    parameters: list[np.ndarray],
    fit_config: Mapping[str, Any],
    deadline_s: float,
) -> FitResult:
    """Train on the node's worker, waiting at most ``deadline_s`` (the round-timeout) in all.

    :class:`WorkerUnavailable` if no worker takes the request (train in process
    instead); :class:`WorkerTimeout` if it took it and ``deadline_s`` passed
    without a reply (do not retry); :class:`WorkerFitError` if the fit failed.
    """
    deadline = time.monotonic() + deadline_s
    replying = False
    request = {
        "version": PROTOCOL_VERSION,
        "method": "fit",
        PARTITION_ID: partition_id,
        NUM_PARTITIONS: num_partitions,
        "run-config": dict(run_config),
        "fit-config": dict(fit_config),
    }
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(min(CONNECT_TIMEOUT_S, deadline_s))
            connection.connect(socket_path)
            # The worker drops the request if the training lock is not free
            # before then: nobody would read the reply any more.
            request["deadline-s"] = _left(deadline)
            try:
                send_message(
                    connection,
                    request,
                    parameters,
                    timeout_s=min(MESSAGE_TIMEOUT_S, _left(deadline)),
                    what="request",
                )
            except (BrokenPipeError, ConnectionResetError) as send_error:
                reply, weights = _reply_left_before_close(connection, send_error)
            else:
                replying = True
                reply, weights = receive_message(
                    connection, timeout_s=_left(deadline), what="reply"
                )
    except (OSError, ProtocolError) as error:
        if _left(deadline) <= 0 or (replying and isinstance(error, MessageTimeout)):
            raise WorkerTimeout(
                f"the training worker at {socket_path} did not answer within {deadline_s:g} s "
                f"(the run's round-timeout): {error}; not training in the ClientApp process "
                "instead, which would only answer later still"
            ) from None
        raise WorkerUnavailable(f"no training worker answered at {socket_path}: {error}") from None
    if reply.get("error") == BUSY_ERROR:
        raise WorkerUnavailable(f"the training worker at {socket_path} is busy: {reply['message']}")
    if reply.get("error") == NOT_ALLOWED_ERROR:
        raise WorkerRefused(
            f"the training worker at {socket_path} refused the fit: {reply.get('message', '')}"
        )
    if not reply.get("ok"):
        raise WorkerFitError(
            f"the training worker at {socket_path} failed: "
            f"{reply.get('error', 'Error')}: {reply.get('message', '')}"
        )
    return weights, int(reply["num-examples"]), dict(reply["metrics"])


def ping(socket_path: str, timeout_s: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a worker answers at ``socket_path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(timeout_s)
            connection.connect(socket_path)
            try:
                send_message(
                    connection,
                    {"version": PROTOCOL_VERSION, "method": "ping"},
                    timeout_s=timeout_s,
                )
            except (BrokenPipeError, ConnectionResetError) as send_error:
                reply, _ = _reply_left_before_close(connection, send_error)
            else:
                reply, _ = receive_message(connection, timeout_s=timeout_s, what="reply")
    except (OSError, ProtocolError):
        return False
    return bool(reply.get("ok"))


def wait_for_worker(socket_path: str, timeout_s: float) -> bool:
    """Poll until a worker answers or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ping(socket_path, timeout_s=1.0):
            return True
        time.sleep(0.1)
    return False


# --- Worker side -------------------------------------------------------------


@dataclass(frozen=True)
class _FitRequest:
    partition_id: int
    num_partitions: int
    run_config: dict[str, Any]
    fit_config: dict[str, Any]


def _fit_request(header: Mapping[str, Any], policy: WorkerPolicy) -> _FitRequest:
    """The request's fields, checked against ``policy`` before anything is imported or read."""
    from gcfl.config import config_of

    try:
        request = _FitRequest(
            int(header[PARTITION_ID]),
            int(header[NUM_PARTITIONS]),
            header["run-config"],
            header["fit-config"],
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ProtocolError(f"fit request lacks or mangles {error}") from None
    if not isinstance(request.run_config, dict) or not isinstance(request.fit_config, dict):
        raise ProtocolError("fit request's 'run-config' and 'fit-config' must be JSON objects")
    config_of(request.run_config)  # pure checks of every value; a ConfigError names the key
    refusal = policy.check(request.run_config)
    if refusal is not None:
        raise NotAllowed(refusal)
    return request


def _fit(request: _FitRequest, parameters: list[np.ndarray]) -> tuple[dict[str, Any], list]:
    from gcfl.client.client import GcflClient
    from gcfl.config import config_of

    partition_id, fit_config = request.partition_id, request.fit_config
    started = time.perf_counter()
    client = GcflClient(partition_id, request.num_partitions, config_of(request.run_config))
    weights, num_examples, metrics = client.fit(parameters, fit_config)
    log.info(
        "trained partition %d, round %s, in %.2f s",
        partition_id,
        fit_config.get(ROUND, "?"),
        time.perf_counter() - started,
    )
    return {"ok": True, "num-examples": num_examples, "metrics": metrics}, list(weights)


# One Keras model and one set of process caches: fits must never overlap.
_FIT_LOCK = threading.Lock()


def _wait_s(header: Mapping[str, Any]) -> float:
    value = header.get("deadline-s", DEFAULT_FIT_WAIT_S)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError(f"fit request's 'deadline-s' must be seconds, got {value!r}")
    if value <= 0:
        raise TimeoutError("the request's deadline had passed when it arrived; not trained")
    return float(value)


def _fit_when_free(
    header: Mapping[str, Any],
    parameters: list[np.ndarray],
    received_at: float,
    policy: WorkerPolicy,
) -> tuple[dict[str, Any], list]:
    wait_s = _wait_s(header)
    # Before the lock: a refused request neither waits for nor delays an honest fit.
    request = _fit_request(header, policy)
    if not _FIT_LOCK.acquire(timeout=max(0.0, received_at + wait_s - time.monotonic())):
        raise TimeoutError(
            f"another fit held the worker past this request's deadline of {wait_s:g} s; "
            "not trained, as nobody waits for the result any more"
        )
    try:
        return _fit(request, parameters)
    finally:
        _FIT_LOCK.release()


def _error_reply(error: BaseException) -> dict[str, Any]:
    return {"ok": False, "error": type(error).__name__, "message": str(error)}


_DEFAULT_POLICY = WorkerPolicy()


def _send_reply(connection: socket.socket, reply: dict[str, Any], weights: list) -> None:
    try:
        send_message(connection, reply, weights, timeout_s=REPLY_TIMEOUT_S, what="reply")
    except (OSError, MessageTimeout) as error:
        log.warning("could not send the reply (the ClientApp has gone?): %s", error)


def handle(
    connection: socket.socket,
    *,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
    policy: WorkerPolicy = _DEFAULT_POLICY,
    on_reply_ready: Callable[[], None] | None = None,
) -> None:
    """Answer one request on ``connection``; every failure becomes an error reply.

    The request must arrive whole within ``request_timeout_s``; a fit whose
    run config ``policy`` allows then waits for the process's training lock,
    at most until the request's deadline. ``on_reply_ready`` is called once
    the reply is decided, before it is sent.
    """
    try:
        header, arrays = receive_message(connection, timeout_s=request_timeout_s, what="request")
        received_at = time.monotonic()
        if header.get("version") != PROTOCOL_VERSION:
            raise ProtocolError(
                f"protocol version {header.get('version')!r}, this worker speaks "
                f"{PROTOCOL_VERSION}: restart the worker with the node's gcfl"
            )
        method = header.get("method")
        if method == "ping":
            no_weights: list[np.ndarray] = []
            reply, weights = {"ok": True, "pid": os.getpid()}, no_weights
        elif method == "fit":
            reply, weights = _fit_when_free(header, arrays, received_at, policy)
        else:
            raise ProtocolError(f"unknown method {method!r}; the worker knows 'fit' and 'ping'")
    except Exception as error:  # the caller must hear of every failure
        log.warning("request failed: %s: %s", type(error).__name__, error)
        reply, weights = _error_reply(error), []
    if on_reply_ready is not None:
        on_reply_ready()
    try:
        _send_reply(connection, reply, weights)
    except ProtocolError as error:  # a reply over the size cap: say so rather than go silent
        log.warning("reply not sent: %s", error)
        _send_reply(connection, _error_reply(error), [])


def _bind(socket_path: Path) -> socket.socket:
    try:
        mode = socket_path.lstat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None:
        # Only a socket can be a killed worker's leftover; anything else (a
        # file, a folder, a symlink) is someone's data or a mistyped --socket.
        if not stat.S_ISSOCK(mode):
            raise RuntimeError(
                f"{socket_path} exists and is not a Unix socket; not replacing it: "
                "give --socket a free path"
            )
        if ping(str(socket_path), timeout_s=1.0):
            raise RuntimeError(f"a training worker already answers at {socket_path}")
        socket_path.unlink()  # left by a worker that was killed
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    # Before listen(): until then a connect is refused, so no one else's gets in.
    os.chmod(socket_path, 0o600)  # only the node's own user may ask for training
    listener.listen(16)
    return listener


def _serve_connection(
    connection: socket.socket,
    slots: threading.BoundedSemaphore,
    request_timeout_s: float,
    policy: WorkerPolicy,
) -> None:
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            slots.release()

    try:
        with connection:
            # The slot is free before the reply leaves: a client that has read
            # its reply and connects again at once must not be told "busy".
            handle(
                connection,
                request_timeout_s=request_timeout_s,
                policy=policy,
                on_reply_ready=release,
            )
    finally:
        release()


def _refuse_busy(connection: socket.socket, max_connections: int) -> None:
    log.warning("refused a connection: %d requests are being served already", max_connections)
    with connection, contextlib.suppress(OSError, MessageTimeout):
        # A fresh socket's buffer holds this small reply, so the accept
        # loop does not wait on the peer.
        send_message(
            connection,
            {
                "ok": False,
                "error": BUSY_ERROR,
                "message": f"{max_connections} requests are being served already",
            },
            timeout_s=1.0,
            what="reply",
        )


def serve(
    socket_path: str | Path,
    *,
    max_requests: int | None = None,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
    policy: WorkerPolicy = _DEFAULT_POLICY,
) -> None:
    """Answer requests on ``socket_path`` until SIGTERM/SIGINT, one thread per connection.

    At most ``max_connections`` are served at once (one more gets a busy
    reply); each request must arrive within ``request_timeout_s``; a fit
    whose run config ``policy`` refuses gets an error reply; fits run one at
    a time. After ``max_requests`` connections it stops accepting and
    waits up to ``SHUTDOWN_TIMEOUT_S`` for those still being served.
    """
    from gcfl.model import make_training_reproducible

    make_training_reproducible()  # TensorFlow's import, paid before the first request
    path = Path(socket_path)
    listener = _bind(path)
    log.info("training worker %d listening on %s", os.getpid(), path)
    slots = threading.BoundedSemaphore(max_connections)
    handlers: list[threading.Thread] = []
    served = 0
    try:
        while max_requests is None or served < max_requests:
            connection, _ = listener.accept()
            served += 1
            if not slots.acquire(blocking=False):
                _refuse_busy(connection, max_connections)
                continue
            handler = threading.Thread(
                target=_serve_connection,
                args=(connection, slots, request_timeout_s, policy),
                name=f"gcfl-worker-request-{served}",
                daemon=True,  # a stalled peer must not keep the process from exiting
            )
            try:
                handler.start()
            except RuntimeError:  # no thread to be had: refuse, keep serving
                slots.release()
                _refuse_busy(connection, max_connections)
                continue
            handlers = [thread for thread in handlers if thread.is_alive()] + [handler]
        shutdown = time.monotonic() + SHUTDOWN_TIMEOUT_S
        for handler in handlers:
            handler.join(timeout=max(0.0, _left(shutdown)))
    finally:
        listener.close()
        path.unlink(missing_ok=True)


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gcfl worker", description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    add_policy_arguments(parser)
    args = parser.parse_args(argv)
    policy = policy_from_args(args)
    logging.basicConfig(level=logging.INFO, format="gcfl worker: %(message)s")
    signal.signal(signal.SIGTERM, _stop)
    log.info(
        "allowed beyond the built-ins: models %s, data-dirs %s, datasets %s",
        list(policy.models) or "none",
        list(policy.data_dirs) or "none",
        list(policy.datasets) or "none",
    )
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.socket, policy=policy)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
