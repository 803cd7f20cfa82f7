"""``gcfl run``: one simulation of the gcfl App, with a line per round."""

from __future__ import annotations

import argparse

from gcfl.cli.common import (
    UsageError,
    add_run_arguments,
    build_run_config,
    line_printer,
    print_rounds_table,
)
from gcfl.config import parse_run_config


def command_run(args: argparse.Namespace) -> int:
    from gcfl.simulation.launcher import simulate

    if args.clients < 1:
        raise UsageError(f"--clients must be >= 1, got {args.clients}")
    run_config = build_run_config(args)
    rounds = parse_run_config(run_config).num_server_rounds
    print(
        f"gcfl: {run_config.get('strategy', 'gcfl')} on {args.clients} simulated clients, "
        f"{rounds} rounds; results in {run_config['out-dir']}",
        flush=True,
    )
    echo = line_printer(args.verbose, rounds)
    result = simulate(run_config, args.clients, on_line=echo)
    print_rounds_table(result.results)
    print(f"\nwall time {result.seconds:.1f} s (run {result.run_id})")
    print(f"results: {result.out_dir / 'results.json'}")
    print(f"model:   {result.out_dir / 'model.keras'}")
    print(f"log:     {result.log_file}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add the command to ``gcfl``'s parser."""
    run = commands.add_parser("run", help="run one simulation (default: gcfl on digits)")
    add_run_arguments(run)
    run.set_defaults(handler=command_run)
