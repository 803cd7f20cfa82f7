"""Processes and Flower's command line: start, watch, stop; the low-level layer of gcfl.

Everything here runs or reads other processes (a SuperLink, ``flwr run``,
their children) and imports no other gcfl package, so the simulation
launcher, the deployment and the CLI can all use it without importing each
other: ports and environments for Flower's tools, waiting for a SuperLink's
health, streaming ``flwr run --stream``, a run's status, stopping a process
tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from gcfl.config import default_run_config
from gcfl.names import VERSION

# The flwr connection name gcfl writes for the SuperLinks it starts.
CONNECTION_NAME = "gcfl-local"
# Where a run's Flower output goes, in its out-dir.
LOG_FILE = "flower.log"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tool_environment(flwr_home: Path, ray_tmpdir: Path) -> dict[str, str]:
    """Environment for Flower's processes: this interpreter's tools first, quiet logs."""
    env = os.environ.copy()
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["FLWR_HOME"] = str(flwr_home)
    env["RAY_TMPDIR"] = str(ray_tmpdir)
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Ray otherwise warns on every start that this default will change.
    env.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    return env


def flower_command(name: str) -> str:
    """Path of a Flower console script installed beside this interpreter."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def stop_process_tree(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM ``pid``, its process group and all descendants; SIGKILL what remains."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


class RegistrationError(RuntimeError):
    """The SuperLink did not answer in time, or it refused a key."""


def wait_for_health(
    address: str,
    ca_certificate: str | None,
    wait_s: float,
    *,
    poll_s: float = 0.5,
    while_waiting: Callable[[], None] | None = None,
) -> float:
    """Seconds until ``https://address/health`` (http without a CA) answered 200.

    ``while_waiting`` runs before every attempt; it may raise to stop waiting
    (``gcfl deploy`` checks that the SuperLink process it started is alive).
    """
    scheme = "http" if ca_certificate is None else "https"
    context = None if ca_certificate is None else ssl.create_default_context(cafile=ca_certificate)
    started = time.monotonic()
    last_error = "no answer yet"
    while time.monotonic() - started < wait_s:
        if while_waiting is not None:
            while_waiting()
        try:
            with urllib.request.urlopen(
                f"{scheme}://{address}/health", timeout=2, context=context
            ) as reply:
                if reply.status == 200:
                    return time.monotonic() - started
                last_error = f"HTTP {reply.status}"
        except (urllib.error.URLError, OSError) as error:
            last_error = str(getattr(error, "reason", error))
        time.sleep(poll_s)
    raise RegistrationError(
        f"the SuperLink did not answer at {scheme}://{address}/health within {wait_s:g} s "
        f"(last: {last_error})"
    )


class SimulationError(RuntimeError):
    """A simulation did not finish; the message says why and where its log is."""


_RUN_ID = re.compile(r"Successfully started run (\d+)")


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
        f'[project]\nname = "gcfl"\nversion = "{VERSION}"\n\n'
        '[tool.flwr.app]\npublisher = "gcfl"\n\n'
        "[tool.flwr.app.components]\n"
        'serverapp = "gcfl.server.server_app:app"\n'
        f'clientapp = "{client_app}"\n\n'
        f"[tool.flwr.app.config]\n{defaults}\n",
        encoding="utf-8",
    )
    return app


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
