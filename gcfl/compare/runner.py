"""Running ``gcfl compare``'s jobs and writing its report.

The seed notebook's experiment (In [35]-[38]) in one command: the same dataset,
partition, model and seed for every strategy, ``--repeats`` seeds for a spread,
and a report (results.json, rounds.csv, summary.md, plots) in one folder.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import queue
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gcfl.compare.plan import TUNED, ComparePlan
from gcfl.config import GcflConfig, parse_run_config
from gcfl.report.tables import oracle_info, with_oracle
from gcfl.server.progress import parse_progress_line
from gcfl.server.results import package_versions, write_json_atomic

ProgressCallback = Callable[[str, int, int, int], None]  # run name, repeat, round, rounds


def _simulate_job(
    plan: ComparePlan, name: str, repeat: int, on_round: ProgressCallback
) -> dict[str, Any]:
    from gcfl.simulation.launcher import simulate

    config = plan.config_for(name, repeat)
    rounds = parse_run_config(config).num_server_rounds

    def on_line(line: str) -> None:
        event = parse_progress_line(line)
        if event is not None:
            on_round(name, repeat, event["round"], rounds)

    result = simulate(config, plan.num_clients, on_line=on_line)
    return {**result.results, "wall_seconds": round(result.seconds, 2), "run_id": result.run_id}


def _centralized_job(
    plan: ComparePlan, name: str, repeat: int, on_round: ProgressCallback
) -> dict[str, Any]:
    from gcfl.compare.centralized import train_centralized

    config: GcflConfig = parse_run_config(
        {k: v for k, v in plan.config_for(name, repeat).items() if k != "out-dir"}
    )
    started = time.perf_counter()
    entry = train_centralized(
        config,
        plan.num_clients,
        plan.centralized_data,
        on_epoch=lambda epoch: on_round(name, repeat, epoch, config.num_server_rounds),
    )
    return {
        **entry,
        "versions": package_versions(),
        "wall_seconds": round(time.perf_counter() - started, 2),
    }


def _inprocess_job(
    plan: ComparePlan, name: str, repeat: int, on_round: ProgressCallback
) -> dict[str, Any]:
    from gcfl.simulation.inprocess import run_in_process

    config = plan.config_for(name, repeat)
    rounds = parse_run_config(config).num_server_rounds
    started = time.perf_counter()
    results = run_in_process(
        config,
        plan.num_clients,
        on_round=lambda event: on_round(name, repeat, event["round"], rounds),
    )
    return {**results, "wall_seconds": round(time.perf_counter() - started, 2)}


# The parent's queue, in each in-process worker (set by the pool's initializer).
_worker_messages: Any = None


def _init_worker(messages: Any) -> None:
    global _worker_messages
    _worker_messages = messages


def _run_in_worker(task: tuple[ComparePlan, str, int]) -> tuple[str, int, dict[str, Any]]:
    """One job in a fresh worker process; its output goes to a log in the run's folder."""
    from gcfl.processes import LOG_FILE

    plan, name, repeat = task
    run_dir = Path(plan.config_for(name, repeat)["out-dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / ("centralized.log" if name == "centralized" else LOG_FILE)
    log = open(log_path, "ab")  # noqa: SIM115 - fds 1 and 2 point here until the process exits
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    _worker_messages.put(("start", name, repeat))

    def on_round(run_name: str, run_repeat: int, done: int, total: int) -> None:
        _worker_messages.put(("round", run_name, run_repeat, done, total))

    job = _centralized_job if name == "centralized" else _inprocess_job
    try:
        return name, repeat, job(plan, name, repeat, on_round)
    except Exception as error:
        # Only a message crosses back to the parent: say which run failed and where to look.
        seed = plan.seeds()[repeat]
        raise RuntimeError(f"{name} seed {seed} failed: {error!r}; see {log_path}") from None


def run_comparison(
    plan: ComparePlan,
    on_job_start: Callable[[str, int], None],
    on_round: ProgressCallback,
    on_job_done: Callable[[dict], None],
) -> list[dict[str, Any]]:
    """Run every strategy (each grid point) for every repeat; results.json after each job.

    Each entry's ``strategy`` is its run name: ``gcfl``, ``fedavg``,
    ``fedavg@<lr>`` or ``centralized``; entries are in the plan's order.
    ``plan.engine`` "inprocess" runs each job in a fresh worker process,
    ``plan.workers`` at a time, with Flower's server loop and no Ray (the
    results are bit for bit those of ``flwr run``); "simulation" runs the
    jobs one after another, each federation through ``flwr run``.
    """
    jobs = plan.jobs()
    source = {job: same_run_as(plan, *job) for job in jobs}
    done: dict[tuple[str, int], dict[str, Any]] = {}

    def finish(name: str, repeat: int, result: dict[str, Any]) -> None:
        entry = {"repeat": repeat, "seed": plan.seeds()[repeat], **result, "strategy": name}
        done[(name, repeat)] = entry
        write_json_atomic(
            plan.out_dir / "results.json", {"runs": [done[j] for j in jobs if j in done]}
        )
        on_job_done(entry)
        for job, same in source.items():
            if same == name and job[1] == repeat and job not in done:
                # FedAvg at the baseline's own lr: the fedavg run already is this grid point.
                on_job_start(*job)
                finish(*job, {**copy.deepcopy(result), "same_run_as": same})

    to_run = [job for job in jobs if source[job] is None]
    if plan.engine == "simulation":
        for name, repeat in to_run:
            on_job_start(name, repeat)
            job = _centralized_job if name == "centralized" else _simulate_job
            finish(name, repeat, job(plan, name, repeat, on_round))
        return [done[job] for job in jobs]

    context = multiprocessing.get_context("spawn")
    messages = context.Queue()

    def relay() -> None:
        while True:
            try:
                message = messages.get_nowait()
            except queue.Empty:
                return
            if message[0] == "start":
                on_job_start(*message[1:])
            else:
                on_round(*message[1:])

    tasks = [(plan, name, repeat) for name, repeat in to_run]
    with context.Pool(
        max(1, min(plan.workers, len(tasks))),
        initializer=_init_worker,
        initargs=(messages,),
        maxtasksperchild=1,  # a fresh process per run: its TensorFlow state is the run's own
    ) as pool:
        results = pool.imap_unordered(_run_in_worker, tasks)
        for _ in tasks:
            while True:
                relay()
                try:
                    name, repeat, result = results.next(timeout=0.2)
                    break
                except multiprocessing.TimeoutError:
                    continue
            relay()
            finish(name, repeat, result)
    return [done[job] for job in jobs]


def same_run_as(plan: ComparePlan, name: str, repeat: int) -> str | None:
    """The earlier run of the plan that ``name`` would repeat exactly, if any.

    With the defaults the grid holds the FedAvg baseline's lr (1e-4), and that
    grid point is the ``fedavg`` run itself: same config but for its folder.
    It is reported under both names, and the grid's cost still counts it.
    """
    if name not in plan.grid_runs() or "fedavg" not in plan.strategies:
        return None

    def config(run_name: str) -> Any:
        return parse_run_config(
            {k: v for k, v in plan.config_for(run_name, repeat).items() if k != "out-dir"}
        )

    return "fedavg" if config(name) == config("fedavg") else None


def report_runs(plan: ComparePlan, runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs as reported: with fedavg-tuned, the oracle's pick of the grid added per repeat."""
    grid = [name for name in plan.grid_runs() if any(run["strategy"] == name for run in runs)]
    if TUNED not in plan.strategies or not grid:
        return list(runs)
    return with_oracle(runs, grid, TUNED)


def write_report(plan: ComparePlan, runs: Sequence[dict[str, Any]], command: str) -> list[Path]:
    """results.json, rounds.csv, summary.md and the plots; returns the paths written.

    results.json holds the runs that ran (fedavg-tuned's choice under ``fedavg_tuned``);
    the tables, rounds.csv and plots hold fedavg-tuned as a strategy of its own.
    """
    from gcfl.report.plots import write_plots
    from gcfl.report.summary import write_summary
    from gcfl.report.tables import write_rounds_csv

    reported = report_runs(plan, runs)
    results_path = plan.out_dir / "results.json"
    payload: dict[str, Any] = {
        "command": command,
        "strategies": list(plan.strategies),
        "run_names": plan.run_names(),
        "repeats": plan.repeats,
        "clients": plan.num_clients,
        "centralized_data": plan.centralized_data,
    }
    if TUNED in plan.strategies:
        payload["fedavg_lr_grid"] = list(plan.lr_grid())
        payload["fedavg_tuned"] = oracle_info(reported, TUNED)
    write_json_atomic(results_path, {**payload, "runs": list(runs)})
    csv_path = plan.out_dir / "rounds.csv"
    write_rounds_csv(csv_path, reported)
    plots = write_plots(reported, plan.out_dir)
    summary_path = plan.out_dir / "summary.md"
    settings = {
        **parse_run_config(plan.run_config).to_run_config(),
        "clients": plan.num_clients,
        "repeats": plan.repeats,
        "seeds": plan.seeds(),
        "strategies": ",".join(plan.strategies),
        "centralized-data": plan.centralized_data,
    }
    if TUNED in plan.strategies:
        settings["fedavg-lr-grid"] = ",".join(f"{lr:g}" for lr in plan.lr_grid())
    settings.pop("out-dir", None)
    settings.pop("strategy", None)
    write_summary(summary_path, reported, command, settings, [p.name for p in plots])
    return [results_path, csv_path, summary_path, *plots]


def reproduce_command(argv: Sequence[str]) -> str:
    """The command line that was run, quoted for a shell."""
    return shlex.join(["gcfl", *argv]) if argv else "gcfl compare"
