"""A Grid that checks for replies every 0.1 s, whichever Grid Flower hands the ServerApp.

Flower 1.42 gives a deployed ServerApp an ``HttpGrid``, whose
``send_and_receive`` (what the Strategy API's client proxies call, one per
client) looks for replies every 3 s, while the simulation's ``InMemoryGrid``
looks every 0.1 s. A deployed round therefore lasted a multiple of 3 s
whatever the clients did. :class:`PromptGrid` wraps the given Grid and polls
like the simulation does; everything else goes to the wrapped Grid.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flwr.app import Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

if TYPE_CHECKING:
    from flwr.supercore.run import Run

PULL_INTERVAL_S = 0.1
EXPIRED = frozenset({ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE})
MAX_REASON = 300  # characters of a client's error kept in the round's record
MAX_GROUPS_KEPT = 16  # rounds' start times remembered: a round's messages all go out together


class NoReplyError(Exception):
    """A node's message got no usable reply: ``outcome`` is "timed-out" or "failed"."""

    def __init__(self, node_id: int, outcome: str, reason: str) -> None:
        super().__init__(f"node {node_id}: {outcome}: {reason}")
        self.node_id, self.outcome, self.reason = node_id, outcome, reason


def _raise_unless_answered(message: Message, replies: list[Message], waited: float) -> None:
    node_id = message.metadata.dst_node_id
    if not replies:
        raise NoReplyError(
            node_id, "timed-out", f"no reply within the round's deadline ({waited:.4g} s)"
        )
    # The SuperLink answers for a message whose TTL (the round timeout) ran out.
    if replies[0].has_error() and replies[0].error.code in EXPIRED:
        raise NoReplyError(
            node_id, "timed-out", "no reply within the round's deadline (its TTL ran out)"
        )
    if replies[0].has_error():
        # Flower's reason can hold a whole remote traceback; its last line names the error.
        lines = [line for line in str(replies[0].error.reason).splitlines() if line.strip()]
        raise NoReplyError(node_id, "failed", (lines[-1] if lines else "error")[:MAX_REASON])


class PromptGrid(Grid):
    """``grid`` with a ``send_and_receive`` that looks for replies every ``pull_interval_s``."""

    def __init__(self, grid: Grid, pull_interval_s: float = PULL_INTERVAL_S) -> None:
        self.grid = grid
        self.pull_interval_s = pull_interval_s
        self._group_started: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push ``messages``, then pull until every reply is in or the deadline passes.

        The deadline is ``timeout`` if given, else each message's TTL counted
        from the first push of its round and kind: Flower's legacy server sets
        the TTL to ``round_timeout`` and pushes a round's messages a few at a
        time (its thread pool), so counting from each push would let a round
        run several round timeouts. For one message (what Flower's client
        proxies send), a missing or error reply raises :class:`NoReplyError`
        naming the node, so the strategy can record who failed and why.
        """
        messages = list(messages)
        now = time.monotonic()
        deadline = now + timeout if timeout is not None else self._deadline(messages, now)
        waiting = set(self.push_messages(messages))
        replies: list[Message] = []
        while waiting:
            received = list(self.pull_messages(waiting))
            replies += received
            waiting -= {reply.metadata.reply_to_message_id for reply in received}
            if not waiting or time.monotonic() >= deadline:
                break
            time.sleep(self.pull_interval_s)
        if len(messages) == 1:
            _raise_unless_answered(messages[0], replies, deadline - now)
        return replies

    def _deadline(self, messages: list[Message], now: float) -> float:
        deadlines = []
        with self._lock:  # Flower's server calls from a pool of threads
            for message in messages:
                group = (message.metadata.group_id, message.metadata.message_type)
                started = self._group_started.setdefault(group, now) if group[0] else now
                deadlines.append(started + message.metadata.ttl)
            while len(self._group_started) > MAX_GROUPS_KEPT:
                self._group_started.pop(next(iter(self._group_started)))
        return min(deadlines, default=now)

    def __getattr__(self, name: str) -> Any:
        # Anything else a Grid implementation offers (Flower's own helpers use some).
        return getattr(self.grid, name)
