"""``summary.md``: the report ``gcfl compare`` writes, its tables in Markdown."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gcfl.report.tables import (
    Run,
    display_name,
    has_metric,
    oracle_info,
    outcome_table,
    repeats_in,
    rounds_table,
    strategies_in,
)

COST_NOTE = (
    "Client fits: the cost of a strategy in local trainings, the clients each round sampled "
    "summed over its rounds (mean over seeds); fedavg-tuned's client fits and wall time are "
    "the sums over all its grid runs; centralized trains on pooled data (no client fits). "
    "Client evaluations: the models sent to clients to evaluate (each one forward pass over "
    "the client's examples): the federated fitness' candidates, or the global model with "
    "fraction-evaluate > 0."
)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _oracle_note(runs: Sequence[Run]) -> list[str]:
    notes = []
    for strategy in strategies_in(runs):
        oracle = oracle_info(runs, strategy)
        if oracle is None:
            continue
        finals = ", ".join(
            f"{name} {'n/a' if value is None else format(value, '.4f')}"
            for name, value in oracle["mean_final_accuracy"].items()
        )
        notes += [
            f"{display_name(strategy, runs, long=True)}: an oracle choice. Of the FedAvg runs at "
            f"the grid's {len(oracle['candidates'])} learning rates, it reports the one with the "
            "best final test accuracy (mean over seeds; a tie goes to the smaller lr), chosen on "
            "the test set it is scored on: read it as an upper bound on tuned FedAvg that cost "
            f"{len(oracle['candidates'])} runs. Final test accuracy per grid lr: {finals}.",
            "",
        ]
    return notes


def _federated_section(runs: Sequence[Run], spread: str) -> list[str]:
    """The clients' own evaluation of the global model, when the runs asked for it."""
    if not has_metric(runs, "federated_accuracy"):
        return []
    return [
        f"## Federated validation accuracy per round{spread}",
        "",
        "The example-weighted accuracy of each round's global model on the validation",
        "splits of the clients that evaluated it (`fraction-evaluate`).",
        "",
        markdown_table(*rounds_table(runs, "federated_accuracy")),
        "",
    ]


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
        *_federated_section(runs, spread),
        "## Outcome",
        "",
        markdown_table(*outcome_table(runs)),
        "",
        COST_NOTE,
        "",
        *_oracle_note(runs),
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
