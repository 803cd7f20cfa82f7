"""Per-round statistics across repeats, ``rounds.csv`` and ``summary.md``."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

Run = dict[str, Any]  # one strategy's results for one repeat, in the results.json schema


FEDERATED = ("federated_accuracy", "federated_loss")


def _accuracy(record: dict[str, Any]) -> float:
    value = record.get("accuracy")
    return float(value) if value is not None and math.isfinite(value) else math.nan


def final_accuracy(run: Run) -> float:
    """The test accuracy after the run's last round (NaN when it was not measured)."""
    return _accuracy(run["rounds"][-1]) if run["rounds"] else math.nan


def client_fits(run: Run) -> int | None:
    """The client fits a run asked for: its sampled clients summed over rounds.

    Every client a round sampled has a record in that round, whatever became of
    its fit (ok, diverged, refused, failed). None for centralised training.
    A derived run (fedavg-tuned) carries its own count, the sum over its grid.
    """
    if "client_fits" in run:
        return run["client_fits"]
    if run["strategy"] == "centralized":
        return None
    return sum(len(record.get("clients") or []) for record in run["rounds"])


def client_evaluations(run: Run) -> int | None:
    """The models clients evaluated, summed over rounds: each one forward pass over a client's
    examples, and one model sent (the federated fitness' candidates, or the global model
    under ``fraction-evaluate``). None for centralised training.
    """
    if "client_evaluations" in run:
        return run["client_evaluations"]
    if run["strategy"] == "centralized":
        return None
    return sum(int(record.get("models_sent") or 0) for record in run["rounds"])


def mean_final_accuracy(runs: Sequence[Run], strategy: str) -> float | None:
    """A strategy's final test accuracy, mean over its repeats that measured one."""
    finals = [final_accuracy(run) for run in runs if run["strategy"] == strategy]
    finite = [value for value in finals if not math.isnan(value)]
    return float(np.mean(finite)) if finite else None


def oracle_choice(runs: Sequence[Run], candidates: Sequence[str]) -> str:
    """The candidate with the best final test accuracy, mean over its repeats.

    A tie goes to the candidate listed first; a candidate without any measured
    final accuracy is never preferred to one with one.
    """
    best, best_score = candidates[0], -math.inf
    for index, name in enumerate(candidates):
        mean = mean_final_accuracy(runs, name)
        score = -math.inf if mean is None else mean
        if index == 0 or score > best_score:
            best, best_score = name, score
    return best


def with_oracle(runs: Sequence[Run], candidates: Sequence[str], name: str) -> list[Run]:
    """``runs`` plus, per repeat, a derived run ``name``: the oracle's pick of ``candidates``.

    The pick is one candidate for every repeat (best mean final test accuracy,
    :func:`oracle_choice`); the derived run has its rounds, and as cost the sum
    over all candidates of that repeat: client fits and wall time. Each derived
    run follows the last candidate run of its repeat.
    """
    choice = oracle_choice(runs, candidates)
    repeats = sorted({run["repeat"] for run in runs if run["strategy"] in candidates})
    oracle = {
        "choice": choice,
        "candidates": list(candidates),
        "by": "final test accuracy",
        "repeats": len(repeats),
        "mean_final_accuracy": {c: mean_final_accuracy(runs, c) for c in candidates},
    }
    derived: dict[int, Run] = {}
    last: dict[int, int] = {}
    for index, run in enumerate(runs):
        if run["strategy"] in candidates:
            last[run["repeat"]] = index
    for repeat in repeats:
        grid = [r for r in runs if r["strategy"] in candidates and r["repeat"] == repeat]
        chosen = next((r for r in grid if r["strategy"] == choice), None)
        if chosen is None:
            continue
        derived[repeat] = {
            "strategy": name,
            "repeat": repeat,
            "seed": chosen.get("seed"),
            "rounds": chosen["rounds"],
            "wall_seconds": sum(r.get("wall_seconds", math.nan) for r in grid),
            "client_fits": sum(client_fits(r) or 0 for r in grid),
            "client_evaluations": sum(client_evaluations(r) or 0 for r in grid),
            "oracle": oracle,
        }
    result: list[Run] = []
    for index, run in enumerate(runs):
        result.append(run)
        for repeat, position in last.items():
            if position == index and repeat in derived:
                result.append(derived[repeat])
    return result


def oracle_info(runs: Sequence[Run], name: str) -> dict[str, Any] | None:
    """The oracle's choice behind the derived runs ``name`` (None when there are none)."""
    return next(
        (run["oracle"] for run in runs if run["strategy"] == name and "oracle" in run), None
    )


def display_name(strategy: str, runs: Sequence[Run], long: bool = False) -> str:
    """A strategy's name in tables and legends; a derived one says it is an oracle's choice."""
    oracle = oracle_info(runs, strategy)
    if oracle is None:
        return strategy
    if not long:
        return f"{strategy} (oracle: {oracle['choice']})"
    by = oracle["by"]
    if oracle["repeats"] > 1:
        by = f"mean {by} over {oracle['repeats']} seeds"
    return (
        f"{strategy} (oracle: best of {len(oracle['candidates'])} grid lrs by {by} "
        f"= {oracle['choice']})"
    )


