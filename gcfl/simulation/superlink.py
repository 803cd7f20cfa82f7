"""A SuperLink process that gcfl starts, owns and stops.

``flwr run`` would start a managed SuperLink of its own on fixed ports, reuse
any one already listening there whatever FLWR_HOME says, and leave it running.
gcfl instead starts ``flower-superlink`` on a free port with its own FLWR_HOME,
points a named connection at it, and on exit stops it together with every
process it spawned (SuperExec, the simulation process, Ray).
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

from gcfl.processes import (
    CONNECTION_NAME,
    RegistrationError,
    flower_command,
    free_port,
    stop_process_tree,
    tool_environment,
    wait_for_health,
)

STARTUP_TIMEOUT_S = 60.0


class SuperLinkError(RuntimeError):
    """The SuperLink did not start; the message points at its log."""


def write_connection(flwr_home: Path, address: str) -> None:
    """A ``config.toml`` whose default connection is ``CONNECTION_NAME`` at ``address``."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        "[superlink]\n"
        f'default = "{CONNECTION_NAME}"\n\n'
        f"[superlink.{CONNECTION_NAME}]\n"
        f'address = "{address}"\n'
        "insecure = true\n",
        encoding="utf-8",
    )


class LocalSuperLink:
    """A simulation-mode SuperLink on 127.0.0.1, used as a context manager."""

    def __init__(self, flwr_home: Path, ray_tmpdir: Path, log_file: Path) -> None:
        self.flwr_home = flwr_home
        self.ray_tmpdir = ray_tmpdir
        self.log_file = log_file
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return tool_environment(self.flwr_home, self.ray_tmpdir)

    def start(self) -> LocalSuperLink:
        self.ray_tmpdir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        write_connection(self.flwr_home, self.address)
        command = [
            flower_command("flower-superlink"),
            "--insecure",
            "--simulation",
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
            "--database",
            str(self.flwr_home / "state.db"),
            "--log-file",
            str(self.log_file),
        ]
        with open(self.log_file.with_suffix(".stdout"), "ab") as output:
            self.process = subprocess.Popen(
                command,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        process = self.process

        def still_running() -> None:
            if process.poll() is not None:
                raise SuperLinkError(
                    f"flower-superlink exited with code {process.returncode}; "
                    f"see {self.log_file} and {self.log_file.with_suffix('.stdout')}"
                )

        try:
            wait_for_health(
                self.address, None, STARTUP_TIMEOUT_S, poll_s=0.2, while_waiting=still_running
            )
        except RegistrationError as error:
            self.stop()
            raise SuperLinkError(f"flower-superlink: {error}; see {self.log_file}") from None
        return self

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the SuperLink and every process below it, also ones that left its group."""
        if self.process is None:
            return
        stop_process_tree(self.process.pid, grace_s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1)
        self.process = None

    def __enter__(self) -> LocalSuperLink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
