"""``gcfl worker``: the warm training worker of one SuperNode."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal

from gcfl.worker import add_policy_arguments

log = logging.getLogger("gcfl.worker.server")


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


def command_worker(args: argparse.Namespace) -> int:
    from gcfl.client.client_app import train_for_worker
    from gcfl.worker import policy_from_args
    from gcfl.worker.server import serve

    policy = policy_from_args(args)
    logging.basicConfig(level=logging.INFO, format="gcfl worker: %(message)s")
    signal.signal(signal.SIGTERM, _stop)
    log.info(
        "allowed beyond the built-ins: models %s, data-dirs %s, datasets %s",
        list(policy.models) or "none",
        list(policy.data_dirs) or "none",
        list(policy.datasets) or "none",
    )
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.socket, train=train_for_worker, policy=policy)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add the command to ``gcfl``'s parser."""
    worker = commands.add_parser(
        "worker", help="the warm training worker of one SuperNode (see gcfl node)"
    )
    worker.add_argument("--socket", required=True, help="Unix socket path to listen on")
    add_policy_arguments(worker)
    worker.set_defaults(handler=command_worker)
