"""Quality benchmark: gcfl against FedAvg at every lr of a grid, over partitions and seeds.

Usage:
    python benchmarks/quality.py [--out DIR] [--seeds 5] [--workers 2]
                                 [--partitions slices,iid,dirichlet]
                                 [--ablation-partitions slices] [--only NAME,...]
                                 [--fraction-fit 1.0] [--rounds 10]

Every run is the quick start's setting (digits, 30 clients all training every
round, 10 rounds, 5 local epochs; ``--rounds``/``--clients``/``--local-epochs``
/``--fraction-fit`` change it) with seeds 42, 43, ...: the same data split, initial model and
client sampling for every strategy of a seed. Strategies:

- ``gcfl``: the defaults (with ``--fraction-fit`` < 1 they include the
  partial-participation rules and blend crossover, which ``PARTIAL_OFF``
  switches off);
  ``notebook``: ``rules=notebook`` on the notebook's search space
  (lr 1e-7..1e-3), the seed notebook's algorithm as it was;
- ``fedavg@<lr>``: FedAvg at each lr of the grid (default 5 values spanning the
  search space); ``fedavg@0.0001`` is the notebook's FedAvg baseline;
- the ablation: gcfl with one rule switched off at a time.

Runs go through :func:`gcfl.simulation.inprocess.run_in_process`: the real
ServerApp strategy and ClientApp client under Flower's server loop, without
Ray, so that hundreds of runs fit in an hour. Each run's results.json stays in
``DIR/runs/``; a second invocation with the same ``--out`` skips the runs
already done. Writes ``DIR/runs.csv`` (one row per run), ``DIR/rounds.csv``
(one row per run and round) and ``DIR/quality.md`` (the tables).
"""

from __future__ import annotations

import argparse
import csv
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
NOTEBOOK_FEDAVG = "fedavg@0.0001"

