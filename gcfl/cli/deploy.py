"""``gcfl deploy``: a local SuperLink and SuperNodes (TLS and SuperNode authentication)."""

from __future__ import annotations

import argparse

from gcfl.cli.common import (
    UsageError,
    absolute,
    assignments,
    default_out_dir,
    line_printer,
    print_rounds_table,
)
from gcfl.config import parse_run_config
from gcfl.strategy.sampling import check_federation_size


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
    run_config = assignments(args)
    if args.rounds is not None:
        run_config["num-server-rounds"] = args.rounds
    run_config["out-dir"] = absolute(
        args.out or run_config.get("out-dir") or str(default_out_dir("deploy"))
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
    echo = line_printer(args.verbose, config.num_server_rounds)
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


def register(commands: argparse._SubParsersAction) -> None:
    """Add the command to ``gcfl``'s parser."""
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
