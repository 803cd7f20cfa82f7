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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flwr.app import Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from gcfl.protocol import ABANDONED_CALL
from gcfl.strategy.discovery import NoReplyError

if TYPE_CHECKING:
    from flwr.supercore.run import Run

PULL_INTERVAL_S = 0.1
EXPIRED = frozenset({ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE})
MAX_REASON = 300  # characters of a client's error kept in the round's record
MAX_GROUPS_KEPT = 16  # rounds' start times remembered: a round's messages all go out together
# The adaptive deadline: once this share of a round's messages have their replies, the
# rest get at most ``factor`` times the slowest reply so far, and never less than this.
QUORUM = 0.5
MIN_ADAPTIVE_S = 30.0


@dataclass
class _Group:
    """One round's messages of one kind, as far as the replies tell."""

    started: float
    pushed: int = 0
    replied: int = 0
    slowest: float = 0.0

    def adaptive_deadline(self, factor: float, least_s: float) -> float | None:
        if factor <= 0 or self.pushed == 0 or self.replied < QUORUM * self.pushed:
            return None
        return self.started + max(least_s, factor * self.slowest)


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
        reason = (lines[-1] if lines else "error")[:MAX_REASON]
        # A ClientApp that gave up on its own call ran out of time, whatever the round's clock.
        raise NoReplyError(node_id, "timed-out" if ABANDONED_CALL in reason else "failed", reason)


class PromptGrid(Grid):
    """``grid`` with a ``send_and_receive`` that looks for replies every ``pull_interval_s``.

    ``deadline_factor`` > 0 makes a round's deadline adaptive: once half of
    its messages have their replies, the others get at most that multiple of
    the slowest reply so far (counted from the round's first push, at least
    30 s), and never more than their TTL (``round-timeout``).
    """

    def __init__(
        self,
        grid: Grid,
        pull_interval_s: float = PULL_INTERVAL_S,
        deadline_factor: float = 0.0,
        least_adaptive_s: float = MIN_ADAPTIVE_S,
    ) -> None:
        self.grid = grid
        self.pull_interval_s = pull_interval_s
        self.deadline_factor = deadline_factor
        self.least_adaptive_s = least_adaptive_s
        self._groups: dict[tuple[str, str], _Group] = {}
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
        groups: list[_Group] = []
        if timeout is not None:
            fixed = now + timeout
        else:
            fixed, groups = self._register(messages, now)
        waiting = set(self.push_messages(messages))
        replies: list[Message] = []
        deadline = fixed
        while waiting:
            received = list(self.pull_messages(waiting))
            replies += received
            waiting -= {reply.metadata.reply_to_message_id for reply in received}
            deadline = self._adaptive(groups, fixed, answered=len(received))
            if not waiting or time.monotonic() >= deadline:
                break
            time.sleep(self.pull_interval_s)
        if len(messages) == 1:
            _raise_unless_answered(messages[0], replies, deadline - now)
        return replies

    def _adaptive(self, groups: list[_Group], fixed: float, answered: int) -> float:
        """The deadline now: the fixed one, or sooner once the round's quorum has replied."""
        if not groups:
            return fixed
        with self._lock:
            group = groups[0]
            if answered:
                group.replied += answered
                group.slowest = max(group.slowest, time.monotonic() - group.started)
            adaptive = group.adaptive_deadline(self.deadline_factor, self.least_adaptive_s)
        return fixed if adaptive is None else min(fixed, adaptive)

    def _register(self, messages: list[Message], now: float) -> tuple[float, list[_Group]]:
        """The messages' fixed deadline (their TTL from their round's first push) and, for
        the adaptive one, the rounds they are counted in."""
        deadlines = []
        groups = []
        with self._lock:  # Flower's server calls from a pool of threads
            for message in messages:
                key = (message.metadata.group_id, message.metadata.message_type)
                if key[0]:
                    group = self._groups.setdefault(key, _Group(now))
                    group.pushed += 1
                    groups.append(group)
                    started = group.started
                else:
                    started = now
                deadlines.append(started + message.metadata.ttl)
            while len(self._groups) > MAX_GROUPS_KEPT:
                self._groups.pop(next(iter(self._groups)))
        return min(deadlines, default=now), groups

    def __getattr__(self, name: str) -> Any:
        # Anything else a Grid implementation offers (Flower's own helpers use some).
        return getattr(self.grid, name)