VARIANTS: dict[str, dict[str, Any]] = {
    "gcfl": {},
    # The notebook's algorithm on its own search space, with issue 5's update guard.
    "notebook": {"rules": "notebook", "lr-min": 1e-7, "lr-max": 1e-3, "max-update-norm": 3.0},
    **{f"fedavg@{lr:g}": {"strategy": "fedavg", "fedavg-lr": lr} for lr in GRID},
}
ABLATION: dict[str, dict[str, Any]] = {
    "gcfl -fitness (raw loss)": {"fitness": "loss"},
    "gcfl fitness on validation split": {"fitness": "val-improvement"},
    "gcfl -migration": {"migration": 0.0},
    # The log-space mutation that was the default before this benchmark showed it worse.
    "gcfl log mutation (0.4-decade steps + 10% resample)": {"mutation": "log", "resample": 0.1},
    "gcfl -auto eps (0.15)": {"dbscan-eps": 0.15},
    "gcfl -collapse guards": {"rollback": False, "max-update-norm": 3.0},
}
# Issue 19's rules for partial participation, each set explicitly (not
# relative to the defaults), so the table means the same before and after
# the defaults change.
PARTIAL_OFF = {
    "refresh-stale": 0.0,
    "aggregate-share": 1.0,
    "aggregate-floor": 0.0,
    "batch-step": 0.0,
    "crossover": "pick",
}
# "A" in BENCHMARKS section 0: the best combination found for partial participation.
PARTIAL_A = {**PARTIAL_OFF, "refresh-stale": 0.5, "aggregate-floor": 0.1, "batch-step": 0.2}
ABLATION.update(
    {
        "gcfl none of refresh/share/batch-step": PARTIAL_OFF,
        "gcfl refresh-stale only": {**PARTIAL_OFF, "refresh-stale": 1.0},
        "gcfl aggregate-share 0.5 only": {**PARTIAL_OFF, "aggregate-share": 0.5},
        "gcfl batch-step 0.2 only": {**PARTIAL_OFF, "batch-step": 0.2},
        "gcfl all three": {
            **PARTIAL_OFF,
            "refresh-stale": 1.0,
            "aggregate-share": 0.5,
            "batch-step": 0.2,
        },
        "gcfl refresh-stale 0.5 only": {**PARTIAL_OFF, "refresh-stale": 0.5},
        "gcfl aggregate-floor 0.1 only": {**PARTIAL_OFF, "aggregate-floor": 0.1},
        "gcfl refresh 0.5 + floor 0.1 + batch-step 0.2": PARTIAL_A,
        "gcfl refresh 0.5 + floor 0.2 + batch-step 0.2": {**PARTIAL_A, "aggregate-floor": 0.2},
        "gcfl refresh 0.5 + floor 0.1 + share 0.5 + batch-step 0.2": {
            **PARTIAL_A,
            "aggregate-share": 0.5,
        },
        "gcfl refresh 0.5 + share 0.5 + batch-step 0.2": {
            **PARTIAL_A,
            "aggregate-floor": 0.0,
            "aggregate-share": 0.5,
        },
    }
)
# A with one key more, to see whether dirichlet's gap under sampling is a knob
# away (it is not: BENCHMARKS section 0).
ABLATION.update(
    {
        f"A + {key}={value}": {**PARTIAL_A, key: value}
        for key, value in (
            ("lr-max", 1e-2),
            ("fitness", "val-improvement"),
            ("rollback-tolerance", 0.0),
            ("migration", 0.25),
            ("max-update-norm", 0.1),
            ("max-update-norm", 0.15),
            ("max-update-norm", 0.25),
            ("init", "search"),
            ("aggregate-clip", 1.0),
            ("aggregate-clip", 2.0),
            ("batch-max", 64),
        )
    }
)
# "gcfl + ..." are the defaults of when they were measured (2026-12-06, before the
# partial-participation rules and blend became the defaults under sampling): the rules
# stay off, so the names keep meaning the runs BENCHMARKS.md reports.
ABLATION.update(
    {
        f"gcfl + {key}={value}": {**PARTIAL_OFF, key: value}
        for key, value in (
            ("aggregate-clip", 1.0),
            ("batch-max", 64),
            ("batch-max", 32),
        )
    }
)
ABLATION["A + batch-max=32"] = {**PARTIAL_A, "batch-max": 32}
# With every client training, blend where the defaults pick; under sampling the
# defaults are A with blend, and this the same without A's batch step.
ABLATION["gcfl + crossover=blend"] = {"crossover": "blend"}
ABLATION["A + crossover=blend - batch-step"] = {
    **PARTIAL_A,
    "crossover": "blend",
    "batch-step": 0.0,
}
# FedAvg between the grid's points: how far the grid's best is from the best lr.
for _lr in (2e-4, 3e-4, 5e-4, 2e-3, 3e-3, 5e-3):
    ABLATION[f"fedavg@{_lr:g}"] = {"strategy": "fedavg", "fedavg-lr": _lr}
# A without its averaging floor, to see what the floor adds.
ABLATION["B: refresh 0.5 + batch-step 0.2"] = {
    **PARTIAL_OFF,
    "refresh-stale": 0.5,
    "batch-step": 0.2,
}
ABLATION["A + aggregate-clip=1.0 + batch-max=64"] = {
    **PARTIAL_A,
    "aggregate-clip": 1.0,
    "batch-max": 64,
}
# The federated fitness (gcfl.strategy.candidates), measured against the local one.
ABLATION["gcfl fitness=federated"] = {"fitness": "federated"}
ABLATION["gcfl fitness=improvement"] = {"fitness": "improvement"}
# Robust aggregation: what each rule costs an honest run (benchmarks/poisoning.py: what it resists).
for _rule in ("guarded", "trimmed-mean", "median", "krum"):
    ABLATION[f"gcfl aggregate={_rule}"] = {"aggregate": _rule}
ABLATION["gcfl aggregate=guarded agreement=0"] = {
    "aggregate": "guarded",
    "aggregate-agreement": 0.0,
}
ABLATION["gcfl fitness=federated fitness-candidates=leave-out"] = {
    "fitness": "federated",
    "fitness-candidates": "leave-out",
}
ABLATION["gcfl fitness=federated aggregate=drop-harmful"] = {
    "fitness": "federated",
    "aggregate": "drop-harmful",
}


def job_dir(out: Path, partition: str, variant: str, seed: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "@.-" else "_" for c in variant)
    return out / "runs" / f"{partition}-{safe}-seed{seed}"


