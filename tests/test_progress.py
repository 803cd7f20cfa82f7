"""gcfl's per-round progress event: written by the ServerApp, read from any output line."""

import json
import logging

import pytest

from gcfl.server.progress import (
    PROGRESS_PREFIX,
    parse_progress_line,
    progress_event,
    progress_line,
)

EVENT = {
    "round": 3,
    "rounds": 10,
    "accuracy": 0.9123,
    "loss": 0.3012,
    "federated_accuracy": 0.9001,
    "federated_loss": 0.31,
    "accepted": 15,
    "status": "ok",
}
GREEN, RESET = "\033[92m", "\033[0m"


def test_an_event_round_trips_through_its_line():
    line = progress_line(EVENT)
    assert line.startswith(PROGRESS_PREFIX) and "\n" not in line
    assert parse_progress_line(line) == EVENT


def test_the_event_is_found_behind_flowers_log_prefix_and_colours():
    line = f"{GREEN}INFO {RESET}:      {progress_line(EVENT)}{RESET}\r"
    assert parse_progress_line(line) == EVENT
    assert parse_progress_line(f"INFO :      {progress_line(EVENT)}") == EVENT


def test_the_event_is_built_from_a_rounds_record():
    record = {"round": 2, "accuracy": 0.5, "loss": 1, "status": "rolled-back", "accepted": 4}
    event = progress_event({**record, "clients": [{"id": 0}], "seconds": 3.2}, 5)
    assert event == {
        "round": 2,
        "rounds": 5,
        "accuracy": 0.5,
        "loss": 1.0,
        "federated_accuracy": None,
        "federated_loss": None,
        "accepted": 4,
        "status": "rolled-back",
    }
    assert parse_progress_line(progress_line(event)) == event


def test_only_round_is_required_and_unknown_keys_are_dropped():
    line = PROGRESS_PREFIX + json.dumps({"round": 1, "f1": 0.4, "accuracy": None})
    assert parse_progress_line(line) == {"round": 1, "accuracy": None}


@pytest.mark.parametrize(
    "line",
    [
        "",
        "INFO :      [ROUND 3]",
        "gcfl-progress",
        "gcfl-progress ",
        "gcfl-progress not json",
        'gcfl-progress {"round": 3, "accuracy": 0.9',  # truncated
        "gcfl-progress [3, 0.9]",  # not an object
        'gcfl-progress "round 3"',
        'gcfl-progress {"accuracy": 0.9}',  # no round
        'gcfl-progress {"round": "3"}',
        'gcfl-progress {"round": 3.0}',
        'gcfl-progress {"round": true}',
        'gcfl-progress {"round": 0}',
        'gcfl-progress {"round": 3, "rounds": "ten"}',
        'gcfl-progress {"round": 3, "accuracy": "high"}',
        'gcfl-progress {"round": 3, "loss": [0.3]}',
        'gcfl-progress {"round": 3, "accepted": 1.5}',
        'gcfl-progress {"round": 3, "status": 1}',
        'gcfl-progress {"round": 3, "loss": 1' + "0" * 400 + "}",  # too large for a float
        "gcfl-progress " + "[" * 100_000,  # nesting deep enough to exhaust the stack
        "\x00\xff gcfl-progress \ud800",
    ],
)
def test_anything_malformed_gives_none_and_never_raises(line):
    assert parse_progress_line(line) is None


@pytest.mark.parametrize(
    "line",
    [
        "INFO :      fit progress: (3, 0.617, {'accuracy': 0.81}, 25.3)",
        # The extra metric that made the old regex's float() raise and kill `flwr run`.
        "INFO :      fit progress: (3, 0.617, {'accuracy': 0.81, 'f1': 0.79}, 25.3)",
        f"{GREEN}INFO {RESET}:      fit progress: (3, nan, {{}}, 25.3)",
    ],
)
def test_flowers_own_fit_progress_line_is_ignored(line):
    assert parse_progress_line(line) is None


def test_a_malformed_prefix_before_a_good_event_does_not_hide_it():
    line = f"gcfl-progress oops {progress_line(EVENT)}"
    assert parse_progress_line(line) == EVENT


def test_the_cli_prints_one_line_per_event_with_federated_accuracy_when_run(capsys):
    from gcfl.cli.common import line_printer as _line_printer

    printer = _line_printer(verbose=False, total_rounds=10)
    printer("INFO :      fit progress: (3, 0.3, {'accuracy': 0.9, 'f1': 0.8}, 1.0)")
    printer(f"INFO :      {progress_line(EVENT)}")
    printer(progress_line({**EVENT, "round": 4, "federated_accuracy": None, "loss": None}))
    assert capsys.readouterr().out.splitlines() == [
        "round   3/10  accuracy 0.9123  loss 0.3012  federated 0.9001",
        "round   4/10  accuracy 0.9123  loss -",
    ]


def test_the_inprocess_engine_reports_rounds_through_its_callback(monkeypatch, tmp_path):
    import gcfl.simulation.inprocess
    from gcfl.compare.runner import _inprocess_job
    from tests.test_compare import plan

    def fake_run_in_process(config, num_clients, run_id=1, on_round=None):
        for round_ in (1, 2):
            on_round(progress_event({"round": round_, "accuracy": 0.5}, 2))
        return {"rounds": []}

    monkeypatch.setattr(gcfl.simulation.inprocess, "run_in_process", fake_run_in_process)
    handlers = list(logging.getLogger("flwr").handlers)
    reported = []
    compare = plan(tmp_path, **{"num-server-rounds": 2})
    _inprocess_job(compare, "gcfl", 0, lambda *progress: reported.append(progress))
    assert reported == [("gcfl", 0, 1, 2), ("gcfl", 0, 2, 2)]
    assert logging.getLogger("flwr").handlers == handlers  # no handler left behind


def test_the_server_reports_each_round_after_writing_its_files(monkeypatch, tmp_path):
    from flwr.common import Context, RecordDict, parameters_to_ndarrays

    from gcfl.config import default_run_config
    from gcfl.server.server_app import server_fn
    from gcfl.strategy.record import RoundRecord

    config = {**default_run_config(), "num-server-rounds": 2, "out-dir": str(tmp_path)}
    seen = []

    def on_round(event):
        results = json.loads((tmp_path / "results.json").read_text())
        seen.append((event, [r["round"] for r in results["rounds"]]))

    class Lines(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    lines: list[str] = []
    handler = Lines()
    logging.getLogger("flwr").addHandler(handler)
    try:
        strategy = server_fn(Context(1, 0, {}, RecordDict(), config), on_round=on_round).strategy
        # The federation (and so the coordinator's state) is not needed to record a round.
        monkeypatch.setattr(strategy, "checkpoint_state", lambda: {"completed_rounds": 1})
        record = RoundRecord(round=1, accuracy=0.5, loss=0.7, accepted=3, federated_accuracy=0.4)
        strategy.on_round_end(record, parameters_to_ndarrays(strategy.initial_parameters))
    finally:
        logging.getLogger("flwr").removeHandler(handler)
    event = seen[0][0]
    assert seen == [(event, [1])]
    assert event["round"] == 1 and event["rounds"] == 2 and event["federated_accuracy"] == 0.4
    assert [parse_progress_line(line) for line in lines if PROGRESS_PREFIX in line] == [event]
