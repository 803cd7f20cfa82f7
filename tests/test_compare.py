"""``gcfl compare``'s plan, fedavg-tuned's grid and oracle, costs and report; no Flower runs."""

import ast
import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from gcfl.cli import main
from gcfl.compare.plan import (
    DEFAULT_STRATEGIES,
    ComparePlan,
    default_lr_grid,
    fine_lr_grid,
    grid_name,
    parse_lr_grid,
    parse_strategies,
)
from gcfl.config import parse_run_config
from gcfl.report.summary import write_summary
from gcfl.report.tables import (
    OUTCOME_HEADER,
    client_evaluations,
    client_fits,
    oracle_choice,
    outcome_table,
    round_statistics,
    rounds_table,
    strategies_in,
    with_oracle,
    write_rounds_csv,
)

LRS = {"lr-min": 1e-5, "lr-max": 1e-1}  # the grid's range, whatever the defaults become


def plan(tmp_path, strategies=DEFAULT_STRATEGIES, grid=(), repeats=1, **run_config):
    # The simulation engine runs its jobs here, one by one: the tests fake its launcher.
    return ComparePlan(
        run_config={**LRS, **run_config},
        strategies=parse_strategies(strategies),
        num_clients=3,
        repeats=repeats,
        out_dir=tmp_path / "cmp",
        fedavg_lr_grid=grid,
        engine="simulation",
    )


# ------------------------------------------------------------------ the plan


