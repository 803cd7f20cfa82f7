"""The ServerApp's mark that its run has ended, for the ClientApps on the same machine.

Under Flower's simulation a ClientApp call that hangs keeps its Ray actor,
and the simulation does not end before every actor's call has returned. The
ClientApp gives up on a call after its own deadline (:mod:`gcfl.client.deadline`),
which for a process' first call is minutes. So the ServerApp, once it has
finished, leaves a mark in the run's results folder, and a call still
running when the mark appears is abandoned at once: nobody waits for its
reply any more. A deployed node on another machine never sees the mark and
keeps its own deadline.
"""

from __future__ import annotations

import contextlib
from pathlib import Path


def results_folder(out_dir: str, run_id: int) -> Path:
    """The run's results folder: ``out-dir``, or ``~/gcfl-results/run-<run id>`` when unset."""
    if out_dir:
        return Path(out_dir).expanduser()
    return Path.home() / "gcfl-results" / f"run-{run_id}"


def end_mark(out_dir: str, run_id: int) -> Path:
    """Where the ServerApp of run ``run_id`` marks its end (one mark per run id)."""
    return results_folder(out_dir, run_id) / f".run-{run_id}-ended"


def has_ended(out_dir: str, run_id: int) -> bool:
    """Whether run ``run_id``'s mark is there. A folder this process may not read, or no
    home folder to find it in (a deployed node), means no: the call keeps its deadline."""
    try:
        return end_mark(out_dir, run_id).exists()
    except (OSError, RuntimeError):
        return False


def mark_ended(out_dir: str, run_id: int) -> None:
    """Leave the mark; a folder that cannot take it only costs the clients their deadline."""
    with contextlib.suppress(OSError):
        end_mark(out_dir, run_id).touch()
