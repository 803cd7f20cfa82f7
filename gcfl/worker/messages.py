"""The worker link's contract: its version, deadlines, error names and typed replies.

What the ClientApp (:mod:`gcfl.worker.client`) and the worker
(:mod:`gcfl.worker.server`) both rely on; framing is :mod:`gcfl.worker.framing`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gcfl.worker.framing import MESSAGE_TIMEOUT_S

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
FitResult = tuple[list[np.ndarray], int, dict[str, Any]]


class WorkerUnavailable(ConnectionError):
    """No worker answered at the socket; the caller trains in-process instead."""


class WorkerFitError(RuntimeError):
    """The worker was reached and the fit itself failed there; the message is the worker's."""


class WorkerTimeout(TimeoutError):
    """The worker took the request and sent no reply in time; not to be retried in process."""


class WorkerRefused(WorkerFitError):
    """The worker refused a model or data outside its node's allow-list; not retried in process."""