def run_job(job: tuple[str, str, int, dict[str, Any], str, int]) -> dict[str, Any]:
    """Run one (partition, variant, seed) in this worker process; return its summary row."""
    partition, variant, seed, overrides, out, clients = job
    import json
    import logging

    from gcfl.simulation.inprocess import run_in_process

    logging.getLogger("flwr").setLevel(logging.WARNING)
    run_dir = job_dir(Path(out), partition, variant, seed)
    results_file = run_dir / "results.json"
    started = time.perf_counter()
    results = json.loads(results_file.read_text()) if results_file.is_file() else None
    if results is None or len(results["rounds"]) < overrides["num-server-rounds"]:
        shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run starts again
        results = run_in_process(
            {**overrides, "partition": partition, "seed": seed, "out-dir": str(run_dir)}, clients
        )
    return summarize(partition, variant, seed, results, time.perf_counter() - started)


def summarize(
    partition: str, variant: str, seed: int, results: dict[str, Any], seconds: float
) -> dict[str, Any]:
    rounds = results["rounds"]
    clients = [c for r in rounds for c in r["clients"]]
    return {
        "partition": partition,
        "strategy": variant,
        "seed": seed,
        "final_accuracy": rounds[-1]["accuracy"],
        "accuracies": [r["accuracy"] for r in rounds],
        # What the clients trained with in the first and last round: does the
        # batch dimension still explore, or has it collapsed to one value?
        "first_batch_sizes": _distinct_batch_sizes(rounds[0]),
        "last_batch_sizes": _distinct_batch_sizes(rounds[-1]),
        "client_fits": len(clients),
        "rolled_back_rounds": sum(r["status"] == "rolled-back" for r in rounds),
        "marked_clients": sum(c["status"] in ("diverged", "refused") for c in clients),
        "seconds": round(seconds, 1),
    }


def _distinct_batch_sizes(record: dict[str, Any]) -> int:
    return len({c["batch_size"] for c in record["clients"] if c.get("batch_size") is not None})


def first_round_reaching(accuracies: Sequence[float], target: float) -> int | None:
    """The 1-based round whose accuracy first reaches ``target``; None if none does."""
    for index, accuracy in enumerate(accuracies, start=1):
        if accuracy >= target:
            return index
    return None


def _rounds_to(runs: Sequence[dict[str, Any]], target: float) -> str:
    """Per seed, the first round at ``target`` accuracy ("-": never), and the median."""
    reached = [first_round_reaching(r["accuracies"], target) for r in runs]
    if all(r is not None for r in reached):
        median = f"median {statistics.median(reached):g}"  # type: ignore[type-var]
    else:
        median = f"{sum(r is None for r in reached)} never"
    return f"{median} ({', '.join('-' if r is None else str(r) for r in reached)})"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def tables(rows: list[dict[str, Any]], partitions: Sequence[str], command: str) -> str:
    """The Markdown report: per partition, every strategy's final accuracy over seeds."""
    lines = [
        "# Quality benchmark",
        "",
        f"Command: `{command}`  ",
        f"Date: {time.strftime('%Y-%m-%d')}; final test accuracy after the last round, "
        "mean ± std over seeds (min in brackets); cost in client-fits per strategy "
        "(fedavg-tuned: the whole grid).",
    ]
    for partition in partitions:
        mine = [r for r in rows if r["partition"] == partition]
        if not mine:
            continue
        by_strategy: dict[str, list[dict[str, Any]]] = {}
        for row in mine:
            by_strategy.setdefault(row["strategy"], []).append(row)
        grid = {s: v for s, v in by_strategy.items() if s.startswith("fedavg@")}
        lines += ["", f"## {partition}", ""]
        lines += [
            "| strategy | final accuracy | min | seeds | client-fits |",
            "|---|---|---|---|---|",
        ]
        summary: dict[str, float] = {}
        for name, runs in by_strategy.items():
            accuracies = [r["final_accuracy"] for r in runs]
            mean, std = mean_std(accuracies)
            summary[name] = mean
            fits = statistics.fmean(r["client_fits"] for r in runs)
            lines.append(
                f"| {name} | {mean:.3f} ± {std:.3f} | {min(accuracies):.3f} | {len(runs)} "
                f"| {fits:.0f} |"
            )
        if grid:
            best = max(grid, key=lambda s: (summary[s], s))
            cost = sum(statistics.fmean(r["client_fits"] for r in grid[s]) for s in grid)
            best_runs = [r["final_accuracy"] for r in grid[best]]
            mean, std = mean_std(best_runs)
            lines.append(
                f"| **fedavg-tuned** (oracle: best of {len(grid)} grid lrs by final test "
                f"accuracy = {best}) | {mean:.3f} ± {std:.3f} | {min(best_runs):.3f} | "
                f"{len(best_runs)} | {cost:.0f} |"
            )
            if "gcfl" in summary:
                gcfl_runs = [r["final_accuracy"] for r in by_strategy["gcfl"]]
                lines += [
                    "",
                    f"- gcfl - fedavg-tuned = {summary['gcfl'] - summary[best]:+.3f} "
                    f"(target >= -0.01) at "
                    f"{statistics.fmean(r['client_fits'] for r in by_strategy['gcfl']) / cost:.2f}"
                    " of its client-fits",
                ]
                if NOTEBOOK_FEDAVG in summary:
                    lines.append(
                        f"- gcfl - fedavg (notebook lr 1e-4) = "
                        f"{summary['gcfl'] - summary[NOTEBOOK_FEDAVG]:+.3f} (target >= +0.10)"
                    )
                lines.append(f"- lowest gcfl seed: {min(gcfl_runs):.3f} (target >= 0.5)")
                target = 0.9 * summary[best]
                lines.append(
                    f"- first round at 90% of the oracle's final accuracy ({target:.3f}): "
                    f"gcfl {_rounds_to(by_strategy['gcfl'], target)}, "
                    f"{best} {_rounds_to(grid[best], target)}"
                )
                lines.append(
                    "- distinct batch sizes trained with, first round -> last round (per seed): "
                    + ", ".join(
                        f"{r['first_batch_sizes']}->{r['last_batch_sizes']}"
                        for r in by_strategy["gcfl"]
                    )
                )
    return "\n".join(lines) + "\n"


