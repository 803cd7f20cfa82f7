"""Run the gcfl App in Flower's Ray-based simulation, from Python or the ``gcfl`` CLI.

``simulate`` does what a careful user of ``flwr run`` would: checks the run
config before anything starts, starts a private SuperLink (runtime dependency
installation off), submits the App with ``--stream``, reads the run's final
status (``flwr run`` exits 0 even when the run failed) and the results file,
and stops every process it started, also on failure or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gcfl import __version__
from gcfl.config import GcflConfig, default_run_config, parse_run_config
from gcfl.server.results import RESULTS_FILE, read_results, resolve_out_dir
from gcfl.simulation.superlink import CONNECTION_NAME, LocalSuperLink, flower_command
from gcfl.strategy.sampling import check_federation_size

LOG_FILE = "flower.log"
_RUN_ID = re.compile(r"Successfully started run (\d+)")


class SimulationError(RuntimeError):
    """A simulation did not finish; the message says why and where its log is."""


@dataclass(frozen=True)
class SimulationResult:
    """A finished simulation: its Flower run id, results and where its files are."""

    run_id: int
    config: GcflConfig
    out_dir: Path
    results: dict[str, Any]
    log_file: Path
    seconds: float


def _toml_value(value: bool | int | float | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)  # a TOML basic string


def write_run_config_toml(path: Path, run_config: Mapping[str, bool | int | float | str]) -> None:
    """Write run-config overrides as the TOML file that ``flwr run --run-config`` accepts."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in run_config.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


CLIENT_APP = "gcfl.client.client_app:app"


def app_directory(work_dir: Path, client_app: str = CLIENT_APP) -> Path:
    """The Flower App directory to submit: a minimal App written into ``work_dir``.

    Its ``pyproject.toml`` alone names gcfl's ServerApp and ClientApp and the
    run config's defaults; the App's processes import gcfl from the
    environment (in a clone installed with ``pip install -e .``, the clone).
    Not the project root: ``flwr run`` resolves every path under the App
    directory before it packs the App, and a clone's ``.venv`` and ``.git``
    hold about 40,000 (2.5 s of every run's start on the 2-core machine).
    """
    app = work_dir / "app"
    app.mkdir(parents=True, exist_ok=True)
    defaults = "\n".join(
        f"{key} = {_toml_value(value)}" for key, value in default_run_config().items()
    )
    (app / "pyproject.toml").write_text(
        f'[project]\nname = "gcfl"\nversion = "{__version__}"\n\n'
        '[tool.flwr.app]\npublisher = "gcfl"\n\n'
        "[tool.flwr.app.components]\n"
        'serverapp = "gcfl.server.server_app:app"\n'
        f'clientapp = "{client_app}"\n\n'
        f"[tool.flwr.app.config]\n{defaults}\n",
        encoding="utf-8",
    )
    return app


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
    complete = _all_rounds_recorded(out_dir, config.num_server_rounds)
    if outcome.stopped and complete:
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


def flwr_run_command(app: Path, connection: str, overrides: Path, *extra: str) -> list[str]:
    """``flwr run APP CONNECTION --stream --run-config OVERRIDES [extra...]``."""
    command = [flower_command("flwr"), "run", str(app), connection, "--stream"]
    return [*command, "--run-config", str(overrides), *extra]


# Flower's server loop prints this once the ServerApp's last round is done.
SERVER_FINISHED = "Run finished"
# How long a run may go on after its ServerApp finished before it is stopped: a client
# that still holds the simulation (a call that never returns) must not hold the run.
FINISH_GRACE_S = 30.0


@dataclass
class StreamOutcome:
    """What ``flwr run --stream`` showed: the run id, and whether gcfl had to stop the run."""

    run_id: int
    stopped: bool = False


def stream_flwr_run(
    command: list[str],
    env: dict[str, str],
    log_file: Path,
    on_line: Callable[[str], None] | None,
    connection: str = CONNECTION_NAME,
    finish_grace_s: float = FINISH_GRACE_S,
) -> StreamOutcome:
    """Run ``flwr run ... --stream``: every line to ``log_file`` and ``on_line``.

    Once the ServerApp has finished, the run has ``finish_grace_s`` to end;
    one that is still held (a simulated client whose call never returns)
    is stopped with ``flwr stop``, and the outcome says so.
    """
    run_id = None
    lines: queue.Queue[str | None] = queue.Queue()
    finished_at: float | None = None
    stopped = False
    with (
        open(log_file, "a", encoding="utf-8") as log,
        subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        ) as process,
    ):
        assert process.stdout is not None
        stream = process.stdout

        def read() -> None:
            for text in stream:
                lines.put(text)
            lines.put(None)

        reader = threading.Thread(target=read, name="gcfl-flwr-stream", daemon=True)
        reader.start()
        try:
            while True:
                try:
                    line = lines.get(timeout=1.0)
                except queue.Empty:
                    line = ""
                if line is None:
                    break
                if line:
                    log.write(line)
                    match = _RUN_ID.search(line)
                    if match and run_id is None:
                        run_id = int(match.group(1))
                    if SERVER_FINISHED in line and finished_at is None:
                        finished_at = time.monotonic()
                    if on_line is not None:
                        on_line(line.rstrip("\n"))
                overdue = (
                    finished_at is not None and time.monotonic() - finished_at > finish_grace_s
                )
                if overdue and run_id is not None and not stopped:
                    stopped = True
                    message = (
                        f"gcfl: the ServerApp finished {finish_grace_s:g} s ago but run {run_id} "
                        "is still held (a client call that never returned); stopping it\n"
                    )
                    log.write(message)
                    if on_line is not None:
                        on_line(message.rstrip("\n"))
                    stop_run(env, connection, run_id)
                    process.terminate()
        except BaseException:
            process.kill()
            raise
    if run_id is None:
        raise SimulationError(
            f"flwr run did not start a run; see {log_file}" + last_error(log_file)
        )
    return StreamOutcome(run_id, stopped)


def stop_run(env: dict[str, str], connection: str, run_id: int) -> None:
    """``flwr stop RUN_ID CONNECTION``, within a minute; its failure is not fatal."""
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        subprocess.run(
            [flower_command("flwr"), "stop", str(run_id), connection],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def run_status(env: dict[str, str], connection: str, run_id: int) -> str:
    """The run's final status as Flower reports it, e.g. ``finished:completed``."""
    listing = subprocess.run(
        [flower_command("flwr"), "ls", connection, "--run-id", str(run_id), "--format=json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        runs = json.loads(listing.stdout)["runs"]
        return str(runs[0]["status"])
    except (ValueError, KeyError, IndexError, TypeError):
        return f"unknown (flwr ls said: {listing.stdout.strip() or listing.stderr.strip()})"


def last_error(log_file: Path) -> str:
    """The last error Flower logged (a boxed CLI error or an ERROR line), for a message."""
    try:
        lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index]
        if "─ Error ─" in line:
            box = [row.strip("│ ") for row in lines[index + 1 :] if row.startswith("│")]
            return "\nflwr: " + " ".join(box)
        if re.match(r"^[\w.]+(Error|Exception): ", line):
            return f"\nlast error: {line.strip()}"
    return ""
