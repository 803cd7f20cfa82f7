"""``gcfl deploy``: the deployment topology as local processes, one run, then clean-up.

Starts a SuperLink (TLS and SuperNode authentication unless ``insecure``),
registers every SuperNode's public key, starts the SuperNodes (each, with
``netns``, in a network namespace of its own behind a virtual Ethernet pair,
so that its traffic really crosses a network), submits the App with
``flwr run --stream``, checks the run's status and results, and stops every
process it started, also on failure or Ctrl-C.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gcfl.deploy.credentials import create_node_keys, create_tls
from gcfl.deploy.netns import NamespaceNetwork, address_plan, check_prerequisites
from gcfl.deploy.register import RegistrationError, wait_for_health
from gcfl.deploy.topology import (
    CONNECTION_NAME,
    SUPERNODE_ENVIRONMENT,
    CertificatePaths,
    TopologyError,
    connection_toml,
    node_command,
    register_command,
    superlink_command,
    supernode_command,
)
from gcfl.processes import (
    LOG_FILE,
    SimulationError,
    app_directory,
    flower_command,
    flwr_run_command,
    free_port,
    last_error,
    run_status,
    stop_process_tree,
    stream_flwr_run,
    tool_environment,
    write_run_config_toml,
)
from gcfl.server.results import prepare_run, read_results
from gcfl.worker import WorkerPolicy

STARTUP_TIMEOUT_S = 60.0


class DeploymentError(RuntimeError):
    """A deployed process did not start or the run failed; the message says where to look."""


@dataclass(frozen=True)
class DeploymentResult:
    run_id: int
    out_dir: Path
    results: dict[str, Any]
    seconds: float
    log_dir: Path


def _resolve(command: list[str]) -> list[str]:
    """Executables of this environment, whether or not its bin folder is on PATH."""
    if command[0] == "gcfl":
        separator = command.index("--") if "--" in command else len(command)
        inner = command[separator + 1 :]
        return [
            sys.executable,
            "-m",
            "gcfl.cli",
            *command[1 : separator + 1],
            *(_resolve(inner) if inner else []),
        ]
    return [flower_command(command[0]), *command[1:]]


class Deployment:
    """The processes of one deployment; ``stop`` ends all of them."""

    def __init__(self, work: Path, log_dir: Path, env: dict[str, str]) -> None:
        self.work = work
        self.log_dir = log_dir
        self.env = env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: list[str], prefix: list[str] | None = None) -> None:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        self.processes[name] = subprocess.Popen(
            [*(prefix or []), *_resolve(command)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise DeploymentError(
                    f"{name} exited with code {process.returncode}; see "
                    f"{self.log_dir / (name + '.log')}"
                )

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            stop_process_tree(process.pid)
        self.processes.clear()


def _wait_for_superlink(address: str, ca_certificate: Path | None, deployment: Deployment) -> None:
    try:
        wait_for_health(
            address,
            None if ca_certificate is None else str(ca_certificate),
            STARTUP_TIMEOUT_S,
            poll_s=0.2,
            while_waiting=deployment.check_alive,
        )
    except RegistrationError as error:
        raise DeploymentError(str(error)) from None


def check_deploy_inputs(num_nodes: int, *, netns: bool) -> None:
    """Refuse a node count or ``netns`` setting that cannot work, before anything starts.

    Raises :class:`TopologyError` for the count and :class:`NetworkError` when
    this machine cannot create namespaces.
    """
    if num_nodes < 1:
        raise TopologyError(f"the number of SuperNodes must be >= 1, got {num_nodes}")
    if netns:
        address_plan(num_nodes, tag=0)  # every tag's subnet holds the same count
        check_prerequisites()


def deploy(
    run_config: Mapping[str, Any],
    num_nodes: int,
    *,
    insecure: bool = False,
    netns: bool = False,
    warm_worker: bool = True,
    on_line: Callable[[str], None] | None = None,
) -> DeploymentResult:
    """Run the gcfl App on a local SuperLink and ``num_nodes`` SuperNodes; return the results.

    With ``warm_worker`` every SuperNode gets its training worker (``gcfl node``),
    so TensorFlow is imported and the model traced once per node, not per round.
    """
    check_deploy_inputs(num_nodes, netns=netns)
    config, out_dir = prepare_run(run_config, num_nodes)
    # The user who starts these nodes also chose this run config: its workers may
    # load the model and data it names (and nothing else).
    worker_flags = WorkerPolicy.for_run(config.model, config.data_dir, config.dataset).to_args()
    log_dir = out_dir / "deploy-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gcfl-deploy-"))
    flwr_home = work / "flwr-home"
    flwr_home.mkdir()
    env = tool_environment(flwr_home, work / "ray")
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env = {**SUPERNODE_ENVIRONMENT, **env}
    deployment = Deployment(work, log_dir, env)
    network = NamespaceNetwork(num_nodes) if netns else None
    started = time.perf_counter()
    try:
        if network is not None:
            network.create()
        listen_host = network.host_address if network else "127.0.0.1"
        port = free_port()
        address = f"{listen_host}:{port}"
        certs = None
        if not insecure:
            folder = work / "certs"
            create_tls(folder, addresses=("127.0.0.1", listen_host))
            create_node_keys(folder, num_nodes)
            certs = CertificatePaths(str(folder))
        (flwr_home / "config.toml").write_text(
            connection_toml(address, certs.ca_certificate if certs else None), encoding="utf-8"
        )
        # One address (loopback, or the bridge's), never 0.0.0.0: this port also serves
        # the Control API, which authenticates no one without OIDC.
        deployment.start(
            "superlink",
            superlink_command(host=listen_host, port=port, certs=certs),
        )
        _wait_for_superlink(address, Path(certs.ca_certificate) if certs else None, deployment)
        for index in range(num_nodes):
            if certs is not None:
                _register(index, certs, env, log_dir)
            worker_socket = str(work / f"worker-{index}.sock") if warm_worker else None
            supernode = supernode_command(
                index,
                num_nodes,
                superlink=address,
                certs=certs,
                port=free_port(),
                worker_socket=worker_socket,
            )
            deployment.start(
                f"supernode-{index}",
                supernode
                if worker_socket is None
                else node_command(worker_socket, supernode, worker_flags),
                prefix=network.exec_prefix(index) if network else None,
            )
        overrides = work / "run-config.toml"
        write_run_config_toml(overrides, dict(run_config))
        run_id = stream_flwr_run(
            flwr_run_command(app_directory(work), CONNECTION_NAME, overrides),
            env,
            out_dir / LOG_FILE,
            on_line,
            CONNECTION_NAME,
        ).run_id
        status = run_status(env, CONNECTION_NAME, run_id)
    finally:
        deployment.stop()
        if network is not None:
            network.destroy()
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - started
    if not status.startswith("finished:completed"):
        raise SimulationError(
            f"run {run_id} ended as {status!r}; see {out_dir / LOG_FILE} and {log_dir}"
            + last_error(out_dir / LOG_FILE)
        )
    return DeploymentResult(run_id, out_dir, read_results(out_dir), seconds, log_dir)


def _register(index: int, certs: CertificatePaths, env: dict[str, str], log_dir: Path) -> None:
    result = subprocess.run(
        _resolve(register_command(index, certs, CONNECTION_NAME)),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    (log_dir / f"register-{index}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise DeploymentError(
            f"registering SuperNode {index}'s key failed; see {log_dir / f'register-{index}.log'}"
        )
