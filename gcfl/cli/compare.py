"""``gcfl compare``: gcfl against FedAvg, tuned FedAvg and centralised training."""

from __future__ import annotations

import argparse
from pathlib import Path

from gcfl.cli.common import (
    DEFAULT_WORKERS,
    UsageError,
    absolute,
    add_run_arguments,
    default_out_dir,
    shared_run_config,
)
from gcfl.compare.plan import DEFAULT_STRATEGIES, ENGINES
from gcfl.config import parse_run_config
from gcfl.strategy.sampling import check_federation_size


def command_compare(args: argparse.Namespace) -> int:
    from gcfl.compare.plan import FINE_GRID, TUNED, ComparePlan, parse_lr_grid, parse_strategies

    fine = args.fedavg_lr_grid is not None and args.fedavg_lr_grid.strip() == FINE_GRID
    try:
        strategies = parse_strategies(args.strategies)
        given = args.fedavg_lr_grid is not None and not fine
        grid = parse_lr_grid(args.fedavg_lr_grid) if given else ()
    except ValueError as error:
        raise UsageError(str(error)) from None
    if (grid or fine) and TUNED not in strategies:
        raise UsageError(f"--fedavg-lr-grid: only {TUNED} uses it; add {TUNED} to --strategies")
    if args.clients < 1:
        raise UsageError(f"--clients must be >= 1, got {args.clients}")
    if args.repeats < 1:
        raise UsageError(f"--repeats must be >= 1, got {args.repeats}")
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    run_config = shared_run_config(args)
    run_config.pop("out-dir", None)
    run_config.pop("strategy", None)
    parse_run_config(run_config)
    plan = ComparePlan(
        run_config=run_config,
        strategies=strategies,
        num_clients=args.clients,
        repeats=args.repeats,
        out_dir=Path(absolute(args.out or str(default_out_dir("compare")))),
        centralized_data=args.centralized_data,
        fedavg_lr_grid=grid,
        fine_grid=fine,
        engine=args.engine,
        workers=args.workers,
    )
    for name in plan.run_names():
        if name != "centralized":
            check_federation_size(parse_run_config(plan.config_for(name, 0)), args.clients)
    existing = plan.out_dir / "results.json"
    if existing.exists():
        raise UsageError(f"--out: {plan.out_dir} already holds results.json; choose another")
    from gcfl.compare.view import run_with_progress

    return run_with_progress(plan, args.argv)


def register(commands: argparse._SubParsersAction) -> None:
    """Add the command to ``gcfl``'s parser."""
    compare = commands.add_parser(
        "compare",
        help="gcfl vs FedAvg (also tuned over an lr grid) vs centralised training, "
        "with tables and plots",
    )
    add_run_arguments(compare, with_strategy=False)
    compare.add_argument(
        "--strategies",
        default=DEFAULT_STRATEGIES,
        help="comma-separated: gcfl, fedavg, fedavg-tuned (FedAvg once per lr of "
        f"--fedavg-lr-grid, the best reported as an oracle choice), centralized "
        f"(default {DEFAULT_STRATEGIES})",
    )
    compare.add_argument(
        "--fedavg-lr-grid",
        metavar="LR,LR,...|fine",
        help="fedavg-tuned's learning rates, comma-separated, or 'fine' (1, 2, 3, 5 per "
        "decade inside [lr-min, lr-max]: 17 runs by default); default 5 log-spaced over "
        "[lr-min, lr-max], ends included",
    )
    compare.add_argument("--repeats", type=int, default=1, help="seeds to run (seed, seed+1, ...)")
    compare.add_argument(
        "--centralized-data",
        choices=("whole", "clients"),
        default="whole",
        help="centralized trains on the whole training set or the union of the clients' data",
    )
    compare.add_argument(
        "--engine",
        choices=ENGINES,
        default="inprocess",
        help="inprocess (default): each federation under Flower's server loop in a fresh "
        "worker process, --workers at a time, without Ray; simulation: each through "
        "`flwr run` and Flower's Ray simulation engine, one at a time (same results, slower)",
    )
    compare.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"in-process runs at once (default {DEFAULT_WORKERS}: one per CPU core, at most 4)",
    )
    compare.set_defaults(handler=command_compare)
