"""Names every layer shares: what became of a client's fit. A leaf: it imports no gcfl module."""

from __future__ import annotations

from typing import Literal

# ok: the update was accepted; diverged: the client said its fit blew up; refused: the
# server rejected the reply; failed: an error instead of a reply; timed-out: no reply by
# the round's deadline.
Outcome = Literal["ok", "diverged", "refused", "failed", "timed-out"]
OUTCOMES: tuple[Outcome, ...] = ("ok", "diverged", "refused", "failed", "timed-out")
VERSION = "0.1.0"  # the package version, as pyproject.toml declares it
