"""The leftover-process check behind the ``no_leftover_processes`` fixture."""

import subprocess
import time

import psutil
import pytest

from tests.process_tracking import ProcessTracker


@pytest.fixture
def started():
    """Start ``sleep 60``s that this test stops again, whatever the check did to them."""
    processes = []

    def start(*command, **popen_args):
        process = subprocess.Popen(command or ("sleep", "60"), **popen_args)
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.kill()
        process.wait()


def detached_sleep() -> psutil.Process:
    """A ``sleep 60`` in a session of its own whose parent has exited, as daemons do."""
    shell = subprocess.run(
        ["setsid", "sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    return psutil.Process(int(shell.stdout))


def test_a_child_left_running_is_caught_and_stopped(started):
    with ProcessTracker() as tracker:
        leaked = started()
    left = tracker.leftovers(grace_s=0.5)
    assert len(left) == 1 and left[0].startswith(f"{leaked.pid} sleep 60")
    leaked.wait(timeout=10)  # the check stopped it
    assert tracker.leftovers(grace_s=0) == []


def test_a_detached_process_is_caught_though_no_longer_a_descendant():
    # Like the SuperLink (its own session) or a Ray daemon whose parent died.
    with ProcessTracker() as tracker:
        daemon = detached_sleep()
    try:
        assert daemon not in psutil.Process().children(recursive=True)
        left = tracker.leftovers(grace_s=0.5)
        assert [entry.split()[0] for entry in left] == [str(daemon.pid)]
        daemon.wait(timeout=10)
    finally:
        if daemon.is_running():
            daemon.kill()


def test_a_child_with_an_environment_of_its_own_is_caught(started):
    with ProcessTracker() as tracker:
        leaked = started("sleep", "60", env={"PATH": "/usr/bin:/bin"})
    assert [entry.split()[0] for entry in tracker.leftovers(grace_s=0.5)] == [str(leaked.pid)]


def test_processes_the_test_did_not_start_are_not_flagged(started, tmp_path):
    earlier = started()  # e.g. what an earlier test left: not this test's leak
    # Someone else's launcher, outside this test's process tree: it starts a
    # process of its own while the test runs, as another developer's run or CI would.
    go, pid_file = tmp_path / "go", tmp_path / "pid"
    script = f"while [ ! -e {go} ]; do sleep 0.05; done; sleep 60 & echo $! > {pid_file}"
    subprocess.run(["setsid", "sh", "-c", f"({script}) >/dev/null 2>&1 &"], check=True)
    with ProcessTracker() as tracker:
        go.touch()
        deadline = time.monotonic() + 10
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline, "the other launcher did not start its process"
            time.sleep(0.05)
        elsewhere = psutil.Process(int(pid_file.read_text()))
        stopped = started()  # this test's own, stopped in time
        stopped.terminate()
        stopped.wait()
    try:
        assert tracker.leftovers(grace_s=0) == []
        assert earlier.poll() is None and elsewhere.is_running()
    finally:
        elsewhere.kill()


def test_a_process_still_exiting_gets_the_grace_period(started):
    with ProcessTracker() as tracker:
        started("sh", "-c", "sleep 0.5")
    begun = time.monotonic()
    assert tracker.leftovers(grace_s=10) == []
    assert time.monotonic() - begun < 5


def test_a_superlink_left_running_is_caught(tmp_path):
    # The real thing: a SuperLink in a session of its own, as gcfl starts it.
    from gcfl.simulation.superlink import LocalSuperLink

    link = LocalSuperLink(tmp_path / "flwr-home", tmp_path / "ray", tmp_path / "superlink.log")
    with ProcessTracker() as tracker:
        link.start()
    try:
        assert link.process is not None
        left = tracker.leftovers(grace_s=0.5)
        assert any(entry.startswith(f"{link.process.pid} ") for entry in left), left
        assert any("flower-superlink" in entry for entry in left), left
    finally:
        link.stop()
