"""Reliability rules without real processes: checkpoints, exact resume, refusals, bad input."""

import json

import numpy as np
import pytest
from flwr.common import ndarrays_to_parameters

from gcfl.config import parse_run_config
from gcfl.protocol import fit_instruction_from_config
from gcfl.server.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_previous_weights,
    save_checkpoint,
)
from gcfl.server.results import OutputDirError, resolve_out_dir
from gcfl.server.server_app import check_resumable
from gcfl.strategy.flower_strategy import GeneticClusteredFedAvg, StrategySetupError
from tests.test_flower_strategy import GLOBAL, ONES, federation, fit_res, fit_round, started_on


def test_checkpoint_round_trip(tmp_path):
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, np.float64)]
    state = {"rounds": [{"round": 1, "loss": float("nan")}], "rng": {"state": 2**100}}
    save_checkpoint(tmp_path / "checkpoint.npz", weights, state)
    loaded_weights, loaded_state = load_checkpoint(tmp_path / "checkpoint.npz")
    assert all(
        np.array_equal(a, b) and a.dtype == b.dtype
        for a, b in zip(weights, loaded_weights, strict=True)
    )
    assert loaded_state["rng"] == state["rng"] and np.isnan(loaded_state["rounds"][0]["loss"])
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]  # no temporary left


def test_the_rollback_target_survives_a_checkpoint_and_a_resume(tmp_path):
    adapter, manager = started_on(ONES)
    first, _ = fit_round(adapter, manager, 1, ONES, value=1.1, loss_before=2.0)
    second, _ = fit_round(adapter, manager, 2, first, value=1.2, loss_before=1.5)
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, second, adapter.checkpoint_state(), adapter.previous_weights)
    assert load_previous_weights(path)[0].tolist() == first[0].tolist()
    state = json.loads(json.dumps(load_checkpoint(path)[1]))

    records = []
    resumed, manager = started_on(ONES, records=records)
    resumed.restore(state, load_previous_weights(path))
    # started_on discovered the federation before restore: apply it as a restart would.
    resumed.initialize_parameters(manager)
    # Round 3 finds the model of round 2 worse (2.3 > 1.5 * 1.1): back to round 1's model.
    third, _ = fit_round(resumed, manager, 1, second, value=9.0, loss_before=2.3)
    np.testing.assert_allclose(third[0], first[0])
    assert records[0].round == 3 and records[0].status == "rolled-back"
    save_checkpoint(tmp_path / "plain.npz", second, {})
    assert load_previous_weights(tmp_path / "plain.npz") is None


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, [np.zeros(2)], {"round": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, [np.ones(2)], {"round": 2})
    assert load_checkpoint(path)[1] == {"round": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]


def test_corrupt_checkpoint_is_named(tmp_path):
    (tmp_path / "checkpoint.npz").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"checkpoint\.npz"):
        load_checkpoint(tmp_path / "checkpoint.npz")


def run_rounds(adapter, manager, rounds, start=1):
    """Play rounds with deterministic fake losses; return what each round sent to whom."""
    sent = []
    for server_round in range(start, start + rounds):
        instructions = adapter.configure_fit(server_round, ndarrays_to_parameters(GLOBAL), manager)
        sent.append(
            sorted(
                (
                    p.partition_id,
                    fit_instruction_from_config(ins.config).server_round,
                    fit_instruction_from_config(ins.config).lr,
                    fit_instruction_from_config(ins.config).batch_size,
                )
                for p, ins in instructions
            )
        )
        results = [fit_res(p, p.partition_id, ins) for p, ins in instructions]
        parameters, _ = adapter.aggregate_fit(server_round, results, [])
        adapter.evaluate(server_round, parameters)
    return sent


def make(overrides=None, records=None):
    config = parse_run_config({"probe-timeout": 5.0, "fraction-fit": 0.5, **(overrides or {})})
    return GeneticClusteredFedAvg(
        config=config,
        initial_parameters=ndarrays_to_parameters(GLOBAL),
        on_round_end=None if records is None else lambda record, _: records.append(record),
    )


