"""docker-compose.yml brought up for real, as the README's Deployment section runs it.

Builds the image (from a Debian base made with debootstrap when no registry
answers), starts the committed compose file (TLS, SuperNode authentication,
3 SuperNodes with their warm training workers), submits runs from the host
with ``flwr run``, stops one SuperNode in the middle of a run, and checks that
``down -v`` leaves nothing behind.

Skipped, with the reason, where containers cannot run; ``GCFL_REQUIRE_CONTAINERS=1``
(set by ``.ci/run``) turns that skip into a failure.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import psutil
import pytest

from gcfl.deploy.containers import (
    ComposeStack,
    ContainersUnavailable,
    Engine,
    base_image,
    build_image,
    check_engine_runs,
    open_engine,
)
from gcfl.server.results import read_results

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = os.environ.get("GCFL_REQUIRE_CONTAINERS") == "1"

pytestmark = pytest.mark.integration


def _unavailable(reason: str) -> None:
    message = f"containers cannot run here: {reason}"
    if REQUIRED:
        pytest.fail(message + " (GCFL_REQUIRE_CONTAINERS=1)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def engine():
    try:
        opened = open_engine()
    except ContainersUnavailable as reason:
        _unavailable(str(reason))
    try:
        try:
            base = base_image(opened)
            check_engine_runs(opened, base)
        except ContainersUnavailable as reason:
            _unavailable(str(reason))
        build_image(opened, ROOT, base)
        yield opened
    finally:
        service = opened.service
        opened.close()
        if service is not None:  # the podman API service we started is gone
            assert not psutil.pid_exists(service.pid) or (
                psutil.Process(service.pid).status() == psutil.STATUS_ZOMBIE
            )


def _check_clients(results: dict, rounds: int) -> None:
    assert [record["round"] for record in results["rounds"]] == list(range(1, rounds + 1))
    for record in results["rounds"]:
        for client in record["clients"]:
            if client["status"] == "failed":
                continue
            # What the client trained with is what the strategy sent it.
            assert math.isclose(client["lr"], client["assigned_lr"], rel_tol=1e-5)
            assert client["batch_size"] == client["assigned_batch_size"]


def test_compose_deployment_end_to_end(engine: Engine, tmp_path):
    stack = ComposeStack(engine, tmp_path / "site", project=f"gcfltest{os.getpid()}")
    stack.prepare(ROOT)
    try:
        stack.up()

        # A 2-round run from the host, as the README submits it.
        first = stack.submit(ROOT, "num-server-rounds=2 out-dir='/results/run-1'")
        assert first.status == "finished:completed", first.log.read_text()[-3000:]
        results = read_results(stack.directory / "results" / "run-1")
        _check_clients(results, rounds=2)
        first_round = results["rounds"][0]["clients"]
        assert [c["id"] for c in first_round] == [0, 1, 2]
        assert len({(c["assigned_lr"], c["assigned_batch_size"]) for c in first_round}) == 3
        for name in ("checkpoint.npz", "model.keras"):
            assert (stack.directory / "results" / "run-1" / name).is_file()

        # A 3-round run that loses SuperNode 1 when round 2 starts.
        stopper: list[threading.Thread] = []

        def stop_node_at_round_2(line: str) -> None:
            if "[ROUND 2]" in line and not stopper:
                stopper.append(threading.Thread(target=stack.stop, args=("supernode-1",)))
                stopper[0].start()

        second = stack.submit(
            ROOT, "num-server-rounds=3 out-dir='/results/run-2'", on_line=stop_node_at_round_2
        )
        assert stopper, "the run never reached round 2"
        stopper[0].join(timeout=120)
        assert second.status == "finished:completed", second.log.read_text()[-3000:]
        results = read_results(stack.directory / "results" / "run-2")
        _check_clients(results, rounds=3)
        last = {c["id"]: c["status"] for c in results["rounds"][-1]["clients"]}
        assert last[1] == "failed"  # the stopped node
        assert last[0] != "failed" and last[2] != "failed"  # the others carried on

        # Every node trained on its warm worker, never in a ClientApp process.
        for index in range(3):
            node_log = stack.logs(f"supernode-{index}")
            assert f"trained partition {index}, round 1," in node_log
            assert "training in the ClientApp process instead" not in node_log
    finally:
        stack.down()
    assert stack.leftovers() == []
