"""``results.json``: what a run did, round by round, rewritten atomically after every round."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from gcfl.config import GcflConfig, parse_run_config
from gcfl.processes import SimulationError
from gcfl.run_end import results_folder
from gcfl.server.checkpoint import CHECKPOINT_FILE
from gcfl.strategy.sampling import check_federation_size

RESULTS_FILE = "results.json"
MODEL_FILE = "model.keras"


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that decide a run's behaviour."""
    versions: dict[str, str | None] = {}
    for name, distributions in {
        "gcfl": ("gcfl",),
        "flwr": ("flwr",),
        "tensorflow": ("tensorflow", "tensorflow-cpu"),
        "keras": ("keras",),
        "scikit-learn": ("scikit-learn",),
        "numpy": ("numpy",),
    }.items():
        versions[name] = None
        for distribution in distributions:
            try:
                versions[name] = metadata.version(distribution)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def _json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(_json_safe(payload), stream, indent=1, allow_nan=False)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp creates the file private (0600); results are meant to be read.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class OutputDirError(RuntimeError):
    """The results folder cannot be used without losing what it holds."""


def resolve_out_dir(config: GcflConfig, run_id: int) -> Path:
    """The run's results folder: ``out-dir``, or ``~/gcfl-results/run-<run id>`` when unset.

    A new run refuses a folder that already holds results or a checkpoint; a
    resumed run needs the checkpoint. Nothing in the folder is touched here.
    """
    out_dir = results_folder(config.out_dir, run_id)
    if config.resume:
        if not (out_dir / CHECKPOINT_FILE).is_file():
            raise OutputDirError(
                f"resume=true but {out_dir} holds no {CHECKPOINT_FILE}; "
                "resume needs the out-dir of the run to continue"
            )
    else:
        for name in (RESULTS_FILE, CHECKPOINT_FILE):
            if (out_dir / name).exists():
                raise OutputDirError(
                    f"out-dir {out_dir} already holds {name} from an earlier run; set "
                    "resume=true to continue it, or choose another out-dir"
                )
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


class RunRecorder:
    """Collects round records and rewrites ``results.json`` after each one."""

    def __init__(
        self, out_dir: Path, strategy: str, config: dict[str, Any], versions: dict[str, Any]
    ) -> None:
        self.path = out_dir / RESULTS_FILE
        self.payload: dict[str, Any] = {
            "strategy": strategy,
            "config": config,
            "versions": versions,
            "rounds": [],
        }

    def add_round(self, record: dict[str, Any]) -> None:
        self.payload["rounds"].append(record)
        write_json_atomic(self.path, self.payload)


def read_results(path: str | Path) -> dict[str, Any]:
    """Load a ``results.json`` (or the one inside a folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    return json.loads(path.read_text(encoding="utf-8"))


def prepare_run(run_config: Mapping[str, Any], num_clients: int) -> tuple[GcflConfig, Path]:
    """Check all that can be checked before any process starts; return the config and out-dir.

    The out-dir rules are the ServerApp's own (:func:`resolve_out_dir`), applied
    early so that a run doomed to be refused never starts a SuperLink.
    """
    config = parse_run_config(run_config)
    if not config.out_dir:
        raise SimulationError("out-dir must be set to an absolute folder for the results")
    if num_clients < 1:
        raise SimulationError(f"the number of clients must be >= 1, got {num_clients}")
    check_federation_size(config, num_clients)
    return config, resolve_out_dir(config, run_id=0)
