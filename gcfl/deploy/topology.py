"""The deployment topology: which Flower processes run, with which flags.

This is the one place that defines the SuperLink's and the SuperNodes'
command lines. ``gcfl deploy`` runs them as local processes; the committed
``docker-compose.yml`` is generated from the same functions
(``python -m gcfl.deploy.compose``), and a test checks that it still matches.

Flower 1.42: the SuperLink serves its Fleet, Control and Runtime APIs on one
port (``--host``/``--port``); a SuperNode reaches it with ``--superlink
HOST:PORT`` while its own ``--host``/``--port`` is its local API for the app
processes it starts (``--isolation subprocess``: the SuperLink runs the
ServerApp, each SuperNode its ClientApps, no separate executor service).
SuperNode authentication needs TLS and each node's public key registered with
``flwr supernode register`` before the node connects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gcfl.client.worker import NODE_CONFIG_KEY

# A SuperNode's SuperExec looks for new ClientApp tasks every second by
# default, so every round waited half a second on average for it; Flower
# reads this variable (a user's own value wins).
SUPERNODE_ENVIRONMENT = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2"}

SUPERLINK_PORT = 9093
SUPERNODE_PORT = 9094
CONNECTION_NAME = "gcfl-deploy"


@dataclass(frozen=True)
class CertificatePaths:
    """Where each process finds its TLS files and keys (host or container paths)."""

    folder: str

    @property
    def ca_certificate(self) -> str:
        return f"{self.folder}/ca.crt"

    @property
    def server_certificate(self) -> str:
        return f"{self.folder}/server.pem"

    @property
    def server_key(self) -> str:
        return f"{self.folder}/server.key"

    def node_private_key(self, index: int) -> str:
        return f"{self.folder}/supernode-{index}"

    def node_public_key(self, index: int) -> str:
        return f"{self.folder}/supernode-{index}.pub"


@dataclass(frozen=True)
class Service:
    """One process of the deployment."""

    name: str
    command: list[str]
    depends_on: list[str] = field(default_factory=list)


def _subprocess_apps(host: str, port: int) -> list[str]:
    """Apps in subprocesses; the Runtime API on ``host:port``."""
    return ["--isolation", "subprocess", "--host", host, "--port", str(port)]


def superlink_command(
    *,
    host: str,
    port: int,
    certs: CertificatePaths | None,
    database: str | None = None,
) -> list[str]:
    """The SuperLink: TLS and SuperNode authentication unless ``certs`` is None (insecure)."""
    command = ["flower-superlink"]
    if certs is None:
        command.append("--insecure")
    else:
        command += [
            "--ssl-ca-certfile",
            certs.ca_certificate,
            "--ssl-certfile",
            certs.server_certificate,
            "--ssl-keyfile",
            certs.server_key,
            "--enable-supernode-auth",
        ]
    command += _subprocess_apps(host, port)
    command.append("--disable-runtime-dependency-installation")
    if database:
        command += ["--database", database]
    return command


def supernode_command(
    index: int,
    num_nodes: int,
    *,
    superlink: str,
    certs: CertificatePaths | None,
    host: str = "127.0.0.1",
    port: int = SUPERNODE_PORT,
    worker_socket: str | None = None,
) -> list[str]:
    """SuperNode ``index`` of ``num_nodes``: its partition, its key, its local app API port.

    ``worker_socket`` tells its ClientApps where the node's training worker listens.
    """
    command = ["flower-supernode", "--superlink", superlink]
    if certs is None:
        command.append("--insecure")
    else:
        command += [
            "--root-certificates",
            certs.ca_certificate,
            "--auth-supernode-private-key",
            certs.node_private_key(index),
        ]
    node_config = f"partition-id={index} num-partitions={num_nodes}"
    if worker_socket is not None:
        node_config += f" {NODE_CONFIG_KEY}='{worker_socket}'"
    command += ["--node-config", node_config]
    command += _subprocess_apps(host, port)
    return command


def node_command(worker_socket: str, supernode: list[str]) -> list[str]:
    """A SuperNode and its warm training worker as one process tree (``gcfl node``)."""
    return ["gcfl", "node", "--worker-socket", worker_socket, "--", *supernode]


def register_command(index: int, certs: CertificatePaths, connection: str) -> list[str]:
    """Register SuperNode ``index``'s public key with the SuperLink."""
    return ["flwr", "supernode", "register", certs.node_public_key(index), connection]


def register_command_line(
    address: str, certs: CertificatePaths, connection: str, num_nodes: int, *, wait_s: float
) -> list[str]:
    """Wait (bounded) for the SuperLink at ``address``, then register every node's key."""
    return [
        "python",
        "-m",
        "gcfl.deploy.register",
        "--address",
        address,
        "--ca",
        certs.ca_certificate,
        "--connection",
        connection,
        "--wait",
        f"{wait_s:g}",
        *(certs.node_public_key(i) for i in range(num_nodes)),
    ]


def connection_toml(address: str, ca_certificate: str | None) -> str:
    """A Flower ``config.toml`` whose default connection reaches the deployed SuperLink."""
    lines = [
        "[superlink]",
        f'default = "{CONNECTION_NAME}"',
        "",
        f"[superlink.{CONNECTION_NAME}]",
        f'address = "{address}"',
    ]
    if ca_certificate is None:
        lines.append("insecure = true")
    else:
        lines.append(f'root-certificates = "{ca_certificate}"')
    return "\n".join(lines) + "\n"
