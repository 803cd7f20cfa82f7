"""The ClientApp's side of the worker link: ask the node's warm worker to train, or ping it."""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from gcfl.worker.framing import (
    MESSAGE_TIMEOUT_S,
    MessageTimeout,
    ProtocolError,
    receive_message,
    send_message,
)
from gcfl.worker.messages import (
    BUSY_ERROR,
    CONNECT_TIMEOUT_S,
    NOT_ALLOWED_ERROR,
    Failed,
    FitRequest,
    FitResult,
    PingRequest,
    Pong,
    Trained,
    WorkerFitError,
    WorkerRefused,
    WorkerTimeout,
    WorkerUnavailable,
    parse_reply,
)


def time_left(deadline: float) -> float:
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
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(min(CONNECT_TIMEOUT_S, deadline_s))
            connection.connect(socket_path)
            # The worker drops the request if the training lock is not free
            # before then: nobody would read the reply any more.
            request = FitRequest(
                partition_id,
                num_partitions,
                dict(run_config),
                dict(fit_config),
                time_left(deadline),
            )
            try:
                send_message(
                    connection,
                    request.to_header(),
                    parameters,
                    timeout_s=min(MESSAGE_TIMEOUT_S, time_left(deadline)),
                    what="request",
                )
            except (BrokenPipeError, ConnectionResetError) as send_error:
                header, weights = _reply_left_before_close(connection, send_error)
            else:
                replying = True
                header, weights = receive_message(
                    connection, timeout_s=time_left(deadline), what="reply"
                )
    except (OSError, ProtocolError) as error:
        if time_left(deadline) <= 0 or (replying and isinstance(error, MessageTimeout)):
            raise WorkerTimeout(
                f"the training worker at {socket_path} did not answer within {deadline_s:g} s "
                f"(the run's round-timeout): {error}; not training in the ClientApp process "
                "instead, which would only answer later still"
            ) from None
        raise WorkerUnavailable(f"no training worker answered at {socket_path}: {error}") from None
    try:
        reply = parse_reply(header)
    except ProtocolError as error:
        raise WorkerFitError(f"the training worker at {socket_path}: {error}") from None
    if isinstance(reply, Failed) and reply.error == BUSY_ERROR:
        raise WorkerUnavailable(f"the training worker at {socket_path} is busy: {reply.message}")
    if isinstance(reply, Failed) and reply.error == NOT_ALLOWED_ERROR:
        raise WorkerRefused(
            f"the training worker at {socket_path} refused the fit: {reply.message}"
        )
    if isinstance(reply, Failed):
        raise WorkerFitError(
            f"the training worker at {socket_path} failed: {reply.error}: {reply.message}"
        )
    if not isinstance(reply, Trained):
        raise WorkerFitError(f"the training worker at {socket_path} answered a fit with {reply}")
    return weights, reply.num_examples, reply.metrics


def ping(socket_path: str, timeout_s: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a worker answers at ``socket_path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(timeout_s)
            connection.connect(socket_path)
            try:
                send_message(connection, PingRequest().to_header(), timeout_s=timeout_s)
            except (BrokenPipeError, ConnectionResetError) as send_error:
                header, _ = _reply_left_before_close(connection, send_error)
            else:
                header, _ = receive_message(connection, timeout_s=timeout_s, what="reply")
            return isinstance(parse_reply(header), Pong)
    except (OSError, ProtocolError):
        return False


def wait_for_worker(socket_path: str, timeout_s: float) -> bool:
    """Poll until a worker answers or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ping(socket_path, timeout_s=1.0):
            return True
        time.sleep(0.1)
    return False
