"""The ``gcfl`` command line: run simulations, list the run-config keys."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gcfl.client.worker import add_policy_arguments
from gcfl.compare.plan import DEFAULT_STRATEGIES, ENGINES
from gcfl.config import ConfigError, GcflConfig, config_keys, parse_assignment, parse_run_config
from gcfl.data import DatasetError
from gcfl.server.progress import parse_progress_line
from gcfl.strategy.sampling import FederationSizeError, check_federation_size

DEFAULT_CLIENTS = 30
# Each in-process run holds its own TensorFlow (about 1 GB): one per core, at most 4.
DEFAULT_WORKERS = max(1, min(4, os.cpu_count() or 1))


class UsageError(ValueError):
    """A command-line argument is wrong; the message names it."""


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _default_out_dir(name: str) -> Path:
    return Path.cwd() / "gcfl-results" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def shared_run_config(args: argparse.Namespace) -> dict[str, Any]:
    """Run-config overrides from the flags and ``--set``, paths resolved; out-dir not set."""
    run_config: dict[str, Any] = {}
    for assignment in args.set or []:
        key, value = parse_assignment(assignment)
        run_config[key] = value
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
        run_config["dataset"] = _absolute(dataset)
    if run_config.get("data-dir"):
        if not Path(run_config["data-dir"]).expanduser().is_dir():
            raise UsageError(f"--data-dir: {run_config['data-dir']}: no such folder")
        run_config["data-dir"] = _absolute(run_config["data-dir"])
    return run_config


def build_run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run-config overrides that the arguments ask for, checked; relative paths resolved."""
    run_config = shared_run_config(args)
    out = (
        args.out
        or run_config.get("out-dir")
        or _default_out_dir(run_config.get("strategy", "gcfl"))
    )
    run_config["out-dir"] = _absolute(str(out))
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


def _line_printer(verbose: bool, total_rounds: int) -> Callable[[str], None]:
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
    echo = _line_printer(args.verbose, rounds)
    result = simulate(run_config, args.clients, on_line=echo)
    print_rounds_table(result.results)
    print(f"\nwall time {result.seconds:.1f} s (run {result.run_id})")
    print(f"results: {result.out_dir / 'results.json'}")
    print(f"model:   {result.out_dir / 'model.keras'}")
    print(f"log:     {result.log_file}")
    return 0


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
        out_dir=Path(_absolute(args.out or str(_default_out_dir("compare")))),
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


def command_deploy(args: argparse.Namespace) -> int:
    from gcfl.deploy.local import check_deploy_inputs, deploy
    from gcfl.deploy.netns import NetworkError
    from gcfl.deploy.topology import TopologyError

    if args.nodes < 1:
        raise UsageError(f"--nodes must be >= 1, got {args.nodes}")
    try:
        check_deploy_inputs(args.nodes, netns=args.netns)
    except TopologyError as error:
        raise UsageError(f"--nodes: {error}") from None
    except NetworkError as error:
        raise UsageError(str(error)) from None
    run_config = {}
    for assignment in args.set or []:
        key, value = parse_assignment(assignment)
        run_config[key] = value
    if args.rounds is not None:
        run_config["num-server-rounds"] = args.rounds
    run_config["out-dir"] = _absolute(
        args.out or run_config.get("out-dir") or str(_default_out_dir("deploy"))
    )
    config = parse_run_config(run_config)
    check_federation_size(config, args.nodes)
    security = (
        "insecure (no TLS, no SuperNode authentication)"
        if args.insecure
        else ("TLS and SuperNode authentication")
    )
    print(
        f"gcfl deploy: a SuperLink and {args.nodes} SuperNodes"
        f"{' in network namespaces' if args.netns else ''}, {security}; "
        f"results in {run_config['out-dir']}",
        flush=True,
    )
    echo = _line_printer(args.verbose, config.num_server_rounds)
    result = deploy(
        run_config,
        args.nodes,
        insecure=args.insecure,
        netns=args.netns,
        warm_worker=not args.no_worker,
        on_line=echo,
    )
    print_rounds_table(result.results)
    print(f"\nwall time {result.seconds:.1f} s (run {result.run_id})")
    print(f"results: {result.out_dir / 'results.json'}")
    print(f"logs:    {result.log_dir}")
    return 0


