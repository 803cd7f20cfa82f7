"""Comparison report content: statistics, CSV, summary and plots from known runs."""

import csv
import math

import pytest

from gcfl.report.plots import write_plots
from gcfl.report.summary import write_summary
from gcfl.report.tables import (
    outcome_table,
    round_statistics,
    rounds_table,
    write_rounds_csv,
)


def run(strategy, repeat, accuracies, clients=True):
    return {
        "strategy": strategy,
        "repeat": repeat,
        "wall_seconds": 10.0 + repeat,
        "rounds": [
            {
                "round": i + 1,
                "accuracy": acc,
                "loss": 1.0 - acc,
                "seconds": 1.5,
                "clients": [
                    {
                        "id": c,
                        "lr": 1e-4 * (c + 1) * (i + 1),
                        "batch_size": 16 * (c + 1),
                        "cluster": c % 2 if c < 4 else -1,
                        "val_loss": 0.5,
                        "status": "ok",
                    }
                    for c in range(6)
                ]
                if clients
                else [],
            }
            for i, acc in enumerate(accuracies)
        ],
    }


RUNS = [
    run("gcfl", 0, [0.5, 0.7]),
    run("fedavg", 0, [0.4, 0.6]),
    run("centralized", 0, [0.6, 0.8], clients=False),
    run("gcfl", 1, [0.3, 0.9]),
    run("fedavg", 1, [0.4, 0.6]),
    run("centralized", 1, [0.6, 0.8], clients=False),
]


def test_mean_and_sample_std_across_repeats():
    stats = round_statistics(RUNS, "accuracy")
    assert stats["gcfl"][0] == pytest.approx((0.4, math.sqrt(0.02)))
    assert stats["gcfl"][1] == pytest.approx((0.8, math.sqrt(0.02)))
    assert stats["fedavg"][1] == pytest.approx((0.6, 0.0))


def test_tables_show_mean_plus_minus_std_when_repeated():
    header, rows = rounds_table(RUNS, "accuracy")
    assert header == ["round", "gcfl", "fedavg", "centralized"]
    assert rows[0] == ["1", "0.4000 ± 0.1414", "0.4000 ± 0.0000", "0.6000 ± 0.0000"]
    header, rows = outcome_table(RUNS)
    assert rows[0][0] == "gcfl" and rows[0][1] == "0.8000 ± 0.1414"
    assert rows[0][2] == "0.8000 ± 0.1414"  # best = final here
    _, single = rounds_table(RUNS[:3], "loss")
    assert single[1] == ["2", "0.3000", "0.4000", "0.2000"]


def test_csv_has_one_row_per_strategy_repeat_and_round(tmp_path):
    path = tmp_path / "rounds.csv"
    write_rounds_csv(path, RUNS)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 12
    assert list(rows[0]) == [
        "round",
        "strategy",
        "repeat",
        "accuracy",
        "loss",
        "federated_accuracy",
        "federated_loss",
        "seconds",
    ]
    assert rows[0] == {
        "round": "1",
        "strategy": "gcfl",
        "repeat": "0",
        "accuracy": "0.5",
        "loss": "0.5",
        "federated_accuracy": "",  # no federated evaluation in these runs
        "federated_loss": "",
        "seconds": "1.5",
    }


def test_summary_has_tables_outcome_plots_and_the_command(tmp_path):
    path = tmp_path / "summary.md"
    write_summary(path, RUNS, "gcfl compare --repeats 2", {"seed": 42}, ["accuracy.png"])
    text = path.read_text()
    assert "## Test accuracy per round (mean ± std over 2 seeds)" in text
    assert "| 2 | 0.8000 ± 0.1414 | 0.6000 ± 0.0000 | 0.8000 ± 0.0000 |" in text
    assert "![accuracy](accuracy.png)" in text
    assert "gcfl compare --repeats 2" in text and "seed = 42" in text


def test_every_plot_is_written_as_png(tmp_path):
    written = write_plots(RUNS, tmp_path)
    names = sorted(p.name for p in written)
    assert names == [
        "accuracy.png",
        "cluster_sizes.png",
        "clusters.png",
        "loss.png",
        "lr_trajectories.png",
    ]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_without_gcfl_only_the_metric_plots(tmp_path):
    written = write_plots([r for r in RUNS if r["strategy"] != "gcfl"], tmp_path)
    assert sorted(p.name for p in written) == ["accuracy.png", "loss.png"]


def with_federated(runs):
    """The runs as if each round had also been evaluated by the clients."""
    for a_run in runs:
        for record in a_run["rounds"]:
            record["federated_accuracy"] = record["accuracy"] - 0.05
            record["federated_loss"] = record["loss"] + 0.05
    return runs


def test_federated_evaluation_reaches_the_csv_the_summary_and_a_plot(tmp_path):
    runs = with_federated([run("gcfl", 0, [0.5, 0.7]), run("gcfl", 1, [0.6, 0.8])])
    write_rounds_csv(tmp_path / "rounds.csv", runs)
    rows = list(csv.DictReader((tmp_path / "rounds.csv").read_text().splitlines()))
    assert [float(r["federated_accuracy"]) for r in rows] == pytest.approx([0.45, 0.65, 0.55, 0.75])
    write_summary(tmp_path / "summary.md", runs, "gcfl compare", {}, [])
    summary = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "## Federated validation accuracy per round" in summary
    assert "0.5000 ± 0.0707" in summary.split("## Federated validation")[1]
    names = {p.name for p in write_plots(runs, tmp_path)}
    assert "federated_accuracy.png" in names


def test_no_federated_section_or_plot_without_federated_evaluation(tmp_path):
    write_summary(tmp_path / "summary.md", RUNS, "gcfl compare", {}, [])
    assert "Federated" not in (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "federated_accuracy.png" not in {p.name for p in write_plots(RUNS, tmp_path)}
