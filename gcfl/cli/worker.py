"""``gcfl worker``: the warm training worker of one SuperNode."""

from __future__ import annotations

import argparse

from gcfl.worker import add_policy_arguments


def command_worker(args: argparse.Namespace) -> int:
    from gcfl.worker import policy_from_args
    from gcfl.worker.server import main as worker_main

    return worker_main(["--socket", args.socket, *policy_from_args(args).to_args()])


def register(commands: argparse._SubParsersAction) -> None:
    """Add the command to ``gcfl``'s parser."""
    worker = commands.add_parser(
        "worker", help="the warm training worker of one SuperNode (see gcfl node)"
    )
    worker.add_argument("--socket", required=True, help="Unix socket path to listen on")
    add_policy_arguments(worker)
    worker.set_defaults(handler=command_worker)
