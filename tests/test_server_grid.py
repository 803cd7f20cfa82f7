"""PromptGrid: replies are collected as they arrive; every other Grid call passes through."""

from types import SimpleNamespace

from gcfl.server.grid import PromptGrid


class ScriptedGrid:
    """A Grid whose replies to each pushed message appear after a given number of pulls."""

    def __init__(self, pulls_until_reply: dict[str, int]) -> None:
        self.pulls_until_reply = pulls_until_reply
        self.pulls = 0
        self.run = "the run"

    def push_messages(self, messages):
        return [message.id for message in messages]

    def pull_messages(self, message_ids):
        self.pulls += 1
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=mid))
            for mid in sorted(message_ids)
            if self.pulls >= self.pulls_until_reply[mid]
        ]

    def get_node_ids(self):
        return [1, 2]

    def some_helper(self):
        return "helper"


def _messages(*ids):
    return [SimpleNamespace(id=i) for i in ids]


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
