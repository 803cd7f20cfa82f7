"""Benchmark: well-formed poisoned updates against each aggregation rule.

Usage:
    python benchmarks/poisoning.py [--out DIR] [--rules mean,trimmed-mean,median,krum]
                                   [--cases sign-flip,noise,label-flip] [--hostile 1,2]
                                   [--inits random,search] [--seeds 1] [--nodes 6]
                                   [--rounds 5] [--workers 2] [--set KEY=VALUE ...]

Every run is gcfl with its defaults (digits, ``--nodes`` clients all training,
``--rounds`` rounds) and one ``aggregate`` rule, run in process
(:func:`gcfl.simulation.inprocess.run_in_process`) with the hostile suite's
client (:mod:`gcfl.testing.hostile`): the first ``k`` of partitions 0, 3, 1,
4 misbehave. ``sign-flip`` and ``noise`` send a move at 0.9 x the largest
norm the server accepts, ``label-flip`` trains honestly on labels shifted by
one class. Each run is compared with the honest run of the same rule, init
and seed. Writes ``DIR/poisoning.csv`` and ``DIR/poisoning.md``.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HOSTILE_PARTITIONS = (0, 3, 1, 4)


def run_job(job: tuple[str, str, int, str, int, dict[str, Any], str, int]) -> dict[str, Any]:
    rule, init, seed, case, count, extra, out, nodes = job
    import logging

    from gcfl.simulation.inprocess import run_in_process
    from gcfl.testing.hostile import ENV_VAR, client_fn

    logging.getLogger("flwr").setLevel(logging.WARNING)
    hostile = {p: case for p in HOSTILE_PARTITIONS[:count]} if case != "honest" else {}
    os.environ[ENV_VAR] = ",".join(f"{p}:{c}" for p, c in hostile.items())
    run_dir = Path(out) / "runs" / f"{rule}-{init}-{seed}-{case}-{count}"
    config = {
        **extra,
        "aggregate": rule,
        "init": init,
        "seed": seed,
        "out-dir": str(run_dir),
    }
    started = time.perf_counter()
    results = run_in_process(config, nodes, make_client=client_fn)
    rounds = results["rounds"]
    clients = [c for r in rounds for c in r["clients"]]
    bad = [c for c in clients if c["id"] in hostile]
    good = [c for c in clients if c["id"] not in hostile]

    def share(group: list[dict[str, Any]], key: str) -> float | None:
        values = [c[key] for c in group if c.get(key) is not None]
        return round(statistics.fmean(values), 3) if values else None

    return {
        "rule": rule,
        "init": init,
        "seed": seed,
        "case": case,
        "hostile": count if hostile else 0,
        "final_accuracy": rounds[-1]["accuracy"],
        "hostile_ok": sum(c["status"] == "ok" for c in bad),
        "hostile_fits": len(bad),
        "hostile_left_out": sum(bool(c.get("left_out")) for c in bad),
        "honest_left_out": sum(bool(c.get("left_out")) for c in good),
        "hostile_outlier_share": share(bad, "outlier_share"),
        "honest_outlier_share": share(good, "outlier_share"),
        "rolled_back": sum(r["status"] == "rolled-back" for r in rounds),
        "round_seconds": round(statistics.fmean(r["seconds"] for r in rounds[1:] or rounds), 3),
        "seconds": round(time.perf_counter() - started, 1),
    }


def table(rows: list[dict[str, Any]], command: str) -> str:
    honest = {
        (r["rule"], r["init"], r["seed"]): r["final_accuracy"]
        for r in rows
        if r["case"] == "honest"
    }
    lines = [
        "# Poisoning benchmark",
        "",
        f"Command: `{command}`  ",
        f"Date: {time.strftime('%Y-%m-%d')}; final test accuracy after the last round; "
        "'vs honest': minus the honest run of the same rule, init and seed; hostile fits "
        "accepted as ok / all, left out by the rule; outlier share: the mean share of a "
        "client's coordinates a median or trimmed mean dropped (hostile / honest).",
        "",
        "| rule | init | seed | case | hostile nodes | final accuracy | vs honest | hostile ok | "
        "left out (hostile / honest) | outlier share (hostile / honest) | s per round |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["rule"], r["init"], r["seed"], r["case"], r["hostile"])):
        base = honest.get((r["rule"], r["init"], r["seed"]))
        delta = (
            "" if base is None or r["case"] == "honest" else f"{r['final_accuracy'] - base:+.3f}"
        )
        lines.append(
            f"| {r['rule']} | {r['init']} | {r['seed']} | {r['case']} | {r['hostile']} | "
            f"{r['final_accuracy']:.3f} | {delta} | {r['hostile_ok']}/{r['hostile_fits']} | "
            f"{r['hostile_left_out']} / {r['honest_left_out']} | "
            f"{r['hostile_outlier_share']} / {r['honest_outlier_share']} | {r['round_seconds']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gcfl-results/poisoning"))
    parser.add_argument("--rules", default="mean,trimmed-mean,median,krum")
    parser.add_argument("--cases", default="sign-flip,noise,label-flip")
    parser.add_argument("--hostile", default="1,2", help="hostile node counts")
    parser.add_argument("--inits", default="random,search")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=42)
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    from gcfl.config import parse_assignment

    extra: dict[str, Any] = {"num-server-rounds": args.rounds}
    extra.update(parse_assignment(item) for item in args.set)
    out = args.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for init in args.inits.split(","):
            for rule in args.rules.split(","):
                jobs.append((rule, init, seed, "honest", 0, extra, str(out), args.nodes))
                for case in args.cases.split(","):
                    for count in (int(c) for c in args.hostile.split(",")):
                        jobs.append((rule, init, seed, case, count, extra, str(out), args.nodes))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command = "python benchmarks/poisoning.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    print(f"{len(jobs)} runs on {args.workers} worker(s); output in {out}", flush=True)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for row in pool.imap_unordered(run_job, jobs):
            rows.append(row)
            print(
                f"[{len(rows)}/{len(jobs)} {time.perf_counter() - started:5.0f}s] {row['rule']:12} "
                f"{row['init']:6} {row['case']:10} x{row['hostile']}: {row['final_accuracy']:.3f}",
                flush=True,
            )
            with open(out / "poisoning.csv", "w", newline="") as stream:
                writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            (out / "poisoning.md").write_text(table(rows, command.strip()))
    print((out / "poisoning.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
