"""The terminal side of ``gcfl compare``: a rich progress display, then the tables.

Flower's and TensorFlow's own output goes to log files in the output folder:
each simulation's ``flower.log``, and ``compare.log`` for whatever this process
prints to stderr (TensorFlow's C++ start-up lines among it).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gcfl.compare.plan import GRID_PREFIX, ComparePlan
from gcfl.compare.runner import report_runs, reproduce_command, run_comparison, write_report
from gcfl.report.summary import COST_NOTE
from gcfl.report.tables import outcome_table, rounds_table


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Send this process's stderr (file descriptor 2, so C++ logs too) to ``path``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


# The first column's width (the strategy or the round): fixed, so that at 80 columns the
# names up to it stay on one line and every other column keeps its room, none cut off.
NAME_WIDTH = 16
# The terminal's shorter headers (summary.md keeps the long ones; COST_NOTE explains them).
SHORT_HEADERS = {"client evaluations": "client evals"}


def rich_table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    longest = max((len(row[0]) for row in [header, *rows]), default=0)
    for index, name in enumerate(header):
        # Fold, never cut: a strategy name cut to "feda…" says nothing.
        first = index == 0
        table.add_column(
            SHORT_HEADERS.get(name, name),
            justify="left" if first else "right",
            overflow="fold",
            width=min(longest, NAME_WIDTH) if first else None,
        )
    for row in rows:
        table.add_row(*row)
    return table


def run_with_progress(plan: ComparePlan, argv: list[str]) -> int:
    """Run the comparison with a live progress display; print tables and paths at the end."""
    console = Console()
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command = reproduce_command(argv)
    console.print(
        f"gcfl compare: {', '.join(plan.strategies)} on {plan.num_clients} clients, "
        f"{plan.repeats} seed(s) {plan.seeds()}; output in {plan.out_dir}"
    )
    if plan.grid_runs():
        console.print(f"fedavg-tuned: FedAvg at each lr of {', '.join(plan.grid_runs())}")
    started = time.perf_counter()
    columns = (
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rounds"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress, stderr_to(plan.out_dir / "compare.log"):
        tasks = {
            (name, repeat): progress.add_task(
                f"{name} seed {plan.seeds()[repeat]}",
                total=plan.config_for(name, repeat).get("num-server-rounds", 10),
                start=False,
            )
            for name, repeat in plan.jobs()
        }

        def on_job_start(name: str, repeat: int) -> None:
            progress.start_task(tasks[(name, repeat)])

        def on_round(name: str, repeat: int, done: int, total: int) -> None:
            progress.update(tasks[(name, repeat)], completed=done, total=total)

        def on_job_done(entry: dict) -> None:
            task = tasks[(entry["strategy"], entry["repeat"])]
            progress.update(task, completed=len(entry["rounds"]))
            progress.stop_task(task)

        runs = run_comparison(plan, on_job_start, on_round, on_job_done)
        paths = write_report(plan, runs, command)
    reported = report_runs(plan, runs)
    # The grid's points would make the per-round tables too wide for a terminal (80 columns
    # piped to a file): fedavg-tuned stands for them here; summary.md and rounds.csv hold all.
    per_round = [run for run in reported if not run["strategy"].startswith(GRID_PREFIX)]
    console.print(rich_table("Test accuracy per round", *rounds_table(per_round, "accuracy")))
    console.print(rich_table("Test loss per round", *rounds_table(per_round, "loss")))
    if len(per_round) < len(reported):
        console.print("Each grid point's rounds: summary.md and rounds.csv.")
    console.print(rich_table("Outcome", *outcome_table(reported, long=False)))
    console.print(COST_NOTE)
    console.print(f"wall time {time.perf_counter() - started:.1f} s")
    for path in paths:
        console.print(f"  {path}")
    return 0
