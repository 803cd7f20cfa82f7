"""A Grid that checks for replies every 0.1 s, whichever Grid Flower hands the ServerApp.

Flower 1.42 gives a deployed ServerApp an ``HttpGrid``, whose
``send_and_receive`` (what the Strategy API's client proxies call, one per
client) looks for replies every 3 s, while the simulation's ``InMemoryGrid``
looks every 0.1 s. A deployed round therefore lasted a multiple of 3 s
whatever the clients did. :class:`PromptGrid` wraps the given Grid and polls
like the simulation does; everything else goes to the wrapped Grid.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

if TYPE_CHECKING:
    from flwr.supercore.run import Run

PULL_INTERVAL_S = 0.1


class PromptGrid(Grid):
    """``grid`` with a ``send_and_receive`` that looks for replies every ``pull_interval_s``."""

    def __init__(self, grid: Grid, pull_interval_s: float = PULL_INTERVAL_S) -> None:
        self.grid = grid
        self.pull_interval_s = pull_interval_s

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
        """Push ``messages``, then pull until every reply is in or ``timeout`` passes."""
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting:
            received = list(self.pull_messages(waiting))
            replies += received
            waiting -= {reply.metadata.reply_to_message_id for reply in received}
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.pull_interval_s)
        return replies

    def __getattr__(self, name: str) -> Any:
        # Anything else a Grid implementation offers (Flower's own helpers use some).
        return getattr(self.grid, name)