def test_default_grid_is_five_lrs_log_spaced_over_lr_min_to_lr_max(tmp_path):
    assert plan(tmp_path).lr_grid() == (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    assert plan(tmp_path).run_names() == [
        "gcfl",
        "fedavg",
        "fedavg@1e-05",
        "fedavg@0.0001",
        "fedavg@0.001",
        "fedavg@0.01",
        "fedavg@0.1",
        "centralized",
    ]
    # 3 significant digits, both ends included
    assert default_lr_grid(3e-5, 0.2) == (3e-5, 0.000271, 0.00245, 0.0221, 0.2)
    shifted = plan(tmp_path, **{"lr-min": 1e-7, "lr-max": 1e-3})
    assert shifted.lr_grid() == (1e-7, 1e-6, 1e-5, 1e-4, 1e-3)


def test_grid_point_names():
    assert grid_name(0.003) == "fedavg@0.003"
    assert grid_name(1e-5) == "fedavg@1e-05"
    assert grid_name(0.1) == "fedavg@0.1"


def test_lr_grid_is_parsed_sorted_and_checked():
    assert parse_lr_grid("0.01, 1e-3,3e-4") == (3e-4, 1e-3, 0.01)
    assert parse_lr_grid("0.5") == (0.5,)
    for bad in ("", " , ", "abc", "0.1,fast", "0", "-1e-3", "inf", "nan", "1e-3,0.001"):
        with pytest.raises(ValueError, match="--fedavg-lr-grid"):
            parse_lr_grid(bad)


def test_strategies_accept_fedavg_tuned_and_default_to_all_four():
    from gcfl.cli import make_parser

    assert parse_strategies("fedavg-tuned,gcfl") == ("fedavg-tuned", "gcfl")
    args = make_parser().parse_args(["compare"])
    assert parse_strategies(args.strategies) == ("gcfl", "fedavg", "fedavg-tuned", "centralized")
    assert args.fedavg_lr_grid is None


def test_each_grid_point_is_a_fedavg_run_at_its_lr_in_its_own_folder(tmp_path):
    compare = plan(tmp_path, "fedavg,fedavg-tuned", grid=(0.003, 1e-5), repeats=2, seed=7)
    assert compare.run_names() == ["fedavg", "fedavg@1e-05", "fedavg@0.003"]
    config = compare.config_for("fedavg@0.003", 1)
    assert config["strategy"] == "fedavg" and config["fedavg-lr"] == 0.003
    assert config["seed"] == 8
    assert config["out-dir"] == str(tmp_path / "cmp" / "runs" / "fedavg@0.003-seed8")
    checked = parse_run_config(config)
    assert checked.fedavg_lr == 0.003 and checked.fedavg_batch_size == 32  # batch size kept
    assert "fedavg-lr" not in compare.config_for("fedavg", 0)  # plain FedAvg keeps its lr
    out_dirs = [compare.config_for(name, r)["out-dir"] for name, r in compare.jobs()]
    assert len(compare.jobs()) == 6 and len(set(out_dirs)) == 6


def test_without_fedavg_tuned_there_is_no_grid(tmp_path):
    compare = plan(tmp_path, "gcfl,fedavg,centralized", grid=(0.1,))
    assert compare.grid_runs() == {}
    assert compare.run_names() == ["gcfl", "fedavg", "centralized"]


@pytest.mark.parametrize(
    "grid",
    ["0.1,abc", "0", "-0.5", "1e-3,0.001", ",", "inf"],
)
def test_a_bad_grid_exits_2_naming_the_flag_before_anything_starts(grid, capsys, tmp_path):
    out = tmp_path / "out"
    assert main(["compare", f"--fedavg-lr-grid={grid}", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "--fedavg-lr-grid" in error and error.count("\n") == 1
    assert not out.exists()


def test_a_grid_without_fedavg_tuned_is_refused(capsys, tmp_path):
    argv = ["compare", "--strategies", "gcfl,fedavg", "--fedavg-lr-grid", "0.1"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert "--fedavg-lr-grid" in capsys.readouterr().err


def test_cli_hands_the_grid_to_the_plan(monkeypatch, tmp_path):
    import gcfl.compare.view

    seen = {}

    def fake_run(plan, argv):
        seen["plan"] = plan
        return 0

    monkeypatch.setattr(gcfl.compare.view, "run_with_progress", fake_run)
    argv = ["compare", "--clients", "3", "--fedavg-lr-grid", "0.01,0.001", "--out"]
    assert main([*argv, str(tmp_path / "out")]) == 0
    assert seen["plan"].run_names() == [
        "gcfl",
        "fedavg",
        "fedavg@0.001",
        "fedavg@0.01",
        "centralized",
    ]


# ------------------------------------------------------------ oracle and cost


def run(strategy, repeat, accuracies, clients=3, wall=10.0):
    return {
        "strategy": strategy,
        "repeat": repeat,
        "seed": 42 + repeat,
        "wall_seconds": wall,
        "rounds": [
            {
                "round": i + 1,
                "accuracy": acc,
                "loss": 1.0 - acc if acc is not None else None,
                "seconds": 1.0,
                "clients": [{"id": c, "status": "ok"} for c in range(clients)],
            }
            for i, acc in enumerate(accuracies)
        ],
    }


GRID = ["fedavg@0.001", "fedavg@0.01", "fedavg@0.1"]
# fedavg@0.01 has the best single run (0.9) but fedavg@0.001 the best mean (0.7 vs 0.65)
RUNS = [
    run("gcfl", 0, [0.5, 0.6], clients=4),
    run("fedavg@0.001", 0, [0.4, 0.6], wall=5.0),
    run("fedavg@0.01", 0, [0.5, 0.9], clients=2, wall=6.0),
    run("fedavg@0.1", 0, [0.1, 0.1], wall=7.0),
    run("centralized", 0, [0.7, 0.9], clients=0),
    run("gcfl", 1, [0.5, 0.6], clients=4),
    run("fedavg@0.001", 1, [0.6, 0.8], wall=5.0),
    run("fedavg@0.01", 1, [0.3, 0.4], wall=6.0),
    run("fedavg@0.1", 1, [0.1, 0.1], wall=7.0),
    run("centralized", 1, [0.7, 0.9], clients=0),
]


def test_oracle_picks_the_best_mean_final_accuracy_not_the_best_single_run():
    assert oracle_choice(RUNS, GRID) == "fedavg@0.001"
    assert oracle_choice([r for r in RUNS if r["repeat"] == 0], GRID) == "fedavg@0.01"


def test_oracle_ties_go_to_the_first_candidate_and_unmeasured_ones_never_win():
    tied = [run("fedavg@0.01", 0, [0.5]), run("fedavg@0.001", 0, [0.5])]
    assert oracle_choice(tied, ["fedavg@0.001", "fedavg@0.01"]) == "fedavg@0.001"
    assert oracle_choice(tied, ["fedavg@0.01", "fedavg@0.001"]) == "fedavg@0.01"
    unmeasured = [run("fedavg@0.001", 0, [None]), run("fedavg@0.01", 0, [0.0])]
    assert oracle_choice(unmeasured, ["fedavg@0.001", "fedavg@0.01"]) == "fedavg@0.01"


def test_fedavg_tuned_follows_its_grid_with_the_chosen_rounds_and_the_whole_grid_cost():
    reported = with_oracle(RUNS, GRID, "fedavg-tuned")
    assert strategies_in(reported) == ["gcfl", *GRID, "fedavg-tuned", "centralized"]
    tuned = [r for r in reported if r["strategy"] == "fedavg-tuned"]
    assert [r["repeat"] for r in tuned] == [0, 1]
    assert tuned[1]["rounds"] == RUNS[6]["rounds"]  # fedavg@0.001, repeat 1
    assert tuned[0]["client_fits"] == 6 + 4 + 6  # every grid run of the repeat
    assert tuned[0]["wall_seconds"] == 5.0 + 6.0 + 7.0
    assert [r for r in reported if r["strategy"] != "fedavg-tuned"] == RUNS


def test_client_fits_count_every_sampled_client_of_every_round():
    assert client_fits(run("gcfl", 0, [0.1, 0.2, 0.3], clients=5)) == 15
    assert client_fits(run("centralized", 0, [0.1, 0.2], clients=0)) is None


def test_outcome_table_states_cost_and_labels_the_oracle():
    reported = with_oracle(RUNS, GRID, "fedavg-tuned")
    header, rows = outcome_table(reported)
    assert header == [
        "strategy",
        "final accuracy",
        "best accuracy",
        "client fits",
        "client evaluations",
        "wall time (s)",
    ]
    by_name = {row[0].split(" (")[0]: row for row in rows}
    assert by_name["gcfl"][3] == "8"
    assert by_name["fedavg@0.001"][1:4] == ["0.7000 ± 0.1414", "0.7000 ± 0.1414", "6"]
    assert by_name["fedavg@0.01"][3] == "5"  # mean over repeats: 4 and 6
    assert by_name["centralized"][3] == "- (2 epochs)"
    tuned = by_name["fedavg-tuned"]
    assert tuned[0] == (
        "fedavg-tuned (oracle: best of 3 grid lrs by mean final test accuracy over 2 seeds "
        "= fedavg@0.001)"
    )
    assert tuned[1] == by_name["fedavg@0.001"][1]
    assert tuned[3] == "17 (3 runs)"  # 6 + 5 + 6: the cost of the whole grid
    assert tuned[4] == "0"  # no run sent a model to evaluate
    assert by_name["centralized"][4] == "-"
    assert tuned[5] == "18.0 ± 0.0"


def test_each_grid_point_has_its_own_mean_and_std_per_round():
    reported = with_oracle(RUNS, GRID, "fedavg-tuned")
    stats = round_statistics(reported, "accuracy")
    assert stats["fedavg@0.001"][1] == pytest.approx((0.7, math.sqrt(0.02)))
    assert stats["fedavg@0.01"][1] == pytest.approx((0.65, math.sqrt(0.125)))
    assert stats["fedavg-tuned"] == stats["fedavg@0.001"]
    header, rows = rounds_table(reported, "accuracy")
    assert header == [
        "round",
        "gcfl",
        *GRID,
        "fedavg-tuned (oracle: fedavg@0.001)",
        "centralized",
    ]
    assert rows[1][2:5] == ["0.7000 ± 0.1414", "0.6500 ± 0.3536", "0.1000 ± 0.0000"]
    assert rows[-2] == ["client fits", "8", "6", "5", "6", "17 (3 runs)", "- (2 epochs)"]
    assert rows[-1] == ["client evaluations", "0", "0", "0", "0", "0", "-"]


def test_rounds_csv_has_rows_for_every_grid_point_and_repeat(tmp_path):
    path = tmp_path / "rounds.csv"
    write_rounds_csv(path, with_oracle(RUNS, GRID, "fedavg-tuned"))
    rows = list(csv.DictReader(path.open()))
    for name in [*GRID, "fedavg-tuned"]:
        mine = [(r["repeat"], r["round"]) for r in rows if r["strategy"] == name]
        assert mine == [("0", "1"), ("0", "2"), ("1", "1"), ("1", "2")], name
    tuned = [r["accuracy"] for r in rows if r["strategy"] == "fedavg-tuned"]
    assert tuned == ["0.4", "0.6", "0.6", "0.8"]


def test_summary_explains_the_oracle_and_the_cost(tmp_path):
    path = tmp_path / "summary.md"
    reported = with_oracle(RUNS, GRID, "fedavg-tuned")
    write_summary(path, reported, "gcfl compare --repeats 2", {"seed": 42}, [])
    text = path.read_text()
    assert "| round | gcfl | fedavg@0.001 | fedavg@0.01 | fedavg@0.1 |" in text
    assert "| client fits | 8 | 6 | 5 | 6 | 17 (3 runs) | - (2 epochs) |" in text
    assert "Client fits:" in text and "sums over all its grid runs" in text
    assert "an oracle choice" in text and "fedavg@0.01 0.6500" in text


# ---------------------------------------------------------- runner and report


def test_run_comparison_runs_each_grid_point_at_its_lr(monkeypatch, tmp_path):
    import gcfl.compare.centralized
    import gcfl.simulation.launcher
    from gcfl.compare.runner import run_comparison

    finals = {1e-5: 0.2, 1e-3: 0.8, 0.1: 0.5}
    asked = []

    def fake_simulate(config, num_clients, on_line):
        asked.append((config["strategy"], config.get("fedavg-lr"), config["out-dir"]))
        on_line("INFO :      fit progress: (1, 0.69, {'accuracy': 0.5, 'f1': 0.4}, 3.1)")
        on_line('INFO :      gcfl-progress {"round":1,"rounds":2,"accuracy":0.5,"loss":0.69}')
        accuracy = finals.get(config.get("fedavg-lr"), 0.3)
        results = run(config["strategy"], 0, [accuracy], clients=num_clients)
        return SimpleNamespace(results=results, seconds=2.0, run_id=1)

    def fake_centralized(config, num_clients, data, on_epoch):
        on_epoch(1)
        return run("centralized", 0, [0.9], clients=0)

    monkeypatch.setattr(gcfl.simulation.launcher, "simulate", fake_simulate)
    monkeypatch.setattr(gcfl.compare.centralized, "train_centralized", fake_centralized)
    compare = plan(tmp_path, grid=(0.1, 1e-5, 1e-3), **{"num-server-rounds": 2})
    rounds = []
    runs = run_comparison(
        compare, lambda *job: None, lambda *progress: rounds.append(progress), lambda e: None
    )
    assert [r["strategy"] for r in runs] == [
        "gcfl",
        "fedavg",
        "fedavg@1e-05",
        "fedavg@0.001",
        "fedavg@0.1",
        "centralized",
    ]
    assert [a[:2] for a in asked[2:]] == [("fedavg", 1e-5), ("fedavg", 1e-3), ("fedavg", 0.1)]
    assert asked[1][:2] == ("fedavg", None)
    assert ("fedavg@0.001", 0, 1, 2) in rounds  # progress read from gcfl's event line
    assert rounds.count(("fedavg@0.001", 0, 1, 2)) == 1  # not from Flower's own line
    assert json.loads((compare.out_dir / "results.json").read_text())["runs"][-1]["strategy"] == (
        "centralized"
    )


def test_the_baselines_lr_in_the_grid_is_not_trained_twice(monkeypatch, tmp_path):
    import gcfl.simulation.launcher
    from gcfl.compare.runner import run_comparison

    asked = []

    def fake_simulate(config, num_clients, on_line):
        asked.append(config.get("fedavg-lr"))
        results = run(config["strategy"], 0, [0.4], clients=num_clients)
        return SimpleNamespace(results=results, seconds=2.0, run_id=1)

    monkeypatch.setattr(gcfl.simulation.launcher, "simulate", fake_simulate)
    compare = plan(tmp_path, "fedavg,fedavg-tuned", grid=(1e-4, 1e-3), **{"fedavg-lr": 1e-4})
    runs = run_comparison(compare, lambda *job: None, lambda *p: None, lambda e: None)
    assert asked == [1e-4, 1e-3]  # fedavg, then only the grid point that differs
    assert [r["strategy"] for r in runs] == ["fedavg", "fedavg@0.0001", "fedavg@0.001"]
    assert runs[1]["same_run_as"] == "fedavg" and runs[1]["rounds"] == runs[0]["rounds"]
    # Another baseline lr: every grid point is a run of its own.
    other = plan(tmp_path / "b", "fedavg,fedavg-tuned", grid=(1e-4, 1e-3), **{"fedavg-lr": 3e-4})
    asked.clear()
    run_comparison(other, lambda *job: None, lambda *p: None, lambda e: None)
    assert asked == [3e-4, 1e-4, 1e-3]


def test_write_report_holds_grid_choice_and_every_grid_point(tmp_path):
    from gcfl.compare.runner import write_report

    compare = plan(tmp_path, "fedavg-tuned,centralized", grid=(0.001, 0.01, 0.1), repeats=2)
    compare.out_dir.mkdir(parents=True)
    runs = [r for r in RUNS if r["strategy"] != "gcfl"]
    paths = write_report(compare, runs, "gcfl compare --repeats 2")
    report = json.loads((compare.out_dir / "results.json").read_text())
    assert report["fedavg_lr_grid"] == [0.001, 0.01, 0.1]
    assert report["fedavg_tuned"]["choice"] == "fedavg@0.001"
    assert [r["strategy"] for r in report["runs"]] == [r["strategy"] for r in runs]
    rows = list(csv.DictReader((compare.out_dir / "rounds.csv").open()))
    assert {r["strategy"] for r in rows} == {*GRID, "fedavg-tuned", "centralized"}
    summary = (compare.out_dir / "summary.md").read_text()
    assert "fedavg-tuned (oracle: best of 3 grid lrs" in summary
    assert "fedavg-lr-grid = '0.001,0.01,0.1'" in summary
    assert {p.name for p in paths} >= {"results.json", "rounds.csv", "summary.md", "accuracy.png"}


# --------------------------------------------------------------- no cycle


def test_compare_package_imports_nothing_from_the_cli():
    code = (
        "import sys\n"
        "import gcfl.compare, gcfl.compare.plan, gcfl.compare.runner\n"
        "import gcfl.compare.view, gcfl.compare.centralized\n"
        "assert 'gcfl.cli' not in sys.modules, 'gcfl.cli was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # Imports inside functions too (they run only when a comparison does).
    package = Path(__file__).resolve().parents[1] / "gcfl" / "compare"
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("gcfl.cli"), source
            elif isinstance(node, ast.Import):
                assert all(not a.name.startswith("gcfl.cli") for a in node.names), source


def test_progress_parsing_is_the_servers_one_everywhere():
    import gcfl.cli.common
    import gcfl.compare.runner
    from gcfl.server.progress import parse_progress_line

    assert gcfl.cli.common.parse_progress_line is parse_progress_line
    assert gcfl.compare.runner.parse_progress_line is parse_progress_line


def test_client_evaluations_count_the_models_sent_over_every_round():
    evaluated = run("gcfl", 0, [0.1, 0.2, 0.3], clients=5)
    for record, models in zip(evaluated["rounds"], (12, 0, 9), strict=True):
        record["models_sent"] = models
    assert client_evaluations(evaluated) == 21
    assert client_evaluations(run("fedavg@0.001", 0, [0.1, 0.2], clients=5)) == 0
    assert client_evaluations(run("centralized", 0, [0.1, 0.2], clients=0)) is None


def test_the_fine_grid_is_one_two_three_five_per_decade_inside_the_space():
    assert fine_lr_grid(1e-5, 1e-1) == (
        1e-5,
        2e-5,
        3e-5,
        5e-5,
        1e-4,
        2e-4,
        3e-4,
        5e-4,
        1e-3,
        2e-3,
        3e-3,
        5e-3,
        1e-2,
        2e-2,
        3e-2,
        5e-2,
        1e-1,
    )
    assert fine_lr_grid(2.5e-4, 4e-3) == (3e-4, 5e-4, 1e-3, 2e-3, 3e-3)


@pytest.mark.parametrize("repeats", [1, 3])
def test_the_terminals_outcome_table_fits_80_columns_with_every_column_and_whole_names(repeats):
    from rich.console import Console

    from gcfl.compare.view import rich_table

    tuned = "fedavg-tuned (oracle: fedavg@0.001)"
    names = ["gcfl", "fedavg", "fedavg@1e-05", "fedavg@0.0001", tuned, "centralized"]
    accuracy, wall = ("0.9583", "197.7") if repeats == 1 else ("0.9583 ± 0.0123", "197.7 ± 12.3")
    header = list(OUTCOME_HEADER)
    rows = [[name, accuracy, accuracy, "1500 (5 runs)", "0", wall] for name in names]
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(rich_table("Outcome", header, rows))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    body = [line for line in lines if line.startswith("│")]
    # Every column is there, none cropped at the edge: each row line ends in its border.
    assert all(line.rstrip().endswith("│") for line in body), lines
    assert sum("197.7" in line for line in body) == len(names)
    for name in [*names[:4], "centralized"]:
        assert any(line.startswith(f"│ {name} ") for line in body), (name, lines)
