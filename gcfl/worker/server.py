"""The warm training worker itself: a threaded Unix-socket server that trains for its node.

Run as ``gcfl worker --socket PATH`` (:mod:`gcfl.cli.worker`), which gives
:func:`serve` the client's training as its ``train``: the worker is the
transport, the lock and the deadlines, and imports no training code itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gcfl.protocol import ROUND
from gcfl.worker.client import ping, time_left
from gcfl.worker.framing import MessageTimeout, ProtocolError, receive_message, send_message
from gcfl.worker.messages import (
    BUSY_ERROR,
    MAX_CONNECTIONS,
    REPLY_TIMEOUT_S,
    REQUEST_TIMEOUT_S,
    SHUTDOWN_TIMEOUT_S,
    Failed,
    FitRequest,
    FitResult,
    PingRequest,
    Pong,
    Reply,
    Trained,
    parse_request,
)
from gcfl.worker.policy import (
    NotAllowed,
    WorkerPolicy,
)

log = logging.getLogger(__name__)


def _check_fit_request(request: FitRequest, policy: WorkerPolicy) -> None:
    """The request's run config, checked against ``policy`` before anything is imported or read."""
    from gcfl.config import config_of

    config_of(request.run_config)  # pure checks of every value; a ConfigError names the key
    refusal = policy.check(request.run_config)
    if refusal is not None:
        raise NotAllowed(refusal)


# What the worker runs for a fit request it accepted: the arrays trained, the
# number of examples, the fit metrics (the ClientApp's own fit).
Trainer = Callable[[FitRequest, list[np.ndarray]], FitResult]


def _fit(request: FitRequest, parameters: list[np.ndarray], train: Trainer) -> tuple[Trained, list]:
    started = time.perf_counter()
    weights, num_examples, metrics = train(request, parameters)
    log.info(
        "trained partition %d, round %s, in %.2f s",
        request.partition_id,
        request.fit_config.get(ROUND, "?"),
        time.perf_counter() - started,
    )
    return Trained(num_examples, dict(metrics)), list(weights)


# One Keras model and one set of process caches: fits must never overlap.
_FIT_LOCK = threading.Lock()


def _fit_when_free(
    request: FitRequest,
    parameters: list[np.ndarray],
    received_at: float,
    policy: WorkerPolicy,
    train: Trainer,
) -> tuple[Trained, list]:
    if request.deadline_s <= 0:
        raise TimeoutError("the request's deadline had passed when it arrived; not trained")
    # Before the lock: a refused request neither waits for nor delays an honest fit.
    _check_fit_request(request, policy)
    wait_s = request.deadline_s
    if not _FIT_LOCK.acquire(timeout=max(0.0, received_at + wait_s - time.monotonic())):
        raise TimeoutError(
            f"another fit held the worker past this request's deadline of {wait_s:g} s; "
            "not trained, as nobody waits for the result any more"
        )
    try:
        return _fit(request, parameters, train)
    finally:
        _FIT_LOCK.release()


_DEFAULT_POLICY = WorkerPolicy()


def _send_reply(connection: socket.socket, reply: Reply, weights: list) -> None:
    try:
        send_message(
            connection, reply.to_header(), weights, timeout_s=REPLY_TIMEOUT_S, what="reply"
        )
    except (OSError, MessageTimeout) as error:
        log.warning("could not send the reply (the ClientApp has gone?): %s", error)


def handle(
    connection: socket.socket,
    *,
    train: Trainer,
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
    reply: Reply
    weights: list[np.ndarray] = []
    try:
        header, arrays = receive_message(connection, timeout_s=request_timeout_s, what="request")
        received_at = time.monotonic()
        request = parse_request(header)
        if isinstance(request, PingRequest):
            reply = Pong(os.getpid())
        else:
            reply, weights = _fit_when_free(request, arrays, received_at, policy, train)
    except Exception as error:  # the caller must hear of every failure
        log.warning("request failed: %s: %s", type(error).__name__, error)
        reply, weights = Failed.of(error), []
    if on_reply_ready is not None:
        on_reply_ready()
    try:
        _send_reply(connection, reply, weights)
    except ProtocolError as error:  # a reply over the size cap: say so rather than go silent
        log.warning("reply not sent: %s", error)
        _send_reply(connection, Failed.of(error), [])


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
    train: Trainer,
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
                train=train,
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
        busy = Failed(BUSY_ERROR, f"{max_connections} requests are being served already")
        send_message(connection, busy.to_header(), timeout_s=1.0, what="reply")


def serve(
    socket_path: str | Path,
    *,
    train: Trainer,
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
                args=(connection, slots, request_timeout_s, policy, train),
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
            handler.join(timeout=max(0.0, time_left(shutdown)))
    finally:
        listener.close()
        path.unlink(missing_ok=True)
