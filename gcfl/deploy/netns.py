"""Network namespaces for ``gcfl deploy --netns``: one private network per SuperNode.

Each SuperNode runs in a namespace of its own, joined to the host by a virtual
Ethernet pair on a private bridge; the SuperLink listens on the bridge's
address only. Traffic between them crosses a (virtual) network instead of
loopback. Needs root and iproute2; everything is removed again by
``destroy``.

The address plan (:func:`address_plan`) gives each deployment one /24 of
10.213.0.0/16, picked by its process id: the bridge is ``.1``, node ``i`` is
``.i+2``, so one deployment holds at most 253 SuperNodes, and a larger count
is refused before anything is created.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass

from gcfl.deploy.topology import TopologyError

SUBNET_PREFIX = "10.213"
SUBNETS = 250  # 10.213.0.0/24 ... 10.213.249.0/24
# A /24 has 254 host addresses; the bridge (the SuperLink's side) takes one.
MAX_NODES = 253


class NetworkError(RuntimeError):
    """Namespaces could not be set up (not root, no iproute2...)."""


@dataclass(frozen=True)
class AddressPlan:
    """One deployment's subnet: the bridge's address and one address per SuperNode."""

    network: ipaddress.IPv4Network
    host_address: str
    node_addresses: tuple[str, ...]


def address_plan(num_nodes: int, tag: int) -> AddressPlan:
    """``num_nodes`` SuperNodes' addresses in subnet ``tag % SUBNETS``; refuses too many."""
    if num_nodes < 1:
        raise TopologyError(f"{num_nodes} SuperNodes: at least 1 is needed")
    if num_nodes > MAX_NODES:
        raise TopologyError(
            f"{num_nodes} SuperNodes do not fit the --netns address plan "
            f"(one /24 subnet per deployment: at most {MAX_NODES})"
        )
    network = ipaddress.IPv4Network(f"{SUBNET_PREFIX}.{tag % SUBNETS}.0/24")
    hosts = list(network.hosts())
    return AddressPlan(
        network=network,
        host_address=str(hosts[0]),
        node_addresses=tuple(str(address) for address in hosts[1 : num_nodes + 1]),
    )


def check_prerequisites() -> None:
    """Refuse ``--netns`` where it cannot work, before anything is started."""
    if os.geteuid() != 0:
        raise NetworkError("--netns needs root (network namespaces and veth pairs)")
    if shutil.which("ip") is None:
        raise NetworkError("--netns needs iproute2's `ip` command, and it is not on PATH")


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")


class NamespaceNetwork:
    """A bridge on the host and one namespace per SuperNode, named after this process."""

    def __init__(self, num_nodes: int) -> None:
        self.num_nodes = num_nodes
        tag = os.getpid() % 10_000
        self.plan = address_plan(num_nodes, tag)
        self.bridge = f"gcflbr{tag}"
        self.namespaces = [f"gcfl-{tag}-{i}" for i in range(num_nodes)]
        self._veths = [(f"gv{tag}h{i}", f"gv{tag}n{i}") for i in range(num_nodes)]
        self.created = False

    @property
    def host_address(self) -> str:
        return self.plan.host_address

    def node_address(self, index: int) -> str:
        return self.plan.node_addresses[index]

    def create(self) -> None:
        check_prerequisites()
        self.created = True
        prefix = self.plan.network.prefixlen
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.host_address}/{prefix}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for index, namespace in enumerate(self.namespaces):
            host_end, node_end = self._veths[index]
            _ip("netns", "add", namespace)
            _ip("link", "add", host_end, "type", "veth", "peer", "name", node_end)
            _ip("link", "set", host_end, "master", self.bridge)
            _ip("link", "set", host_end, "up")
            _ip("link", "set", node_end, "netns", namespace)
            address = f"{self.node_address(index)}/{prefix}"
            _ip("-n", namespace, "addr", "add", address, "dev", node_end)
            _ip("-n", namespace, "link", "set", node_end, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")

    def exec_prefix(self, index: int) -> list[str]:
        """Prefix a command with this to run it inside SuperNode ``index``'s namespace."""
        return ["ip", "netns", "exec", self.namespaces[index]]

    def destroy(self) -> None:
        """Remove the namespaces (and with them the veth pairs) and the bridge."""
        if not self.created:
            return
        for namespace in self.namespaces:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
        self.created = False
