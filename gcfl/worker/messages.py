"""The worker link's contract: its version, deadlines, error names, and every message typed.

What the ClientApp (:mod:`gcfl.worker.client`) and the worker
(:mod:`gcfl.worker.server`) both rely on; framing is :mod:`gcfl.worker.framing`.
Each message is a JSON header (and the arrays beside it); each side checks
the other's version and the header's form on reading, so a worker from
another gcfl, or a peer that is not one, is refused by name, not misread.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gcfl.protocol import NUM_PARTITIONS, PARTITION_ID
from gcfl.worker.framing import MESSAGE_TIMEOUT_S, ProtocolError

# 2: every message typed, and replies carry the version too.
PROTOCOL_VERSION = 2
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
FitResult = tuple[list[np.ndarray], int, dict[str, Any]]


class WorkerUnavailable(ConnectionError):
    """No worker answered at the socket; the caller trains in-process instead."""


class WorkerFitError(RuntimeError):
    """The worker was reached and the fit itself failed there; the message is the worker's."""


class WorkerTimeout(TimeoutError):
    """The worker took the request and sent no reply in time; not to be retried in process."""


class WorkerRefused(WorkerFitError):
    """The worker refused a model or data outside its node's allow-list; not retried in process."""


# Header keys.
VERSION = "version"
METHOD = "method"
RUN_CONFIG = "run-config"
FIT_CONFIG = "fit-config"
DEADLINE_S = "deadline-s"
OK = "ok"
NUM_EXAMPLES = "num-examples"
METRICS = "metrics"
PID = "pid"
ERROR = "error"
MESSAGE = "message"


def _check_version(header: Mapping[str, Any], sender: str) -> None:
    version = header.get(VERSION)
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        spoken = "no version (an older gcfl)" if version is None else f"version {version!r}"
        raise ProtocolError(
            f"{sender} speaks worker protocol {spoken}, this side {PROTOCOL_VERSION}: "
            "run the node's worker and ClientApp from one gcfl"
        )


@dataclass(frozen=True)
class PingRequest:
    """Is a worker listening?"""

    def to_header(self) -> dict[str, Any]:
        return {VERSION: PROTOCOL_VERSION, METHOD: "ping"}


@dataclass(frozen=True)
class FitRequest:
    """Train one partition on the arrays sent, within ``deadline_s`` of the request's arrival."""

    partition_id: int
    num_partitions: int
    run_config: dict[str, Any]
    fit_config: dict[str, Any]
    deadline_s: float = DEFAULT_FIT_WAIT_S

    def to_header(self) -> dict[str, Any]:
        return {
            VERSION: PROTOCOL_VERSION,
            METHOD: "fit",
            PARTITION_ID: self.partition_id,
            NUM_PARTITIONS: self.num_partitions,
            RUN_CONFIG: self.run_config,
            FIT_CONFIG: self.fit_config,
            DEADLINE_S: self.deadline_s,
        }


def _integer(header: Mapping[str, Any], key: str) -> int:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"fit request's {key!r} must be an integer, got {value!r}")
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError(f"fit request's {DEADLINE_S!r} must be seconds, got {value!r}")
    return float(value)


def parse_request(header: Mapping[str, Any]) -> PingRequest | FitRequest:
    """The request a ClientApp sent; :class:`ProtocolError` naming what is wrong with it."""
    _check_version(header, "the ClientApp")
    method = header.get(METHOD)
    if method == "ping":
        return PingRequest()
    if method != "fit":
        raise ProtocolError(f"unknown method {method!r}; the worker knows 'fit' and 'ping'")
    run_config, fit_config = header.get(RUN_CONFIG), header.get(FIT_CONFIG)
    if not isinstance(run_config, dict) or not isinstance(fit_config, dict):
        raise ProtocolError(f"fit request's {RUN_CONFIG!r} and {FIT_CONFIG!r} must be JSON objects")
    return FitRequest(
        _integer(header, PARTITION_ID),
        _integer(header, NUM_PARTITIONS),
        run_config,
        fit_config,
        _seconds(header.get(DEADLINE_S, DEFAULT_FIT_WAIT_S)),
    )


@dataclass(frozen=True)
class Pong:
    """A worker answered a ping: its process id."""

    pid: int

    def to_header(self) -> dict[str, Any]:
        return {VERSION: PROTOCOL_VERSION, OK: True, PID: self.pid}


@dataclass(frozen=True)
class Trained:
    """A fit's result: the trained arrays travel beside this header."""

    num_examples: int
    metrics: dict[str, Any]

    def to_header(self) -> dict[str, Any]:
        return {
            VERSION: PROTOCOL_VERSION,
            OK: True,
            NUM_EXAMPLES: self.num_examples,
            METRICS: self.metrics,
        }


@dataclass(frozen=True)
class Failed:
    """The request failed: ``error`` names the kind (an exception's name, BUSY_ERROR,
    NOT_ALLOWED_ERROR), ``message`` says what happened."""

    error: str
    message: str

    @classmethod
    def of(cls, error: BaseException) -> Failed:
        return cls(type(error).__name__, str(error))

    def to_header(self) -> dict[str, Any]:
        return {VERSION: PROTOCOL_VERSION, OK: False, ERROR: self.error, MESSAGE: self.message}


Reply = Pong | Trained | Failed


def parse_reply(header: Mapping[str, Any]) -> Reply:
    """The reply a worker sent; :class:`ProtocolError` naming what is wrong with it."""
    _check_version(header, "the worker")
    if header.get(OK) is not True:
        return Failed(str(header.get(ERROR, "Error")), str(header.get(MESSAGE, "")))
    if PID in header:
        pid = header[PID]
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise ProtocolError(f"the worker's {PID!r} must be an integer, got {pid!r}")
        return Pong(pid)
    count, metrics = header.get(NUM_EXAMPLES), header.get(METRICS)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ProtocolError(f"the worker's {NUM_EXAMPLES!r} must be a count, got {count!r}")
    if not isinstance(metrics, dict):
        raise ProtocolError(f"the worker's {METRICS!r} must be a JSON object, got {metrics!r}")
    return Trained(count, metrics)