def cost_cell(strategy: str, runs: Sequence[Run]) -> str:
    """A strategy's client fits, mean over repeats; ``-`` and its epochs for centralised."""
    mine = [run for run in runs if run["strategy"] == strategy]
    fits = [client_fits(run) for run in mine]
    if not mine:
        return ""
    counted = [value for value in fits if value is not None]
    if len(counted) < len(fits):
        return f"- ({len(mine[0]['rounds'])} epochs)"
    mean = float(np.mean(counted))
    text = f"{mean:.0f}" if mean.is_integer() else f"{mean:.1f}"
    oracle = mine[0].get("oracle")
    if oracle is not None:
        text += f" ({len(oracle['candidates'])} runs)"
    return text


def evaluations_cell(strategy: str, runs: Sequence[Run]) -> str:
    """A strategy's client evaluations, mean over repeats; ``-`` for centralised."""
    values = [client_evaluations(run) for run in runs if run["strategy"] == strategy]
    if not values:
        return ""
    counted = [value for value in values if value is not None]
    if len(counted) < len(values):
        return "-"
    mean = float(np.mean(counted))
    return f"{mean:.0f}" if mean.is_integer() else f"{mean:.1f}"


def round_statistics(runs: Sequence[Run], metric: str) -> dict[str, list[tuple[float, float]]]:
    """Per strategy, (mean, std) of ``metric`` for each round across repeats.

    The standard deviation is the sample one (ddof=1); with one repeat it is 0.
    A missing value (a failed evaluation) leaves that repeat out of the round.
    """
    by_strategy: dict[str, list[list[float]]] = {}
    for run in runs:
        series = by_strategy.setdefault(run["strategy"], [])
        for index, record in enumerate(run["rounds"]):
            while len(series) <= index:
                series.append([])
            value = record.get(metric)
            if value is not None and math.isfinite(value):
                series[index].append(float(value))
    return {
        strategy: [
            (
                float(np.mean(values)) if values else math.nan,
                float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            )
            for values in series
        ]
        for strategy, series in by_strategy.items()
    }


def strategies_in(runs: Sequence[Run]) -> list[str]:
    return list(dict.fromkeys(run["strategy"] for run in runs))


def write_rounds_csv(path: Path, runs: Sequence[Run]) -> None:
    """One row per strategy, repeat and round."""
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["round", "strategy", "repeat", "accuracy", "loss", *FEDERATED, "seconds"])
        for run in runs:
            for record in run["rounds"]:
                writer.writerow(
                    [
                        record["round"],
                        run["strategy"],
                        run["repeat"],
                        record.get("accuracy"),
                        record.get("loss"),
                        *(record.get(metric) for metric in FEDERATED),
                        record.get("seconds"),
                    ]
                )


def has_metric(runs: Sequence[Run], metric: str) -> bool:
    """Whether any round of any run measured ``metric`` (federated evaluation is optional)."""
    return any(record.get(metric) is not None for run in runs for record in run["rounds"])


def _cell(mean: float, std: float, repeats: int, digits: int) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if repeats > 1 else f"{mean:.{digits}f}"


def repeats_in(runs: Sequence[Run]) -> int:
    return len({run["repeat"] for run in runs})


def rounds_table(runs: Sequence[Run], metric: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-round table of ``metric``: one column per strategy."""
    strategies = strategies_in(runs)
    repeats = repeats_in(runs)
    stats = round_statistics(runs, metric)
    header = ["round", *(display_name(strategy, runs) for strategy in strategies)]
    num_rounds = max(len(series) for series in stats.values())
    rows = []
    for index in range(num_rounds):
        row = [str(index + 1)]
        for strategy in strategies:
            series = stats[strategy]
            row.append(_cell(*series[index], repeats, 4) if index < len(series) else "")
        rows.append(row)
    rows.append(["client fits", *(cost_cell(strategy, runs) for strategy in strategies)])
    rows.append(
        ["client evaluations", *(evaluations_cell(strategy, runs) for strategy in strategies)]
    )
    return header, rows


OUTCOME_HEADER = (
    "strategy",
    "final accuracy",
    "best accuracy",
    "client fits",
    "client evaluations",
    "wall time (s)",
)


def outcome_table(runs: Sequence[Run], long: bool = True) -> tuple[list[str], list[list[str]]]:
    """Final and best accuracy, cost in client fits and wall time per strategy.

    Accuracies and wall time are mean ± std over repeats; client fits the mean.
    ``long=False`` names an oracle by its choice alone (the terminal's table).
    """
    repeats = repeats_in(runs)
    header = list(OUTCOME_HEADER)
    rows = []
    for strategy in strategies_in(runs):
        mine = [run for run in runs if run["strategy"] == strategy]
        finals = [final_accuracy(run) for run in mine]
        bests = [_best(run) for run in mine]
        walls = [run.get("wall_seconds", math.nan) for run in mine]
        accuracy, best, wall = (
            _cell(_nanmean(v), _nanstd(v), repeats, digits)
            for v, digits in ((finals, 4), (bests, 4), (walls, 1))
        )
        name = display_name(strategy, runs, long=long)
        cost = cost_cell(strategy, runs)
        rows.append([name, accuracy, best, cost, evaluations_cell(strategy, runs), wall])
    return header, rows


def _best(run: Run) -> float:
    values = [_accuracy(record) for record in run["rounds"]]
    finite = [value for value in values if not math.isnan(value)]
    return max(finite) if finite else math.nan


def _nanmean(values: Sequence[float]) -> float:
    finite = [value for value in values if value is not None and not math.isnan(value)]
    return float(np.mean(finite)) if finite else math.nan


def _nanstd(values: Sequence[float]) -> float:
    finite = [value for value in values if value is not None and not math.isnan(value)]
    return float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
