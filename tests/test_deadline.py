"""The ClientApp's own deadline: a call that never returns frees its process."""

import threading
from pathlib import Path

import pytest

from gcfl.client.deadline import CallAbandoned, CallTimes, call_with_deadline
from gcfl.run_end import end_mark, has_ended, mark_ended


def test_a_call_that_returns_in_time_gives_its_result_or_its_error():
    assert call_with_deadline(lambda: 42, 5.0, "fit") == 42
    with pytest.raises(ZeroDivisionError):
        call_with_deadline(lambda: 1 / 0, 5.0, "fit")


def test_a_call_past_its_deadline_is_abandoned_and_named():
    release = threading.Event()
    with pytest.raises(CallAbandoned, match=r"fit of client 3 did not return within 0\.2 s"):
        call_with_deadline(release.wait, 0.2, "fit of client 3")
    release.set()  # the abandoned thread ends; nothing waits for it


def test_a_call_still_running_when_the_run_ends_is_abandoned_at_once(tmp_path):
    # The ServerApp has finished: nobody waits for the reply, and the simulation
    # cannot end before this call returns. Its own deadline is an hour away.
    release, mark = threading.Event(), end_mark(str(tmp_path), 7)
    threading.Timer(0.3, lambda: mark_ended(str(tmp_path), 7)).start()
    with pytest.raises(CallAbandoned, match=r"fit of client 1 .* ServerApp has finished"):
        call_with_deadline(release.wait, 3600.0, "fit of client 1", mark.exists)
    release.set()
    # Another run's mark ends nothing.
    assert call_with_deadline(lambda: 5, 3600.0, "fit", end_mark(str(tmp_path), 8).exists) == 5


def test_no_home_folder_or_a_folder_it_may_not_read_is_not_an_ended_run(monkeypatch):
    # A deployed node: out-dir names the server's folder, or no home folder to default to.
    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    def denied(self) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert not has_ended("", 3)
    monkeypatch.setattr(Path, "exists", denied)
    assert not has_ended("/home/alice/results", 3)


def test_the_limit_adapts_to_what_the_process_knows_of_its_calls():
    times = CallTimes()
    assert times.limit(20.0, 3.0) == pytest.approx(21.0)  # the round's timeout, and a second
    assert times.limit(1800.0, 3.0) == pytest.approx(600.0)  # a first call: ten minutes
    times.record(2.0)
    # A minute at least; then twice the server's multiple of the median call.
    assert times.limit(1800.0, 3.0) == pytest.approx(60.0)
    times.record(45.0)  # the first call's tracing: an outlier, not the typical call
    times.record(3.0)
    assert times.limit(1800.0, 3.0) == pytest.approx(60.0)
    for _ in range(3):
        times.record(30.0)
    assert times.limit(1800.0, 3.0) == pytest.approx(180.0)
    assert times.limit(100.0, 3.0) == pytest.approx(101.0)  # never past the round's timeout
    assert times.limit(1800.0, 0.0) == pytest.approx(1801.0)  # factor 0: fixed deadline only
