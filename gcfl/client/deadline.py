"""A deadline on the ClientApp's own calls: a fit that hangs must not hold its process for good.

The server stops waiting for a reply at the round's deadline, but under
Flower's simulation the ClientApp runs in one of a few Ray actors, and an
actor whose call never returns serves no other client again: the run's later
rounds starve and the simulation cannot end. Each call therefore runs in a
thread of its own; once the deadline (the round's, plus a margin, so that the
server has already recorded the client as timed-out) has passed, the call
fails with :class:`CallAbandoned` and the process goes on serving. Python
cannot stop the abandoned thread: it runs on (a sleep costs nothing; a
computation shares the process' model with later calls, so their results
are not to be trusted while it does, which the server's own checks bound).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from flwr.client import Client
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetParametersIns,
    GetParametersRes,
    GetPropertiesIns,
    GetPropertiesRes,
)

from gcfl.protocol import ABANDONED_CALL

Result = TypeVar("Result")

# A call starts after its round did, so the round's timeout from its own start is past
# the server's deadline: the server has recorded the client as timed-out by then.
MARGIN_S = 1.0
# The process' own adaptive limit: twice the server's multiple of the median call this
# process has served, and never under a minute (the server waits at least 30 s).
HISTORY_FACTOR = 2.0
MIN_ADAPTIVE_S = 60.0
# A process' first call (TensorFlow's import and tracing included) before it knows more.
# An abandoned call counts as having taken its limit, so a process whose first calls are
# legitimately slower lets the next ones run longer.
FIRST_CALL_S = 600.0
# The calls a process remembers (the most recent).
KEPT_CALLS = 100
# How often a waiting call looks for the ServerApp's end mark (gcfl.run_end).
POLL_S = 1.0


class CallAbandoned(RuntimeError):
    """A ClientApp call ran past its deadline and was left to finish on its own."""


class CallTimes:
    """How long this process' calls took: the per-process record the adaptive limit reads.

    Under simulation one process (a Ray actor) serves many clients, so after
    a few calls it knows what a call costs here; a deployed node's process
    learns it from its own rounds. The median, not the slowest: a process'
    first call (TensorFlow's import and tracing) is an outlier that would
    hold a hung call's process for minutes.
    """

    def __init__(self) -> None:
        self.durations: list[float] = []
        self._lock = threading.Lock()

    @property
    def calls(self) -> int:
        return len(self.durations)

    def record(self, seconds: float) -> None:
        with self._lock:
            self.durations = [*self.durations[-(KEPT_CALLS - 1) :], seconds]

    def limit(self, round_timeout: float, factor: float) -> float:
        """Seconds after which a call is abandoned.

        The round's timeout plus a second (the server has recorded the client
        as timed-out by then), or, with ``factor`` > 0, sooner: ten minutes for
        the process' first call, then ``2 x factor`` times its median call (an
        abandoned one counting as its limit), at least a minute. A hung call so
        frees its process about when the server's adaptive deadline
        (``round-deadline-factor``) gives up on it.
        """
        fixed = round_timeout + MARGIN_S
        with self._lock:
            if factor <= 0:
                return fixed
            if not self.durations:
                return min(fixed, FIRST_CALL_S)
            typical = float(sorted(self.durations)[len(self.durations) // 2])
            return min(fixed, max(MIN_ADAPTIVE_S, HISTORY_FACTOR * factor * typical))


# The process' call record: per-process by design, as the model and dataset caches are.
CALL_TIMES = CallTimes()


def never_ended() -> bool:
    """A run end nobody marks: the call keeps its own deadline."""
    return False


def call_with_deadline(
    call: Callable[[], Result],
    seconds: float,
    what: str,
    run_ended: Callable[[], bool] = never_ended,
) -> Result:
    """``call()``'s result or exception, or :class:`CallAbandoned` after ``seconds`` or as soon
    as ``run_ended()`` says the run's ServerApp has finished."""
    results: list[Result] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(call())
        except BaseException as error:  # re-raised in the caller's thread
            errors.append(error)

    thread = threading.Thread(target=run, name=f"gcfl-{what}", daemon=True)
    started = time.monotonic()
    thread.start()
    deadline = started + seconds
    while thread.is_alive() and time.monotonic() < deadline:
        thread.join(min(POLL_S, max(0.0, deadline - time.monotonic())))
        if thread.is_alive() and run_ended():
            raise CallAbandoned(
                f"{what} {ABANDONED_CALL} the run: its ServerApp has finished; abandoned so "
                "that the run can end"
            )
    if thread.is_alive():
        CALL_TIMES.record(seconds)
        raise CallAbandoned(
            f"{what} {ABANDONED_CALL} {seconds:g} s; abandoned so that this process can "
            "serve other clients"
        )
    CALL_TIMES.record(time.monotonic() - started)
    if errors:
        raise errors[0]
    return results[0]


class DeadlineClient(Client):
    """A Flower ``Client`` whose fit and evaluate give up (:meth:`CallTimes.limit`)."""

    def __init__(
        self,
        inner: Client,
        round_timeout: float,
        factor: float,
        name: str,
        run_ended: Callable[[], bool] = never_ended,
    ) -> None:
        self.inner = inner
        self.round_timeout = round_timeout
        self.factor = factor
        self.name = name
        self.run_ended = run_ended

    @property
    def seconds(self) -> float:
        return CALL_TIMES.limit(self.round_timeout, self.factor)

    def get_properties(self, ins: GetPropertiesIns) -> GetPropertiesRes:
        return self.inner.get_properties(ins)

    def get_parameters(self, ins: GetParametersIns) -> GetParametersRes:
        return self.inner.get_parameters(ins)

    def fit(self, ins: FitIns) -> FitRes:
        return call_with_deadline(
            lambda: self.inner.fit(ins), self.seconds, f"fit of {self.name}", self.run_ended
        )

    def evaluate(self, ins: EvaluateIns) -> EvaluateRes:
        return call_with_deadline(
            lambda: self.inner.evaluate(ins),
            self.seconds,
            f"evaluate of {self.name}",
            self.run_ended,
        )
