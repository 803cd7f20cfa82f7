"""PromptGrid: replies are collected as they arrive; every other Grid call passes through."""

import threading
import time
from types import SimpleNamespace

import pytest
from flwr.common.constant import ErrorCode

from gcfl.server.grid import PromptGrid
from gcfl.strategy.discovery import NoReplyError


class ScriptedGrid:
    """A Grid whose replies to each pushed message appear after a given number of pulls."""

    def __init__(self, pulls_until_reply: dict[str, int]) -> None:
        self.pulls_until_reply = pulls_until_reply
        self.pulls = 0
        self.run = "the run"
        self.errors: dict[str, str] = {}
        self.codes: dict[str, int] = {}

    def push_messages(self, messages):
        return [message.id for message in messages]

    def pull_messages(self, message_ids):
        self.pulls += 1
        return [
            SimpleNamespace(
                metadata=SimpleNamespace(reply_to_message_id=mid),
                has_error=lambda mid=mid: mid in self.errors,
                error=SimpleNamespace(reason=self.errors.get(mid, ""), code=self.codes.get(mid, 0)),
            )
            for mid in sorted(message_ids)
            if self.pulls >= self.pulls_until_reply[mid]
        ]

    def get_node_ids(self):
        return [1, 2]

    def some_helper(self):
        return "helper"


def _messages(*ids, ttl=3600.0, group="1", node=7):
    metadata = SimpleNamespace(ttl=ttl, group_id=group, message_type="train", dst_node_id=node)
    return [SimpleNamespace(id=i, metadata=metadata) for i in ids]


def test_every_reply_is_collected_once_as_it_arrives():
    inner = ScriptedGrid({"a": 1, "b": 3})
    grid = PromptGrid(inner, pull_interval_s=0.001)
    replies = grid.send_and_receive(_messages("a", "b"))
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]
    assert inner.pulls == 3  # stops pulling as soon as the last reply is in


def test_a_timeout_returns_what_arrived():
    inner = ScriptedGrid({"a": 1, "b": 10**9})
    grid = PromptGrid(inner, pull_interval_s=0.001)
    replies = grid.send_and_receive(_messages("a", "b"), timeout=0.05)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]


def test_everything_else_goes_to_the_wrapped_grid():
    inner = ScriptedGrid({})
    grid = PromptGrid(inner)
    assert grid.run == "the run"
    assert list(grid.get_node_ids()) == [1, 2]
    assert grid.some_helper() == "helper"


def test_a_silent_node_is_named_as_timed_out_at_the_deadline():
    grid = PromptGrid(ScriptedGrid({"a": 10**9}), pull_interval_s=0.001)
    with pytest.raises(NoReplyError) as raised:
        grid.send_and_receive(_messages("a", ttl=0.05, node=42))
    assert (raised.value.node_id, raised.value.outcome) == (42, "timed-out")


def test_an_error_reply_is_named_as_failed_with_its_last_line():
    inner = ScriptedGrid({"a": 1})
    inner.errors["a"] = "Traceback (most recent call last):\n  ...\nRuntimeError: boom\n"
    grid = PromptGrid(inner, pull_interval_s=0.001)
    with pytest.raises(NoReplyError) as raised:
        grid.send_and_receive(_messages("a", node=3))
    assert (raised.value.outcome, raised.value.reason) == ("failed", "RuntimeError: boom")


def test_the_deadline_counts_from_the_rounds_first_message():
    # Flower's server sends a round's messages a few at a time: a message sent
    # late in the round must not get a full round timeout of its own.
    inner = ScriptedGrid({"a": 1, "b": 10**9})
    grid = PromptGrid(inner, pull_interval_s=0.001)
    grid.send_and_receive(_messages("a", ttl=0.3, group="5"))
    time.sleep(0.3)
    pulls = inner.pulls
    with pytest.raises(NoReplyError):
        grid.send_and_receive(_messages("b", ttl=0.3, group="5"))
    # The round's deadline had passed when "b" was sent: one look, no waiting for a TTL of its own.
    assert inner.pulls == pulls + 1


def test_a_message_the_superlink_expired_is_named_as_timed_out():
    inner = ScriptedGrid({"a": 1})
    inner.errors["a"] = "Error: Message Unavailable - ... It may have expired due to its TTL"
    inner.codes["a"] = ErrorCode.MESSAGE_UNAVAILABLE
    grid = PromptGrid(inner, pull_interval_s=0.001)
    with pytest.raises(NoReplyError) as raised:
        grid.send_and_receive(_messages("a", ttl=20.0, node=9))
    assert raised.value.outcome == "timed-out" and "TTL" in raised.value.reason


def _round_of(grid, ids, group, ttl):
    """Send each message from its own thread, as Flower's server does; each call's outcome."""
    outcomes: dict[str, str] = {}

    def send(message_id):
        started = time.monotonic()
        try:
            grid.send_and_receive(_messages(message_id, ttl=ttl, group=group))
            outcomes[message_id] = "ok"
        except NoReplyError as error:
            outcomes[message_id] = error.outcome
        outcomes[message_id + "-s"] = time.monotonic() - started

    threads = [threading.Thread(target=send, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_once_most_have_replied_a_silent_node_waits_a_multiple_of_the_slowest_not_its_ttl():
    inner = ScriptedGrid({"a": 1, "b": 2, "c": 3, "d": 10**9})
    grid = PromptGrid(inner, pull_interval_s=0.01, deadline_factor=3.0, least_adaptive_s=0.5)
    outcomes = _round_of(grid, ["a", "b", "c", "d"], group="3", ttl=3600.0)
    assert [outcomes[i] for i in "abc"] == ["ok", "ok", "ok"]
    assert outcomes["d"] == "timed-out"
    assert outcomes["d-s"] < 30  # far below the TTL of an hour


def test_without_a_factor_the_ttl_alone_is_the_deadline():
    inner = ScriptedGrid({"a": 1, "b": 10**9})
    grid = PromptGrid(inner, pull_interval_s=0.01, deadline_factor=0.0, least_adaptive_s=0.0)
    outcomes = _round_of(grid, ["a", "b"], group="4", ttl=1.0)
    assert outcomes["a"] == "ok" and outcomes["b"] == "timed-out"
    assert outcomes["b-s"] >= 0.9  # the whole TTL: nothing shortened it


def test_a_client_that_abandoned_its_own_call_is_named_as_timed_out():
    inner = ScriptedGrid({"a": 1})
    inner.errors["a"] = "ClientAppException: fit of client 3 did not return within 120 s; abandoned"
    grid = PromptGrid(inner, pull_interval_s=0.001)
    with pytest.raises(NoReplyError) as raised:
        grid.send_and_receive(_messages("a", ttl=20.0, node=3))
    assert raised.value.outcome == "timed-out" and "did not return within" in raised.value.reason
