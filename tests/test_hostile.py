"""Hostile clients through the real Flower simulation: no one node can crash, stall or steer.

Each run is 9 digits clients for 8 rounds (default local epochs) in which up
to three nodes misbehave (gcfl.testing.hostile), each breaking one part of the
contract; cases that share a run cannot interfere, since each is refused on
its own ground. Every
run is compared with the same run of honest nodes. Both inits: ``random`` (the
server assigns every pair) and ``search`` (clients pick from the grid sent).
"""

import math

import pytest

from gcfl.simulation.launcher import simulate
from gcfl.testing.hostile import CLIENT_APP, ENV_VAR

pytestmark = pytest.mark.integration

NODES, ROUNDS = 9, 8
RUN_CONFIG = {
    "num-server-rounds": ROUNDS,
    "round-timeout": 20.0,
    "fraction-evaluate": 0.5,
}
# case -> (the node's status, a phrase of its recorded reason)
EXPECTED = {
    "raises": ("failed", "hostile client"),
    "stall": ("timed-out", "no reply within"),
    "missing-metrics": ("refused", "malformed fit metrics"),
    "garbage-metrics": ("refused", "malformed fit metrics"),
    "nan-metrics": ("refused", "not a finite number"),
    "out-of-space": ("refused", "reported"),
    "claims-lr": ("refused", "lr"),
    "claims-batch": ("refused", "batch-size"),
    "nan-weights": ("refused", "non-finite"),
    "inf-weights": ("refused", "non-finite"),
    "huge-weights": ("refused", "max-update-norm"),
    "wrong-shape-weights": ("refused", "shape"),
    "zero-examples": ("refused", "num_examples 0"),
    "negative-examples": ("refused", "num_examples -5"),
}
# Hostile nodes sit on partitions 0, 3 and 5. With seed 42 their own search
# picks (lr 1e-4) are shared by other nodes, so the honest run does not owe its
# accuracy to them; a node that alone found the run's good lr (partitions 1
# and 7 here, lr 1e-3 and 1e-2) takes that knowledge with it when it turns
# hostile, which no server can prevent: with nodes 1, 4 and 7 hostile a search
# run was still at 0.34 after 5 rounds, against 0.83 with all nodes honest.
RUNS = (
    {0: "raises", 3: "missing-metrics", 5: "nan-weights"},
    {0: "garbage-metrics", 3: "inf-weights", 5: "zero-examples"},
    {0: "nan-metrics", 3: "huge-weights", 5: "negative-examples"},
    {0: "out-of-space", 3: "claims-lr", 5: "wrong-shape-weights"},
    {0: "claims-batch", 3: "stall"},
)
assert sorted(c for run in RUNS for c in run.values()) == sorted(EXPECTED)

_honest: dict[str, dict] = {}


def _run(tmp_path, monkeypatch, init, hostile):
    monkeypatch.setenv(ENV_VAR, ",".join(f"{p}:{c}" for p, c in hostile.items()))
    out = tmp_path / f"{init}-{'-'.join(hostile.values()) or 'honest'}"
    config = {**RUN_CONFIG, "init": init, "out-dir": str(out)}
    return simulate(config, NODES, client_app=CLIENT_APP).results


def _honest_run(tmp_path_factory, monkeypatch, init):
    if init not in _honest:
        _honest[init] = _run(tmp_path_factory.mktemp("honest"), monkeypatch, init, {})
    return _honest[init]


@pytest.mark.parametrize("init", ["random", "search"])
@pytest.mark.parametrize("hostile", RUNS, ids=lambda run: "+".join(run.values()))
def test_hostile_nodes_are_refused_and_the_run_holds(
    tmp_path, tmp_path_factory, monkeypatch, init, hostile, no_leftover_processes
):
    honest = _honest_run(tmp_path_factory, monkeypatch, init)
    results = _run(tmp_path, monkeypatch, init, hostile)
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    assert all(r["loss"] is not None and math.isfinite(r["loss"]) for r in rounds)
    final, honest_final = rounds[-1]["accuracy"], honest["rounds"][-1]["accuracy"]
    print(f"{init} {'+'.join(hostile.values())}: final {final:.4f} vs honest {honest_final:.4f}")
    assert final >= honest_final - 0.15
    space = results["config"]
    for record in rounds:
        for client in record["clients"]:
            for lr in (client["assigned_lr"], client["lr"]):
                assert lr is None or space["lr-min"] <= lr <= space["lr-max"], client
            for batch in (client["assigned_batch_size"], client["batch_size"]):
                assert batch is None or space["batch-min"] <= batch <= space["batch-max"], client
        if record["federated_clients"]:
            assert math.isfinite(record["federated_loss"])
    for partition, case in hostile.items():
        status, phrase = EXPECTED[case]
        seen = [c for r in rounds for c in r["clients"] if c["id"] == partition]
        assert seen, f"node {partition} was never sampled"
        # A hostile node is never aggregated; an honest fit that diverged first
        # is recorded as such, and every other round carries the case's refusal.
        assert all(c["status"] in (status, "diverged") for c in seen), seen
        marked = [c for c in seen if c["status"] == status]
        assert marked and all(phrase in c["reason"] for c in marked), marked
        print(f"  node {partition} {case}: {status} x{len(marked)}: {marked[0]['reason']}")
