"""``gcfl compare``: genetic clustered FL against FedAvg against centralised training.

The seed notebook's experiment (In [35]-[38]) in one command: the same dataset,
partition, model and seed for every strategy, ``--repeats`` seeds for a spread,
and a report (results.json, rounds.csv, summary.md, plots) in one folder.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gcfl.config import GcflConfig, parse_run_config
from gcfl.server.results import package_versions, write_json_atomic

STRATEGIES = ("gcfl", "fedavg", "centralized")
FEDERATED = ("gcfl", "fedavg")


@dataclass(frozen=True)
class ComparePlan:
    """What ``gcfl compare`` will run, fully checked before anything starts."""

    run_config: dict[str, Any]  # shared run-config overrides (no strategy, seed, out-dir)
    strategies: tuple[str, ...]
    num_clients: int
    repeats: int
    out_dir: Path
    centralized_data: str = "whole"

    def seeds(self) -> list[int]:
        base = parse_run_config(self.run_config).seed
        return [base + repeat for repeat in range(self.repeats)]

    def config_for(self, strategy: str, repeat: int) -> dict[str, Any]:
        """The run config of one strategy and repeat (its own out-dir and seed)."""
        return {
            **self.run_config,
            "strategy": "gcfl" if strategy == "centralized" else strategy,
            "seed": self.seeds()[repeat],
            "out-dir": str(self.out_dir / "runs" / f"{strategy}-seed{self.seeds()[repeat]}"),
        }

    def jobs(self) -> list[tuple[str, int]]:
        return [(s, r) for r in range(self.repeats) for s in self.strategies]


def parse_strategies(text: str) -> tuple[str, ...]:
    """``"gcfl,fedavg"`` -> ("gcfl", "fedavg"), refusing unknown or repeated names."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in STRATEGIES]
    if unknown or not names:
        raise ValueError(
            f"--strategies: unknown {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(STRATEGIES)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"--strategies: {text!r} names a strategy twice")
    return names


ProgressCallback = Callable[[str, int, int, int], None]  # strategy, repeat, round, rounds


def _simulate_job(
    plan: ComparePlan, strategy: str, repeat: int, on_round: ProgressCallback
) -> dict[str, Any]:
    from gcfl.cli import PROGRESS_LINE
    from gcfl.simulation.launcher import simulate

    config = plan.config_for(strategy, repeat)
    rounds = parse_run_config(config).num_server_rounds

    def on_line(line: str) -> None:
        match = PROGRESS_LINE.search(line)
        if match:
            on_round(strategy, repeat, int(match.group(1)), rounds)

    result = simulate(config, plan.num_clients, on_line=on_line)
    return {**result.results, "wall_seconds": round(result.seconds, 2), "run_id": result.run_id}


def _centralized_job(
    plan: ComparePlan, strategy: str, repeat: int, on_round: ProgressCallback
) -> dict[str, Any]:
    from gcfl.centralized import train_centralized

    config: GcflConfig = parse_run_config(
        {k: v for k, v in plan.config_for(strategy, repeat).items() if k != "out-dir"}
    )
    started = time.perf_counter()
    entry = train_centralized(
        config,
        plan.num_clients,
        plan.centralized_data,
        on_epoch=lambda epoch: on_round(strategy, repeat, epoch, config.num_server_rounds),
    )
    return {
        **entry,
        "versions": package_versions(),
        "wall_seconds": round(time.perf_counter() - started, 2),
    }


def run_comparison(
    plan: ComparePlan,
    on_job_start: Callable[[str, int], None],
    on_round: ProgressCallback,
    on_job_done: Callable[[dict], None],
) -> list[dict[str, Any]]:
    """Run every strategy for every repeat; results.json is rewritten after each job."""
    runs: list[dict[str, Any]] = []
    for strategy, repeat in plan.jobs():
        on_job_start(strategy, repeat)
        job = _centralized_job if strategy == "centralized" else _simulate_job
        entry = {
            "repeat": repeat,
            "seed": plan.seeds()[repeat],
            **job(plan, strategy, repeat, on_round),
        }
        entry["strategy"] = strategy
        runs.append(entry)
        write_json_atomic(plan.out_dir / "results.json", {"runs": runs})
        on_job_done(entry)
    return runs


def write_report(plan: ComparePlan, runs: Sequence[dict[str, Any]], command: str) -> list[Path]:
    """results.json, rounds.csv, summary.md and the plots; returns the paths written."""
    from gcfl.report.plots import write_plots
    from gcfl.report.tables import write_rounds_csv, write_summary

    results_path = plan.out_dir / "results.json"
    write_json_atomic(
        results_path,
        {
            "command": command,
            "strategies": list(plan.strategies),
            "repeats": plan.repeats,
            "clients": plan.num_clients,
            "centralized_data": plan.centralized_data,
            "runs": list(runs),
        },
    )
    csv_path = plan.out_dir / "rounds.csv"
    write_rounds_csv(csv_path, runs)
    plots = write_plots(runs, plan.out_dir)
    summary_path = plan.out_dir / "summary.md"
    settings = {
        **parse_run_config(plan.run_config).to_run_config(),
        "clients": plan.num_clients,
        "repeats": plan.repeats,
        "seeds": plan.seeds(),
        "strategies": ",".join(plan.strategies),
        "centralized-data": plan.centralized_data,
    }
    settings.pop("out-dir", None)
    settings.pop("strategy", None)
    write_summary(summary_path, runs, command, settings, [p.name for p in plots])
    return [results_path, csv_path, summary_path, *plots]


def reproduce_command(argv: Sequence[str]) -> str:
    """The command line that was run, quoted for a shell."""
    return shlex.join(["gcfl", *argv]) if argv else "gcfl compare"
