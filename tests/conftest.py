"""Shared fixtures."""

import time

import pytest

from tests.flower_processes import flower_processes


@pytest.fixture
def no_leftover_processes():
    """Fail the test if a Flower or Ray process it started is still running afterwards."""
    before = flower_processes()
    yield
    deadline = time.monotonic() + 15  # processes killed a moment ago may still be exiting
    while flower_processes() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    left = flower_processes() - before
    assert not left, f"processes left running: {left}"
