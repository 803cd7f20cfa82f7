"""A client that hangs for good (an hour in fit) under Flower's simulation.

It must cost its own fits, not the run: every other client's fits in later
rounds are ok, the hung client is recorded timed-out, and the run ends soon
after its last round, with the short round-timeout and with the default one
(the adaptive deadline, ``round-deadline-factor``).
"""

import time

import pytest

from gcfl.simulation.launcher import simulate
from gcfl.testing.hostile import CLIENT_APP, ENV_VAR

pytestmark = pytest.mark.integration

HUNG = 1


def _run(tmp_path, monkeypatch, nodes, rounds, **settings):
    monkeypatch.setenv(ENV_VAR, f"{HUNG}:hang")
    progress: list[float] = []

    def on_line(line: str) -> None:
        if "gcfl-progress" in line:
            progress.append(time.monotonic())

    config = {
        "num-server-rounds": rounds,
        # An lr range in which no honest update is refused: only the hang fails.
        "lr-max": 3e-3,
        "out-dir": str(tmp_path / "run"),
        **settings,
    }
    result = simulate(config, nodes, client_app=CLIENT_APP, on_line=on_line)
    ended = time.monotonic()
    assert len(progress) == rounds
    return result.results, ended - progress[-1]


def _check(results, rounds):
    assert [r["round"] for r in results["rounds"]] == list(range(1, rounds + 1))
    for record in results["rounds"]:
        hung = [c for c in record["clients"] if c["id"] == HUNG]
        assert [c["status"] for c in hung] == ["timed-out"], record
        others = [c for c in record["clients"] if c["id"] != HUNG]
        if record["round"] > 1:
            assert all(c["status"] == "ok" for c in others), record


def test_a_hung_client_with_a_short_round_timeout(tmp_path, monkeypatch, no_leftover_processes):
    timeout = 15.0
    results, after_last = _run(tmp_path, monkeypatch, 4, 3, **{"round-timeout": timeout})
    _check(results, 3)
    assert after_last < 3 * timeout


def test_a_hung_client_with_the_default_round_timeout(tmp_path, monkeypatch, no_leftover_processes):
    results, after_last = _run(tmp_path, monkeypatch, 4, 3)
    _check(results, 3)
    slowest_round = max(r["seconds"] for r in results["rounds"])
    # Not the 1800 s default: the adaptive deadline ended each round, and the run ended
    # within three such deadlines after its last round.
    assert slowest_round < 600 and after_last < 3 * slowest_round
