"""Per-round statistics across repeats, ``rounds.csv`` and ``summary.md``."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

Run = dict[str, Any]  # one strategy's results for one repeat, in the results.json schema


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
        writer.writerow(["round", "strategy", "repeat", "accuracy", "loss", "seconds"])
        for run in runs:
            for record in run["rounds"]:
                writer.writerow(
                    [
                        record["round"],
                        run["strategy"],
                        run["repeat"],
                        record.get("accuracy"),
                        record.get("loss"),
                        record.get("seconds"),
                    ]
                )


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
    header = ["round", *strategies]
    num_rounds = max(len(series) for series in stats.values())
    rows = []
    for index in range(num_rounds):
        row = [str(index + 1)]
        for strategy in strategies:
            series = stats[strategy]
            row.append(_cell(*series[index], repeats, 4) if index < len(series) else "")
        rows.append(row)
    return header, rows


def outcome_table(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
    """Final and best accuracy and wall time per strategy (mean ± std over repeats)."""
    repeats = repeats_in(runs)
    header = ["strategy", "final accuracy", "best accuracy", "wall time (s)"]
    rows = []
    for strategy in strategies_in(runs):
        mine = [run for run in runs if run["strategy"] == strategy]
        finals = [run["rounds"][-1].get("accuracy") or math.nan for run in mine]
        bests = [max((r.get("accuracy") or math.nan) for r in run["rounds"]) for run in mine]
        walls = [run.get("wall_seconds", math.nan) for run in mine]
        rows.append(
            [strategy]
            + [
                _cell(
                    float(np.nanmean(v)),
                    float(np.nanstd(v, ddof=1)) if len(v) > 1 else 0.0,
                    repeats,
                    digits,
                )
                for v, digits in ((finals, 4), (bests, 4), (walls, 1))
            ]
        )
    return header, rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_summary(
    path: Path, runs: Sequence[Run], command: str, settings: dict[str, Any], plots: Sequence[str]
) -> None:
    """``summary.md``: the per-round table, outcomes, plots and how to reproduce."""
    repeats = repeats_in(runs)
    spread = f" (mean ± std over {repeats} seeds)" if repeats > 1 else " (one seed)"
    parts = [
        "# gcfl comparison",
        "",
        f"## Test accuracy per round{spread}",
        "",
        markdown_table(*rounds_table(runs, "accuracy")),
        "",
        f"## Test loss per round{spread}",
        "",
        markdown_table(*rounds_table(runs, "loss")),
        "",
        "Rounds of centralized are epochs over the pooled training data.",
        "",
        "## Outcome",
        "",
        markdown_table(*outcome_table(runs)),
        "",
        "A difference smaller than the spread between seeds is noise; use `--repeats` to "
        "measure the spread.",
        "",
        "## Plots",
        "",
        *[f"![{Path(p).stem}]({Path(p).name})" for p in plots],
        "",
        "## Reproduce",
        "",
        "```",
        command,
        "```",
        "",
        "Settings:",
        "",
        "```",
        *[f"{key} = {value!r}" for key, value in settings.items()],
        "```",
        "",
    ]
    path.write_text("\n".join(parts), encoding="utf-8")
