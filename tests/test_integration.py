"""Real Flower simulations: ``flwr run .`` as the issue states it, and ``gcfl run``.

Each test starts a SuperLink, the simulation engine and Ray actors, so these
take tens of seconds each; every process they start is stopped by PID.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gcfl.server.results import read_results
from tests.flower_processes import (
    flwr_executable,
    gcfl_cli,
    genetic_rule_violations,
    managed_superlink_env,
    stop_managed_superlink,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def test_flwr_run_three_rounds_follow_the_genetic_rules(tmp_path, no_leftover_processes):
    out_dir = tmp_path / "out"
    env = managed_superlink_env(tmp_path)
    command = [
        flwr_executable(),
        "run",
        ".",
        "--stream",
        "--run-config",
        f"strategy='gcfl' num-server-rounds=3 out-dir='{out_dir}'",
        "--federation-config",
        "num-supernodes=10",
    ]
    try:
        run = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
        )
        listing = subprocess.run(
            [flwr_executable(), "ls", "--format=json"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        stop_managed_superlink(tmp_path / "flwr-home")
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    # flwr run exits 0 even when the run fails: the run's status must say completed.
    (status,) = [r["status"] for r in json.loads(listing.stdout)["runs"]]
    assert status == "finished:completed", output
    assert "DEPRECATED" not in output

    results = read_results(out_dir)
    assert results["strategy"] == "gcfl"
    assert results["config"]["num-server-rounds"] == 3
    assert set(results["versions"]) >= {"gcfl", "flwr", "tensorflow", "scikit-learn"}
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3]
    for record in results["rounds"]:
        assert sorted(c["id"] for c in record["clients"]) == list(range(10))
        assert 0.0 <= record["accuracy"] <= 1.0 and record["seconds"] > 0
        assert all(isinstance(c["cluster"], int) for c in record["clients"])
    assert genetic_rule_violations(results, elite=2) == []
    # Hyperparameters do differ between clients: this is not FedAvg in disguise.
    assert len({c["lr"] for c in results["rounds"][0]["clients"]}) > 5
    assert (out_dir / "model.keras").is_file()

    # The quality benchmark's in-process runs are the same runs, without Ray (in a
    # process of their own: this one may have run TensorFlow with other thread pools).
    replay_dir = tmp_path / "replay"
    code = (
        "from gcfl.simulation.inprocess import run_in_process; "
        f"run_in_process({{'num-server-rounds': 3, 'out-dir': {str(replay_dir)!r}}}, 10)"
    )
    replayed_run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600
    )
    assert replayed_run.returncode == 0, replayed_run.stderr
    replay = read_results(replay_dir)
    for simulated, replayed in zip(results["rounds"], replay["rounds"], strict=True):
        assert replayed["accuracy"] == pytest.approx(simulated["accuracy"], abs=1e-6)
        pairs = [(c["id"], c["lr"], c["batch_size"], c["status"]) for c in replayed["clients"]]
        assert pairs == [
            (c["id"], c["lr"], c["batch_size"], c["status"]) for c in simulated["clients"]
        ]


def test_gcfl_run_fedavg_two_rounds(tmp_path, no_leftover_processes):
    out_dir = tmp_path / "fedavg"
    run = gcfl_cli(
        "run", "--strategy", "fedavg", "--rounds", "2", "--clients", "3", "--out", str(out_dir)
    )
    assert run.returncode == 0, run.stdout + run.stderr
    results = read_results(out_dir)
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    for record in results["rounds"]:
        assert {(c["batch_size"], round(c["lr"], 10)) for c in record["clients"]} == {(32, 1e-4)}
        assert all(c["status"] == "ok" for c in record["clients"])
    assert "round   2/2" in run.stdout and str(out_dir / "results.json") in run.stdout


def test_too_few_supernodes_fail_the_run_with_the_reason(
    tmp_path, monkeypatch, no_leftover_processes
):
    """A run submitted with too few SuperNodes for the elite fails at start, saying why."""
    from gcfl.processes import SimulationError
    from gcfl.simulation.launcher import simulate

    out_dir = tmp_path / "small"
    # Bypass the launcher's own up-front check to exercise the ServerApp's.
    monkeypatch.setattr("gcfl.server.results.check_federation_size", lambda *a: None)
    with pytest.raises(SimulationError, match="elite=2 keeps them all"):
        simulate({"num-server-rounds": 1, "out-dir": str(out_dir)}, num_supernodes=2)
    assert not (out_dir / "results.json").exists()


def test_cli_refuses_too_few_clients_before_starting_anything(tmp_path):
    run = gcfl_cli("run", "--rounds", "1", "--clients", "2", "--out", str(tmp_path / "small"))
    assert run.returncode == 2
    assert "elite" in run.stderr and "num-supernodes" in run.stderr


def small_digits_npz(folder: Path) -> Path:
    import numpy as np

    from gcfl.data import load_digits_dataset

    digits = load_digits_dataset(seed=0)
    npz = folder / "small digits.npz"
    np.savez(
        npz,
        x_train=digits.x_train[:500, :, :, 0],
        y_train=digits.y_train[:500],
        x_test=digits.x_test[:120],
        y_test=digits.y_test[:120],
    )
    return npz


def test_compare_tiny_run_on_any_npz(tmp_path, no_leftover_processes):
    npz = small_digits_npz(tmp_path)
    out_dir = tmp_path / "cmp"
    run = gcfl_cli(
        "compare",
        "--dataset",
        str(npz),
        "--rounds",
        "2",
        "--clients",
        "3",
        "--fedavg-lr-grid",
        "0.01,0.001",
        "--out",
        str(out_dir),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    terminal = run.stdout + run.stderr
    assert "oneDNN" not in terminal and "INFO" not in terminal  # TF and Flower noise in logs
    assert "Test accuracy per round" in run.stdout and str(out_dir / "summary.md") in run.stdout
    assert "client fits" in run.stdout and "oracle" in run.stdout
    assert "…" not in run.stdout  # piped (80 columns), names fold instead of being cut

    report = json.loads((out_dir / "results.json").read_text())
    names = ["gcfl", "fedavg", "fedavg@0.001", "fedavg@0.01", "centralized"]
    assert [r["strategy"] for r in report["runs"]] == names
    for entry in report["runs"]:
        assert [r["round"] for r in entry["rounds"]] == [1, 2]
        assert entry["config"]["dataset"] == str(npz)
    assert [r["config"]["fedavg-lr"] for r in report["runs"][2:4]] == [0.001, 0.01]
    assert [len(r["clients"]) for r in report["runs"][2]["rounds"]] == [3, 3]
    assert report["fedavg_tuned"]["choice"] in ("fedavg@0.001", "fedavg@0.01")
    assert report["runs"][4]["config"]["training-samples"] == 500
    rows = (out_dir / "rounds.csv").read_text().splitlines()
    # five runs and fedavg-tuned (the oracle's pick of the two grid runs), two rounds each
    header = "round,strategy,repeat,accuracy,loss,federated_accuracy,federated_loss,seconds"
    assert rows[0] == header and len(rows) == 13
    summary = (out_dir / "summary.md").read_text()
    assert (
        "| round | gcfl | fedavg | fedavg@0.001 | fedavg@0.01 | fedavg-tuned (oracle: " in summary
    )
    assert "| client fits | 6 | 6 | 6 | 6 | 12 (2 runs) | - (2 epochs) |" in summary
    assert "--rounds 2" in summary
    for name in ("accuracy", "loss", "clusters", "cluster_sizes", "lr_trajectories"):
        assert (out_dir / f"{name}.png").stat().st_size > 5000
    assert (out_dir / "compare.log").exists()


def test_compare_engines_give_the_same_results(tmp_path, no_leftover_processes):
    # In-process workers (the default) against `flwr run` under Ray: the same numbers.
    npz = small_digits_npz(tmp_path)
    finals = {}
    for engine in ("simulation", "inprocess"):
        out_dir = tmp_path / engine
        run = gcfl_cli(
            "compare",
            *("--dataset", str(npz), "--rounds", "2", "--clients", "3"),
            *("--strategies", "gcfl,fedavg", "--engine", engine, "--out", str(out_dir)),
        )
        assert run.returncode == 0, run.stdout + run.stderr
        report = json.loads((out_dir / "results.json").read_text())
        finals[engine] = [
            [(r["accuracy"], r["loss"], [c["lr"] for c in r["clients"]]) for r in run["rounds"]]
            for run in report["runs"]
        ]
    assert finals["simulation"] == finals["inprocess"]


def test_interrupted_run_stops_every_process(tmp_path, no_leftover_processes):
    import signal
    import time

    # Files, not pipes: a pipe nobody reads can fill and stall the run.
    stdout_file, stderr_file = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(stdout_file, "w") as stdout, open(stderr_file, "w") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gcfl.cli",
                "run",
                "--rounds",
                "20",
                "--clients",
                "3",
                "--out",
                str(tmp_path / "out"),
            ],
            stdout=stdout,
            stderr=stderr,
            text=True,
        )
    deadline = time.monotonic() + 300
    while "round   1/20" not in stdout_file.read_text() and time.monotonic() < deadline:
        assert process.poll() is None, stderr_file.read_text()[-3000:]
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=180)
    output = stdout_file.read_text()[-2000:] + stderr_file.read_text()[-3000:]
    assert process.returncode == 130, output
    assert "interrupted" in stderr_file.read_text(), output
