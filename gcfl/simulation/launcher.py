"""Run the gcfl App in Flower's Ray-based simulation, from Python or the ``gcfl`` CLI.

``simulate`` does what a careful user of ``flwr run`` would: checks the run
config before anything starts, starts a private SuperLink (runtime dependency
installation off), submits the App with ``--stream``, reads the run's final
status (``flwr run`` exits 0 even when the run failed) and the results file,
and stops every process it started, also on failure or Ctrl-C.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gcfl.config import GcflConfig
from gcfl.processes import (
    CLIENT_APP,
    CONNECTION_NAME,
    LOG_FILE,
    SimulationError,
    app_directory,
    flwr_run_command,
    last_error,
    run_status,
    stream_flwr_run,
    write_run_config_toml,
)
from gcfl.server.results import RESULTS_FILE, prepare_run, read_results
from gcfl.simulation.superlink import LocalSuperLink


@dataclass(frozen=True)
class SimulationResult:
    """A finished simulation: its Flower run id, results and where its files are."""

    run_id: int
    config: GcflConfig
    out_dir: Path
    results: dict[str, Any]
    log_file: Path
    seconds: float


def simulate(
    run_config: Mapping[str, Any],
    num_supernodes: int,
    *,
    client_cpus: int = 1,
    work_dir: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    client_app: str = CLIENT_APP,
) -> SimulationResult:
    """Run one simulation of the gcfl App and return its results.

    ``run_config`` holds run-config overrides (kebab-case keys); ``out-dir``
    must be set and absolute. ``num_supernodes`` is the number of simulated
    clients. Every line Flower prints goes to ``out-dir/flower.log`` and to
    ``on_line``. Raises :class:`gcfl.config.ConfigError` for a bad run config
    before anything starts and :class:`SimulationError` when the run fails.
    """
    config, out_dir = prepare_run(run_config, num_supernodes)
    log_file = out_dir / LOG_FILE
    own_work_dir = work_dir is None
    # Ray's socket paths must stay short (about 100 characters): keep this under /tmp.
    work = Path(tempfile.mkdtemp(prefix="gcfl-")) if work_dir is None else Path(work_dir)
    try:
        overrides = work / "run-config.toml"
        write_run_config_toml(overrides, dict(run_config))
        started = time.perf_counter()
        with LocalSuperLink(work / "flwr-home", work / "ray", out_dir / "superlink.log") as link:
            command = flwr_run_command(
                app_directory(work, client_app),
                CONNECTION_NAME,
                overrides,
                "--federation-config",
                f"num-supernodes={num_supernodes} client-resources-num-cpus={client_cpus}",
            )
            outcome = stream_flwr_run(command, link.env, log_file, on_line)
            run_id = outcome.run_id
            status = run_status(link.env, CONNECTION_NAME, run_id)
        seconds = time.perf_counter() - started
    finally:
        if own_work_dir:
            shutil.rmtree(work, ignore_errors=True)
    if outcome.stopped and _all_rounds_recorded(out_dir, config.num_server_rounds):
        status = "finished:completed"  # the ServerApp finished; gcfl stopped what held the run
    if not status.startswith("finished:completed"):
        raise SimulationError(
            f"run {run_id} ended as {status!r}; see {log_file}" + last_error(log_file)
        )
    if not (out_dir / RESULTS_FILE).is_file():
        raise SimulationError(f"run {run_id} completed but wrote no {RESULTS_FILE}; see {log_file}")
    return SimulationResult(run_id, config, out_dir, read_results(out_dir), log_file, seconds)


def _all_rounds_recorded(out_dir: Path, rounds: int) -> bool:
    """Whether the run's results.json holds its last round."""
    try:
        recorded = read_results(out_dir)["rounds"]
    except (OSError, ValueError, KeyError):
        return False
    return bool(recorded) and recorded[-1]["round"] >= rounds
