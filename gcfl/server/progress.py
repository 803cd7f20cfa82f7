"""gcfl's per-round progress event, one log line per finished round.

After every round the ServerApp logs ``gcfl-progress {"round": 3, ...}`` through
Flower's logger, so ``flwr run --stream`` carries it to ``gcfl run``, ``gcfl
deploy`` and ``gcfl compare``; the in-process engine gets the same event from a
callback instead. gcfl owns this format: scraping Flower's own ``fit progress``
line broke whenever Flower put another metric in it, and a parse error there
killed the stream reader and with it ``flwr run``. So parsing never raises.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Required, TypedDict, cast

PROGRESS_PREFIX = "gcfl-progress "

_OPTIONAL_NUMBERS = ("accuracy", "loss", "federated_accuracy", "federated_loss")


class RoundProgress(TypedDict, total=False):
    """One finished round, as the ServerApp reports it."""

    round: Required[int]
    rounds: int  # the run's total, including rounds done before a resume
    accuracy: float | None  # server-side test set
    loss: float | None
    federated_accuracy: float | None  # clients' federated evaluation
    federated_loss: float | None
    accepted: int
    status: str


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def progress_event(record: Mapping[str, Any], total_rounds: int) -> RoundProgress:
    """The event for a round's record (``RoundRecord.to_dict()``); missing metrics are None."""
    return {
        "round": int(record["round"]),
        "rounds": int(total_rounds),
        "accuracy": _optional_float(record.get("accuracy")),
        "loss": _optional_float(record.get("loss")),
        "federated_accuracy": _optional_float(record.get("federated_accuracy")),
        "federated_loss": _optional_float(record.get("federated_loss")),
        "accepted": int(record.get("accepted", 0)),
        "status": str(record.get("status", "ok")),
    }


def progress_line(event: Mapping[str, Any]) -> str:
    """The prefix and the event as one line of compact JSON."""
    # json.dumps escapes newlines inside strings, so the event stays on one line.
    return PROGRESS_PREFIX + json.dumps(dict(event), separators=(",", ":"))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, float)


# What each known key other than "round" may hold.
_FIELDS: dict[str, Callable[[Any], bool]] = {
    "rounds": _is_int,
    **{key: lambda v: v is None or _is_number(v) for key in _OPTIONAL_NUMBERS},
    "accepted": _is_int,
    "status": lambda v: isinstance(v, str),
}


def _checked(raw: Any) -> RoundProgress | None:
    """The known fields of a decoded event, or None when any has the wrong type.

    Unknown keys are dropped, so a newer server may add fields without breaking
    an older reader.
    """
    if not isinstance(raw, dict) or not _is_int(raw.get("round")) or raw["round"] < 1:
        return None
    event: dict[str, Any] = {"round": raw["round"]}
    for key, valid in _FIELDS.items():
        if key in raw:
            if not valid(raw[key]):
                return None
            event[key] = raw[key]
    try:
        for key in _OPTIONAL_NUMBERS:
            if event.get(key) is not None:
                event[key] = float(event[key])  # a whole-number loss may arrive as 1
    except OverflowError:  # an integer too large for a float
        return None
    return cast(RoundProgress, event)


def parse_progress_line(line: str) -> RoundProgress | None:
    """The event in a line of output, wherever its prefix is; None for any other line.

    Flower's log puts its level (``INFO :``) and colour codes before a message,
    and a stream may add more around it, so the prefix is searched for and the
    JSON read up to its own end. Anything malformed gives None, never an error:
    a reader of ``flwr run``'s output must survive every line.
    """
    start = line.find(PROGRESS_PREFIX)
    while start != -1:
        text = line[start + len(PROGRESS_PREFIX) :].lstrip()
        try:
            raw, _ = json.JSONDecoder().raw_decode(text)
        except (ValueError, RecursionError):
            raw = None
        event = _checked(raw)
        if event is not None:
            return event
        start = line.find(PROGRESS_PREFIX, start + 1)
    return None