def test_resume_repeats_sampling_and_assignments_exactly():
    uninterrupted, manager = make(), federation(10, seed=1)
    uninterrupted.initialize_parameters(manager)
    expected = run_rounds(uninterrupted, manager, 4)

    first, manager = make(), federation(10, seed=2)
    first.initialize_parameters(manager)
    before = run_rounds(first, manager, 2)
    state = json.loads(json.dumps(first.checkpoint_state()))  # as stored on disk

    resumed, manager = make(), federation(10, seed=3)  # new node ids, as after a restart
    resumed.restore(state)
    resumed.initialize_parameters(manager)
    after = run_rounds(resumed, manager, 2)  # Flower counts this run's rounds from 1
    assert before + after == expected
    assert [r[0][1] for r in after] == [3, 4]


def test_resume_with_a_different_federation_is_refused():
    first, manager = make(), federation(10)
    first.initialize_parameters(manager)
    run_rounds(first, manager, 1)
    resumed = make()
    resumed.restore(first.checkpoint_state())
    with pytest.raises(StrategySetupError, match="same number of SuperNodes"):
        resumed.initialize_parameters(federation(6))


def test_update_far_larger_than_the_global_model_is_refused():
    records = []
    adapter = make({"fraction-fit": 1.0, "max-update-norm": 2.0}, records)
    manager = federation(3)
    adapter.initialize_parameters(manager)
    global_weights = [np.ones_like(a) for a in GLOBAL]
    instructions = adapter.configure_fit(1, ndarrays_to_parameters(global_weights), manager)
    results = [fit_res(p, p.partition_id, ins, value=1.5) for p, ins in instructions]
    first_proxy, first_ins = instructions[0]
    results[0] = fit_res(first_proxy, first_proxy.partition_id, first_ins, value=1e6)
    parameters, metrics = adapter.aggregate_fit(1, results, [])
    adapter.evaluate(1, parameters)
    assert metrics["accepted"] == 2
    (refused,) = [c for c in records[0].clients if c.status == "refused"]
    assert "norm" in refused.reason


def test_every_update_refused_leaves_the_global_model_unchanged():
    records = []
    adapter, manager = make({"fraction-fit": 1.0}, records), federation(3)
    adapter.initialize_parameters(manager)
    instructions = adapter.configure_fit(1, ndarrays_to_parameters(GLOBAL), manager)
    results = [fit_res(p, p.partition_id, ins, status="diverged") for p, ins in instructions]
    parameters, metrics = adapter.aggregate_fit(1, results, [])
    adapter.evaluate(1, ndarrays_to_parameters(GLOBAL))
    assert parameters is None and metrics["accepted"] == 0
    assert records[0].status == "failed"


def test_new_run_never_reuses_an_out_dir_with_results(tmp_path):
    (tmp_path / "results.json").write_text('{"keep": true}')
    config = parse_run_config({"out-dir": str(tmp_path)})
    with pytest.raises(OutputDirError, match="resume=true"):
        resolve_out_dir(config, run_id=1)
    assert (tmp_path / "results.json").read_text() == '{"keep": true}'


def test_resume_needs_a_checkpoint(tmp_path):
    config = parse_run_config({"out-dir": str(tmp_path), "resume": True})
    with pytest.raises(OutputDirError, match=r"no checkpoint\.npz"):
        resolve_out_dir(config, run_id=1)


def test_resume_of_a_different_experiment_names_the_keys():
    saved = parse_run_config({"seed": 1, "num-server-rounds": 3}).to_run_config()
    check_resumable(parse_run_config({"seed": 1, "num-server-rounds": 8, "resume": True}), saved)
    with pytest.raises(CheckpointError, match=r"seed \(1 -> 2\)"):
        check_resumable(parse_run_config({"seed": 2, "resume": True}), saved)
