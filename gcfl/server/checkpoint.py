"""The run checkpoint: the source of truth for resuming and for ``results.json``.

One file, ``checkpoint.npz``, rewritten after every round: the global weights
(and the model before the last aggregate, the rollback target), the
algorithm's full state (every client's hyperparameters, last loss, cluster
and status, and both random Generators' states) and the history of rounds.
It is written to a temporary file, fsynced and renamed over the old one, so a
crash at any moment leaves the previous round's checkpoint or this one, never
a torn file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

CHECKPOINT_FILE = "checkpoint.npz"
_STATE_KEY = "state_json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit this run."""


def save_checkpoint(
    path: Path,
    weights: list[np.ndarray],
    state: dict[str, Any],
    previous_weights: list[np.ndarray] | None = None,
) -> None:
    """Atomically write ``weights``, the JSON-ready ``state`` and, if any, the rollback target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Any: numpy's stubs would match a ndarray value against savez's allow_pickle flag.
    arrays: dict[str, Any] = {f"weight_{index:04d}": a for index, a in enumerate(weights)}
    for index, array in enumerate(previous_weights or []):
        arrays[f"previous_{index:04d}"] = array
    encoded = json.dumps(state, allow_nan=True).encode("utf-8")
    arrays[_STATE_KEY] = np.frombuffer(encoded, dtype=np.uint8)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The weights and state stored in ``path``."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint to resume from")
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = sorted(name for name in archive.files if name.startswith("weight_"))
            weights = [archive[name] for name in names]
            state = json.loads(archive[_STATE_KEY].tobytes().decode("utf-8"))
    except Exception as error:
        raise CheckpointError(f"{path}: unreadable checkpoint ({error})") from error
    return weights, state


def load_previous_weights(path: Path) -> list[np.ndarray] | None:
    """The global model before the last aggregate (the rollback target), if saved."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = sorted(name for name in archive.files if name.startswith("previous_"))
            return [archive[name] for name in names] or None
    except Exception as error:
        raise CheckpointError(f"{path}: unreadable checkpoint ({error})") from error
