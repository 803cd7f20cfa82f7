"""Network namespaces for ``gcfl deploy --netns``: one private network per SuperNode.

Each SuperNode runs in a namespace of its own, joined to the host by a virtual
Ethernet pair on a private bridge; the SuperLink listens on the bridge's
address. Traffic between them crosses a (virtual) network instead of
loopback. Needs root and iproute2; everything is removed again by
``destroy``.
"""

from __future__ import annotations

import os
import subprocess

SUBNET_PREFIX = "10.213"


class NetworkError(RuntimeError):
    """Namespaces could not be set up (not root, no iproute2...)."""


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")


class NamespaceNetwork:
    """A bridge on the host and one namespace per SuperNode, named after this process."""

    def __init__(self, num_nodes: int) -> None:
        self.num_nodes = num_nodes
        tag = os.getpid() % 10_000
        self.bridge = f"gcflbr{tag}"
        self.subnet = f"{SUBNET_PREFIX}.{tag % 250}"
        self.namespaces = [f"gcfl-{tag}-{i}" for i in range(num_nodes)]
        self._veths = [(f"gv{tag}h{i}", f"gv{tag}n{i}") for i in range(num_nodes)]
        self.created = False

    @property
    def host_address(self) -> str:
        return f"{self.subnet}.1"

    def node_address(self, index: int) -> str:
        return f"{self.subnet}.{index + 2}"

    def create(self) -> None:
        if os.geteuid() != 0:
            raise NetworkError("--netns needs root (network namespaces and veth pairs)")
        self.created = True
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.host_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for index, namespace in enumerate(self.namespaces):
            host_end, node_end = self._veths[index]
            _ip("netns", "add", namespace)
            _ip("link", "add", host_end, "type", "veth", "peer", "name", node_end)
            _ip("link", "set", host_end, "master", self.bridge)
            _ip("link", "set", host_end, "up")
            _ip("link", "set", node_end, "netns", namespace)
            _ip("-n", namespace, "addr", "add", f"{self.node_address(index)}/24", "dev", node_end)
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
