"""What the ``gcfl`` commands share: run-config arguments, output folders, progress lines."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gcfl.config import config_keys, parse_assignment, parse_run_config
from gcfl.server.progress import parse_progress_line

DEFAULT_CLIENTS = 30

# Each in-process run holds its own TensorFlow (about 1 GB): one per core, at most 4.
DEFAULT_WORKERS = max(1, min(4, os.cpu_count() or 1))


class UsageError(ValueError):
    """A command-line argument is wrong; the message names it."""


def absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def default_out_dir(name: str) -> Path:
    return Path.cwd() / "gcfl-results" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def assignments(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--set KEY=VALUE`` overrides, each converted to its key's type."""
    return dict(parse_assignment(item) for item in args.set or [])


def shared_run_config(args: argparse.Namespace) -> dict[str, Any]:
    """Run-config overrides from the flags and ``--set``, paths resolved; out-dir not set."""
    run_config = assignments(args)
    flags = {
        "num-server-rounds": args.rounds,
        "strategy": getattr(args, "strategy", None),
        "dataset": args.dataset,
        "data-dir": args.data_dir,
        "partition": args.partition,
        "fraction-fit": args.fraction_fit,
        "fraction-evaluate": args.fraction_evaluate,
        "local-epochs": args.local_epochs,
        "seed": args.seed,
    }
    run_config.update({key: value for key, value in flags.items() if value is not None})
    dataset = run_config.get("dataset")
    if isinstance(dataset, str) and dataset.endswith(".npz"):
        if not Path(dataset).expanduser().is_file():
            raise UsageError(f"--dataset: {dataset}: no such file")
        run_config["dataset"] = absolute(dataset)
    if run_config.get("data-dir"):
        if not Path(run_config["data-dir"]).expanduser().is_dir():
            raise UsageError(f"--data-dir: {run_config['data-dir']}: no such folder")
        run_config["data-dir"] = absolute(run_config["data-dir"])
    return run_config


def build_run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run-config overrides that the arguments ask for, checked; relative paths resolved."""
    run_config = shared_run_config(args)
    out = (
        args.out or run_config.get("out-dir") or default_out_dir(run_config.get("strategy", "gcfl"))
    )
    run_config["out-dir"] = absolute(str(out))
    parse_run_config(run_config)  # every value checked before anything starts
    return run_config


def _metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _print_progress(line: str, total_rounds: int) -> None:
    event = parse_progress_line(line)
    if event is None:
        return
    text = (
        f"round {event['round']:>3}/{event.get('rounds', total_rounds)}  "
        f"accuracy {_metric(event.get('accuracy'))}  loss {_metric(event.get('loss'))}"
    )
    # Federated evaluation is optional (and off for some strategies): show it only when run.
    if event.get("federated_accuracy") is not None:
        text += f"  federated {_metric(event.get('federated_accuracy'))}"
    print(text, flush=True)


def line_printer(verbose: bool, total_rounds: int) -> Callable[[str], None]:
    """Flower's every line (``--verbose``), or one progress line per finished round."""
    if verbose:
        return lambda line: print(line, flush=True)
    return lambda line: _print_progress(line, total_rounds)


def print_rounds_table(results: dict[str, Any]) -> None:
    """The per-round accuracy, loss and time of one run, as a plain table."""
    print(f"\n{'round':>5}  {'accuracy':>8}  {'loss':>8}  {'seconds':>7}  status")
    for record in results["rounds"]:
        accuracy = record.get("accuracy")
        loss = record.get("loss")
        print(
            f"{record['round']:>5}  "
            f"{accuracy if accuracy is None else format(accuracy, '.4f'):>8}  "
            f"{loss if loss is None else format(loss, '.4f'):>8}  "
            f"{record['seconds']:>7.2f}  {record.get('status', 'ok')}"
        )


def add_run_arguments(parser: argparse.ArgumentParser, with_strategy: bool = True) -> None:
    parser.add_argument("--rounds", type=int, help="federated rounds (num-server-rounds)")
    parser.add_argument(
        "--clients",
        type=int,
        default=DEFAULT_CLIENTS,
        help=f"simulated clients, one SuperNode each (default {DEFAULT_CLIENTS})",
    )
    if with_strategy:
        parser.add_argument("--strategy", help="gcfl (default) or fedavg")
    parser.add_argument("--dataset", help="digits (default), mnist, cifar10 or a .npz file")
    parser.add_argument("--data-dir", help="folder with mnist.npz or CIFAR-10 files")
    parser.add_argument("--partition", help="slices (default), iid or dirichlet")
    parser.add_argument("--fraction-fit", type=float, help="share of clients per round")
    parser.add_argument(
        "--fraction-evaluate",
        type=float,
        help="share of clients that evaluate each round's model on their own data",
    )
    parser.add_argument("--local-epochs", type=int, help="epochs per local fit")
    parser.add_argument("--seed", type=int, help="seed of every random draw")
    parser.add_argument("--out", help="results folder (default ./gcfl-results/<name>-<time>)")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help=f"any run-config key ({', '.join(config_keys())}); repeatable",
    )
    parser.add_argument("--verbose", action="store_true", help="show Flower's full log")