def command_worker(args: argparse.Namespace) -> int:
    from gcfl.client.worker import main as worker_main
    from gcfl.client.worker import policy_from_args

    return worker_main(["--socket", args.socket, *policy_from_args(args).to_args()])


def check_node_command(worker_socket: str, supernode: list[str]) -> None:
    """The worker's socket and the SuperNode's hosts, ports and node config, before any start."""
    from gcfl.deploy.topology import TopologyError, check_supernode_command, check_worker_socket

    try:
        check_worker_socket(worker_socket)
        check_supernode_command(supernode, worker_socket)
    except TopologyError as error:
        raise UsageError(str(error)) from None


def command_node(args: argparse.Namespace) -> int:
    from gcfl.client.worker import WorkerPolicy, policy_from_args
    from gcfl.deploy.node import run_node

    supernode = [part for part in args.supernode if part != "--"]
    if not supernode:
        raise UsageError("give the flower-supernode command line after '--'")
    check_node_command(args.worker_socket, supernode)
    policy = policy_from_args(args)
    if policy == WorkerPolicy():
        # The call a node without allow-list flags has always made, so that
        # what wraps or records run_node (tests of the compose files) sees no change.
        return run_node(args.worker_socket, supernode)
    return run_node(args.worker_socket, supernode, policy)


def command_config(args: argparse.Namespace) -> int:
    for spec in dataclasses.fields(GcflConfig):
        print(f"{spec.metadata['key']:<20} {spec.default!r:<36} {spec.metadata['help']}")
    return 0


def _add_run_arguments(parser: argparse.ArgumentParser, with_strategy: bool = True) -> None:
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


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gcfl", description="Genetic clustered federated learning on Flower."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one simulation (default: gcfl on digits)")
    _add_run_arguments(run)
    run.set_defaults(handler=command_run)
    compare = commands.add_parser(
        "compare",
        help="gcfl vs FedAvg (also tuned over an lr grid) vs centralised training, "
        "with tables and plots",
    )
    _add_run_arguments(compare, with_strategy=False)
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
    deploy = commands.add_parser(
        "deploy", help="run on a local SuperLink and SuperNodes (TLS, SuperNode auth)"
    )
    deploy.add_argument("--nodes", type=int, default=3, help="SuperNodes, one per client")
    deploy.add_argument("--rounds", type=int, help="federated rounds (num-server-rounds)")
    deploy.add_argument("--insecure", action="store_true", help="no TLS, no authentication")
    deploy.add_argument(
        "--netns", action="store_true", help="each SuperNode in its own network namespace (root)"
    )
    deploy.add_argument(
        "--no-worker",
        action="store_true",
        help="no warm training worker: every ClientApp process imports TensorFlow itself",
    )
    deploy.add_argument("--out", help="results folder (default ./gcfl-results/deploy-<time>)")
    deploy.add_argument("--set", action="append", metavar="KEY=VALUE", help="run-config key")
    deploy.add_argument("--verbose", action="store_true", help="show Flower's full log")
    deploy.set_defaults(handler=command_deploy)
    worker = commands.add_parser(
        "worker", help="the warm training worker of one SuperNode (see gcfl node)"
    )
    worker.add_argument("--socket", required=True, help="Unix socket path to listen on")
    add_policy_arguments(worker)
    worker.set_defaults(handler=command_worker)
    node = commands.add_parser(
        "node",
        help="a SuperNode and its warm training worker: gcfl node --worker-socket PATH -- "
        "flower-supernode ... --node-config \"... worker-socket='PATH'\"",
    )
    node.add_argument("--worker-socket", required=True, help="Unix socket of the worker")
    add_policy_arguments(node)  # passed on to the worker
    node.add_argument("supernode", nargs=argparse.REMAINDER, help="the flower-supernode command")
    node.set_defaults(handler=command_node)
    config = commands.add_parser("config", help="list every run-config key and its default")
    config.set_defaults(handler=command_config)
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


if __name__ == "__main__":
    sys.exit(main())
