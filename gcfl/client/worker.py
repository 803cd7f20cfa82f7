"""The warm training worker: one long-lived process per SuperNode that trains for its ClientApps.

Flower 1.42 starts a fresh ClientApp process for every message, so without
help every round on every node pays the TensorFlow import and a first traced
fit. The worker pays them once: it imports TensorFlow when it starts, keeps
the process caches (dataset, partitions, compiled model) across runs and
rounds, and trains whenever a ClientApp process on its node asks over a Unix
socket (``worker-socket`` in the node config). A run with another dataset or
model gets its own cache entries, so nothing of one run leaks into another.

The ClientApp falls back to training in its own process, with a warning, when
no worker answers (no socket, a dead worker, a connection cut mid-fit);
training is deterministic, so the fallback gives the result the worker would
have. An error while training (bad weights, an injected fault) is an error of
the fit, reported as such, and not retried.

Run it with ``gcfl worker --socket PATH``; ``gcfl node`` starts one beside a
SuperNode, and ``gcfl deploy`` and docker-compose.yml do that for every node.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gcfl.client.worker_protocol import ProtocolError, receive_message, send_message

PROTOCOL_VERSION = 1
CONNECT_TIMEOUT_S = 5.0
NODE_CONFIG_KEY = "worker-socket"

log = logging.getLogger(__name__)

FitResult = tuple[list[np.ndarray], int, dict[str, Any]]


class WorkerUnavailable(ConnectionError):
    """No worker answered at the socket; the caller trains in-process instead."""


class WorkerFitError(RuntimeError):
    """The worker was reached and the fit itself failed there; the message is the worker's."""


# --- ClientApp side ----------------------------------------------------------


def fit_on_worker(
    socket_path: str,
    *,
    partition_id: int,
    num_partitions: int,
    run_config: Mapping[str, Any],
    parameters: list[np.ndarray],
    fit_config: Mapping[str, Any],
) -> FitResult:
    """Train on the node's worker; :class:`WorkerUnavailable` if none answers."""
    request = {
        "version": PROTOCOL_VERSION,
        "method": "fit",
        "partition-id": partition_id,
        "num-partitions": num_partitions,
        "run-config": dict(run_config),
        "fit-config": dict(fit_config),
    }
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(CONNECT_TIMEOUT_S)
            connection.connect(socket_path)
            connection.settimeout(None)  # a fit takes as long as it takes
            send_message(connection, request, parameters)
            reply, weights = receive_message(connection)
    except (OSError, ProtocolError) as error:
        raise WorkerUnavailable(f"no training worker answered at {socket_path}: {error}") from None
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
            send_message(connection, {"version": PROTOCOL_VERSION, "method": "ping"})
            reply, _ = receive_message(connection)
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


def _fit(header: Mapping[str, Any], parameters: list[np.ndarray]) -> tuple[dict[str, Any], list]:
    from gcfl.client.client import GcflClient
    from gcfl.config import parse_run_config

    try:
        partition_id = int(header["partition-id"])
        num_partitions = int(header["num-partitions"])
        run_config = header["run-config"]
        fit_config = header["fit-config"]
    except (KeyError, TypeError, ValueError) as error:
        raise ProtocolError(f"fit request lacks or mangles {error}") from None
    if not isinstance(run_config, dict) or not isinstance(fit_config, dict):
        raise ProtocolError("fit request's 'run-config' and 'fit-config' must be JSON objects")
    started = time.perf_counter()
    client = GcflClient(partition_id, num_partitions, parse_run_config(run_config))
    weights, num_examples, metrics = client.fit(parameters, fit_config)
    log.info(
        "trained partition %d, round %s, in %.2f s",
        partition_id,
        fit_config.get("server-round", "?"),
        time.perf_counter() - started,
    )
    return {"ok": True, "num-examples": num_examples, "metrics": metrics}, list(weights)


def handle(connection: socket.socket) -> None:
    """Answer one request on ``connection``; every failure becomes an error reply."""
    try:
        header, arrays = receive_message(connection)
        if header.get("version") != PROTOCOL_VERSION:
            raise ProtocolError(
                f"protocol version {header.get('version')!r}, this worker speaks "
                f"{PROTOCOL_VERSION}: restart the worker with the node's gcfl"
            )
        method = header.get("method")
        if method == "ping":
            reply, weights = {"ok": True, "pid": os.getpid()}, []
        elif method == "fit":
            reply, weights = _fit(header, arrays)
        else:
            raise ProtocolError(f"unknown method {method!r}; the worker knows 'fit' and 'ping'")
    except Exception as error:  # the caller must hear of every failure
        log.warning("request failed: %s: %s", type(error).__name__, error)
        reply, weights = {"ok": False, "error": type(error).__name__, "message": str(error)}, []
    try:
        send_message(connection, reply, weights)
    except OSError as error:
        log.warning("could not send the reply (the ClientApp has gone?): %s", error)


def _bind(socket_path: Path) -> socket.socket:
    if socket_path.exists():
        if ping(str(socket_path), timeout_s=1.0):
            raise RuntimeError(f"a training worker already answers at {socket_path}")
        socket_path.unlink()  # left by a worker that was killed
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    os.chmod(socket_path, 0o600)  # only the node's own user may ask for training
    listener.listen(16)
    return listener


def serve(socket_path: str | Path, *, max_requests: int | None = None) -> None:
    """Answer requests on ``socket_path`` one at a time until SIGTERM/SIGINT."""
    from gcfl.model import make_training_reproducible

    make_training_reproducible()  # TensorFlow's import, paid before the first request
    path = Path(socket_path)
    listener = _bind(path)
    log.info("training worker %d listening on %s", os.getpid(), path)
    served = 0
    try:
        while max_requests is None or served < max_requests:
            connection, _ = listener.accept()
            with connection:
                handle(connection)
            served += 1
    finally:
        listener.close()
        path.unlink(missing_ok=True)


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="gcfl worker", description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="gcfl worker: %(message)s")
    signal.signal(signal.SIGTERM, _stop)
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.socket)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