def write_csvs(rows: list[dict[str, Any]], out: Path) -> None:
    fields = [k for k in rows[0] if k != "accuracies"]
    with open(out / "runs.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with open(out / "rounds.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["partition", "strategy", "seed", "round", "accuracy"])
        for row in rows:
            for index, accuracy in enumerate(row["accuracies"], start=1):
                writer.writerow([row["partition"], row["strategy"], row["seed"], index, accuracy])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gcfl-results/quality"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=42)
    parser.add_argument("--workers", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument("--partitions", default="slices,iid,dirichlet")
    parser.add_argument("--ablation-partitions", default="slices")
    parser.add_argument("--only", default="", help="comma-separated strategy names to run")
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument(
        "--fraction-fit", type=float, default=1.0, help="share of the clients sampled per round"
    )
    args = parser.parse_args(argv)
    out = args.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    shared = {
        "num-server-rounds": args.rounds,
        "local-epochs": args.local_epochs,
        "fraction-fit": args.fraction_fit,
    }
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    partitions = [p.strip() for p in args.partitions.split(",") if p.strip()]
    ablation_partitions = {p.strip() for p in args.ablation_partitions.split(",") if p.strip()}
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    # The main table first, for every seed; the ablation after it.
    tables_of_runs = [(partitions, VARIANTS), (sorted(ablation_partitions), ABLATION)]
    jobs = []
    for chosen_partitions, variants in tables_of_runs:
        for seed in seeds:
            for partition in chosen_partitions:
                for name, overrides in variants.items():
                    if not only or name in only:
                        jobs.append(
                            (partition, name, seed, {**shared, **overrides}, str(out), args.clients)
                        )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command = "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"{len(jobs)} runs on {args.workers} worker(s); output in {out}", flush=True)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.workers, maxtasksperchild=None) as pool:
        for row in pool.imap_unordered(run_job, jobs):
            rows.append(row)
            print(
                f"[{len(rows)}/{len(jobs)} {time.perf_counter() - started:6.0f}s] "
                f"{row['partition']:9} {row['strategy']:32} seed {row['seed']}: "
                f"{row['final_accuracy']:.3f} ({row['seconds']:.0f}s)",
                flush=True,
            )
            rows.sort(key=lambda r: (r["partition"], r["strategy"], r["seed"]))
            write_csvs(rows, out)
            (out / "quality.md").write_text(tables(rows, partitions, command.strip()))
    print((out / "quality.md").read_text())
    return 0 if all(math.isfinite(r["final_accuracy"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
