"""``gcfl config``: every run-config key, its default and meaning."""

from __future__ import annotations

import argparse
import dataclasses

from gcfl.config import GcflConfig


def command_config(args: argparse.Namespace) -> int:
    for spec in dataclasses.fields(GcflConfig):
        print(f"{spec.metadata['key']:<20} {spec.default!r:<36} {spec.metadata['help']}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add the command to ``gcfl``'s parser."""
    config = commands.add_parser("config", help="list every run-config key and its default")
    config.set_defaults(handler=command_config)
