"""The ``gcfl`` command line, one module per command: run, compare, deploy, worker, node, config."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from gcfl.cli import compare, config, deploy, node, run, worker
from gcfl.cli.common import UsageError
from gcfl.config import ConfigError
from gcfl.data import DatasetError
from gcfl.strategy.sampling import FederationSizeError

__all__ = ["UsageError", "main", "make_parser"]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gcfl", description="Genetic clustered federated learning on Flower."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command in (run, compare, deploy, worker, node, config):
        command.register(commands)
    return parser


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    # SIGTERM (kill, a CI timeout) unwinds like Ctrl-C, so the SuperLink and
    # everything below it are stopped rather than orphaned.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return int(args.handler(args))
    except (UsageError, ConfigError, FederationSizeError, DatasetError) as error:
        print(f"gcfl: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gcfl: interrupted; every process it started has been stopped", file=sys.stderr)
        return 130
    except RuntimeError as error:  # SimulationError, SuperLinkError
        print(f"gcfl: error: {error}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
