"""Which processes a test started, and whether any of them still run after it.

Two ways, because neither alone sees everything a test starts:

- an environment variable with a value unique to the test: every process the
  test starts inherits it, also the ones that leave the test's process tree
  (the SuperLink runs in a session of its own, Ray daemons outlive a killed
  parent and are re-parented to init), and nothing started elsewhere on the
  machine (another developer's run, CI) carries it;
- the test process's descendants, sampled while the test runs: they catch a
  process started with an environment of its own (``env={...}``).

A process that ran before the test is neither marked nor recorded, so a test
is never blamed for what an earlier one left behind.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid

import psutil

MARK_VARIABLE = "GCFL_TEST_PROCESS_MARK"
# A sample reads every process's /proc entry (about 4 ms for 100 processes): rarely enough
# to cost the shared machine little, often enough for what leaks, which lives on.
SAMPLE_INTERVAL_S = 0.5

# A process is identified by its PID and start time: PIDs are reused.
ProcessKey = tuple[int, float]


def _key(process: psutil.Process) -> ProcessKey | None:
    try:
        return process.pid, process.create_time()
    except psutil.Error:
        return None


def _running(process: psutil.Process) -> bool:
    # is_running compares the start time too: a PID reused by another process is not ours.
    # A zombie has exited; only its parent's wait is missing.
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid} {' '.join(process.cmdline())[:200]}"
    except psutil.Error:
        return str(process.pid)


class ProcessTracker:
    """Marks and records the processes started between ``start`` and ``stop``."""

    def __init__(self) -> None:
        self.mark = uuid.uuid4().hex
        self._me = psutil.Process()
        self._before: set[ProcessKey] = set()
        self._descendants: dict[ProcessKey, psutil.Process] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._sampler: threading.Thread | None = None
        self._previous_mark: str | None = None

    def start(self) -> ProcessTracker:
        self._before = {key for p in self._me.children(recursive=True) if (key := _key(p))}
        self._previous_mark = os.environ.get(MARK_VARIABLE)
        os.environ[MARK_VARIABLE] = self.mark
        self._sampler = threading.Thread(target=self._sample_until_stopped, daemon=True)
        self._sampler.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._sampler is not None:
            self._sampler.join()
        # The last sample after the test's end: a child started just before it is not missed.
        self._sample()
        if self._previous_mark is None:
            os.environ.pop(MARK_VARIABLE, None)
        else:
            os.environ[MARK_VARIABLE] = self._previous_mark

    def __enter__(self) -> ProcessTracker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _sample(self) -> None:
        try:
            children = self._me.children(recursive=True)
        except psutil.Error:
            return
        with self._lock:
            for child in children:
                key = _key(child)
                if key is not None and key not in self._before:
                    self._descendants.setdefault(key, child)

    def _sample_until_stopped(self) -> None:
        while not self._stopping.wait(SAMPLE_INTERVAL_S):
            self._sample()

    def _marked(self) -> list[psutil.Process]:
        marked = []
        for process in psutil.process_iter():
            if process.pid == self._me.pid:
                continue
            # Other users' processes (AccessDenied) cannot carry a mark this test set.
            with contextlib.suppress(psutil.Error):
                if process.environ().get(MARK_VARIABLE) == self.mark:
                    marked.append(process)
        return marked

    def running(self) -> list[psutil.Process]:
        """The processes this test started that still run, marked or recorded."""
        with self._lock:
            recorded = list(self._descendants.items())
        found = {key: p for p in self._marked() if (key := _key(p))}
        for key, process in recorded:
            found.setdefault(key, process)
        return [p for p in found.values() if _running(p)]

    def leftovers(self, grace_s: float = 15.0) -> list[str]:
        """Describe, then stop, what still runs after ``grace_s``.

        The grace is for processes killed a moment ago that are still exiting;
        stopping the rest keeps one test's leak from failing the tests after it.
        """
        deadline = time.monotonic() + grace_s
        running = self.running()
        while running and time.monotonic() < deadline:
            time.sleep(0.2)
            running = self.running()
        described = [_describe(p) for p in running]
        # psutil's signals check the start time, so a reused PID is never hit.
        for process in running:
            with contextlib.suppress(psutil.Error):
                process.terminate()
        _, alive = psutil.wait_procs(running, timeout=5)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(alive, timeout=5)
        return described
