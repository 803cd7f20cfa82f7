"""Shared fixtures."""

import pytest

from tests.process_tracking import ProcessTracker


@pytest.fixture
def no_leftover_processes():
    """Fail the test if a process it started (a SuperLink, Ray...) is still running afterwards.

    Only the test's own processes count (see tests/process_tracking.py):
    Flower or Ray processes that anyone else runs on the machine neither fail
    the test nor hide its leaks.
    """
    with ProcessTracker() as tracker:
        yield tracker
    left = tracker.leftovers()
    assert not left, "processes the test started were left running:\n" + "\n".join(left)
