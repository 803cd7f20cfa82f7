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

import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gcfl.worker import NODE_CONFIG_KEY

# A SuperNode's SuperExec looks for new ClientApp tasks every second by
# default, so every round waited half a second on average for it; Flower
# reads this variable (a user's own value wins).
SUPERNODE_ENVIRONMENT = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2"}

SUPERLINK_PORT = 9093
SUPERNODE_PORT = 9094
CONNECTION_NAME = "gcfl-deploy"
# A Unix socket path must fit sockaddr_un.sun_path (108 bytes on Linux, NUL included).
MAX_SOCKET_PATH_BYTES = 107
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class TopologyError(ValueError):
    """A node count, host, port or path the deployment cannot use; the message names it."""


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


def node_command(
    worker_socket: str, supernode: list[str], worker_flags: Sequence[str] = ()
) -> list[str]:
    """A SuperNode and its warm training worker as one process tree (``gcfl node``).

    ``worker_flags``: the worker's allow-list (``--allow-model`` and the like).
    """
    return ["gcfl", "node", "--worker-socket", worker_socket, *worker_flags, "--", *supernode]


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


def check_port(value: int | str, what: str) -> int:
    """``value`` as a TCP port (1-65535); ``what`` names it in the error."""
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise TopologyError(f"{what}: {value!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise TopologyError(f"{what}: port must be 1-65535, got {port}")
    return port


def check_host(value: str, what: str) -> str:
    """``value`` as an IP address or a DNS name (RFC 1123); ``what`` names it in the error."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    name = value[:-1] if value.endswith(".") else value
    labels = name.split(".")
    # A name of digits and dots that is no IP address (999.1.1.1) is a typo, not a host name.
    numeric = all(label.isdigit() for label in labels)
    if not name or len(name) > 253 or numeric or not all(map(_HOST_LABEL.fullmatch, labels)):
        raise TopologyError(f"{what}: {value!r} is neither an IP address nor a host name")
    return value


def split_address(value: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[IPv6]:PORT``) as its checked host and port."""
    host, separator, port = value.rpartition(":")
    if not separator or not host:
        raise TopologyError(f"{what}: {value!r} is not HOST:PORT")
    named = f"{what} {value!r}"
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise TopologyError(f"{named}: [{host}] is not an IPv6 address") from None
    elif ":" in host:
        raise TopologyError(f"{named}: write an IPv6 address as [ADDRESS]:PORT")
    else:
        check_host(host, named)
    return host, check_port(port, named)


def check_worker_socket(path: str) -> None:
    """A path the worker can bind a Unix socket at."""
    what = "--worker-socket"
    if not path:
        raise TopologyError(f"{what}: empty path")
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH_BYTES:
        raise TopologyError(
            f"{what}: {path!r} is {size} bytes; a Unix socket path holds at most "
            f"{MAX_SOCKET_PATH_BYTES}"
        )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise TopologyError(f"{what}: {path!r}: no such folder {folder!r}")


def _option_values(command: Sequence[str]) -> dict[str, str]:
    """The values of the options checked below, as ``--flag value`` or ``--flag=value``."""
    wanted = {"--superlink", "--host", "--port", "--node-config"}
    values: dict[str, str] = {}
    for index, part in enumerate(command):
        flag, equals, inline = part.partition("=")
        if flag not in wanted:
            continue
        if equals:
            values[flag] = inline
        elif index + 1 < len(command):
            values[flag] = command[index + 1]
        else:
            raise TopologyError(f"{flag}: no value given")
    return values


def check_supernode_command(command: Sequence[str], worker_socket: str | None) -> None:
    """Refuse a ``flower-supernode`` command line that could not work, naming the value.

    Only what would otherwise surface as a SuperNode failing after start-up (or
    ClientApps silently missing their worker) is checked; Flower checks the rest.
    """
    if not command or os.path.basename(command[0]) != "flower-supernode":
        first = command[0] if command else ""
        raise TopologyError(f"gcfl node runs flower-supernode, got {first!r}")
    values = _option_values(command[1:])
    if "--superlink" in values:
        split_address(values["--superlink"], "--superlink")
    if "--host" in values:
        check_host(values["--host"], "--host")
    if "--port" in values:
        check_port(values["--port"], "--port")
    if "--node-config" in values:
        _check_node_config(values["--node-config"], worker_socket)


def _check_node_config(text: str, worker_socket: str | None) -> None:
    from flwr.common.config import parse_config_args

    what = "--node-config"
    try:
        config = parse_config_args([text])
    except Exception as error:  # Flower raises click's and TOML's exceptions here
        raise TopologyError(f"{what}: {text!r}: {error}") from None
    partition, partitions = config.get("partition-id"), config.get("num-partitions")
    for key, value in (("partition-id", partition), ("num-partitions", partitions)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise TopologyError(f"{what}: {key} must be an integer, got {value!r}")
    if isinstance(partitions, int) and partitions < 1:
        raise TopologyError(f"{what}: num-partitions must be >= 1, got {partitions}")
    if isinstance(partition, int) and partition < 0:
        raise TopologyError(f"{what}: partition-id must be >= 0, got {partition}")
    if isinstance(partition, int) and isinstance(partitions, int) and partition >= partitions:
        raise TopologyError(
            f"{what}: partition-id must be below num-partitions ({partitions}), got {partition}"
        )
    named = config.get(NODE_CONFIG_KEY)
    if worker_socket is not None and named is not None and named != worker_socket:
        # The ClientApps would look for a worker nobody starts and train in-process.
        raise TopologyError(
            f"{what}: {NODE_CONFIG_KEY}={named!r} is not the --worker-socket {worker_socket!r}"
        )
