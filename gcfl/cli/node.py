"""``gcfl node``: a SuperNode and its warm training worker."""

from __future__ import annotations

import argparse

from gcfl.cli.common import UsageError
from gcfl.worker import add_policy_arguments


def check_node_command(worker_socket: str, supernode: list[str]) -> None:
    """The worker's socket and the SuperNode's hosts, ports and node config, before any start."""
    from gcfl.deploy.topology import TopologyError, check_supernode_command, check_worker_socket

    try:
        check_worker_socket(worker_socket)
        check_supernode_command(supernode, worker_socket)
    except TopologyError as error:
        raise UsageError(str(error)) from None


def command_node(args: argparse.Namespace) -> int:
    from gcfl.deploy.node import run_node
    from gcfl.worker import policy_from_args

    supernode = [part for part in args.supernode if part != "--"]
    if not supernode:
        raise UsageError("give the flower-supernode command line after '--'")
    check_node_command(args.worker_socket, supernode)
    return run_node(args.worker_socket, supernode, policy_from_args(args))


def register(commands: argparse._SubParsersAction) -> None:
    """Add the command to ``gcfl``'s parser."""
    node = commands.add_parser(
        "node",
        help="a SuperNode and its warm training worker: gcfl node --worker-socket PATH -- "
        "flower-supernode ... --node-config \"... worker-socket='PATH'\"",
    )
    node.add_argument("--worker-socket", required=True, help="Unix socket of the worker")
    add_policy_arguments(node)  # passed on to the worker
    node.add_argument("supernode", nargs=argparse.REMAINDER, help="the flower-supernode command")
    node.set_defaults(handler=command_node)
