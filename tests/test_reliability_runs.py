"""Reliability on real simulations: divergence, failing clients, SIGKILL and resume.

Each test starts real Flower processes (tens of seconds) and checks that none
are left behind.
"""

import contextlib
import json
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from gcfl.client.client import FAULT_STREAM
from gcfl.data import load_digits_dataset, partition_indices
from gcfl.server.results import read_results
from tests.flower_processes import gcfl_cli

pytestmark = pytest.mark.integration


def gcfl_run(*args):
    return gcfl_cli("run", *args)


def final_accuracy(out_dir):
    return read_results(out_dir)["rounds"][-1]["accuracy"]


def test_diverging_clients_are_contained(tmp_path, no_leftover_processes):
    """lr drawn from [1e-3, 10]: clients blow up, the global model still learns.

    Seed 10 draws three of the ten initial lrs below 3e-3 and two above 1. The
    setup (iid, 10 local epochs) learns digits in 3 rounds at a sane lr; the
    guard is set to 0.5 from a healthy run's update ratios (0.1-0.4). The
    baseline is a run with only the clients that did not diverge: their data,
    three clients, their lr range.
    """
    common = [
        "--rounds",
        "3",
        "--seed",
        "10",
        "--partition",
        "iid",
        "--local-epochs",
        "10",
        "--set",
        "max-update-norm=0.5",
        "--set",
        "lr-min=1e-3",
    ]
    wild = gcfl_run(
        *common, "--clients", "10", "--out", str(tmp_path / "wild"), "--set", "lr-max=10"
    )
    assert wild.returncode == 0, wild.stderr

    rounds = read_results(tmp_path / "wild")["rounds"]
    first = rounds[0]["clients"]
    blown = [c for c in first if c["status"] in ("diverged", "refused")]
    healthy = [c for c in first if c["status"] == "ok"]
    assert len(blown) >= 5 and any(c["status"] == "diverged" for c in blown)
    assert all(c["lr"] > 3e-3 for c in blown) and all(c["lr"] <= 3e-3 for c in healthy)
    for record in rounds:
        ok = [c for c in record["clients"] if c["status"] == "ok"]
        assert record["accepted"] == len(ok)  # no refused update was averaged
        assert all(c["status"] in ("ok", "diverged", "refused") for c in record["clients"])
    for client in rounds[1]["clients"]:
        if client["id"] in {c["id"] for c in blown}:  # bred from healthy clients only
            assert client["lr"] <= max(c["lr"] for c in healthy) * 1.1 * (1 + 1e-6)

    digits = load_digits_dataset(seed=10)
    parts = partition_indices("iid", digits.y_train, 10, seed=10)
    kept = np.concatenate([parts[c["id"]] for c in healthy])
    npz = tmp_path / "non-diverging.npz"
    np.savez(
        npz,
        x_train=digits.x_train[kept],
        y_train=digits.y_train[kept],
        x_test=digits.x_test,
        y_test=digits.y_test,
    )
    alone = gcfl_run(
        *common,
        "--clients",
        str(len(healthy)),
        "--dataset",
        str(npz),
        "--set",
        "lr-max=3e-3",
        "--out",
        str(tmp_path / "alone"),
    )
    assert alone.returncode == 0, alone.stderr

    accuracy, baseline = final_accuracy(tmp_path / "wild"), final_accuracy(tmp_path / "alone")
    assert accuracy > 0.5  # chance is 0.1
    # Measured 0.775 against 0.892 (round 2: 0.828 against 0.847). The round-3
    # gap is FedAvg drift once the seven healed clients rejoin (ten averaged
    # models instead of three), not refused updates leaking in (checked above).
    assert accuracy >= baseline - 0.15, (accuracy, baseline)


def predicted_faults(seed, rounds, clients, rate):
    return {
        (r, c)
        for r in range(1, rounds + 1)
        for c in range(clients)
        if np.random.default_rng([seed, FAULT_STREAM, r, c]).random() < rate
    }


def test_failing_clients_do_not_stop_the_run(tmp_path, no_leftover_processes):
    seed, rounds, clients = 6, 4, 4
    faults = predicted_faults(seed, rounds, clients, 0.3)
    failed_rounds = {
        r for r in range(1, rounds + 1) if clients - sum(1 for f in faults if f[0] == r) < 3
    }
    assert faults and failed_rounds, "choose a seed that exercises both cases"
    run = gcfl_run(
        "--rounds",
        str(rounds),
        "--clients",
        str(clients),
        "--seed",
        str(seed),
        "--set",
        "fault-rate=0.3",
        "--set",
        "min-fit-clients=3",
        "--out",
        str(tmp_path / "faulty"),
    )
    assert run.returncode == 0, run.stderr
    results = read_results(tmp_path / "faulty")
    assert [r["round"] for r in results["rounds"]] == list(range(1, rounds + 1))
    observed = {
        (r["round"], c["id"])
        for r in results["rounds"]
        for c in r["clients"]
        if c["status"] == "failed"
    }
    assert observed == faults
    assert {r["round"] for r in results["rounds"] if r["status"] == "failed"} == failed_rounds
    for record in results["rounds"]:
        if record["status"] == "failed":
            previous = [r for r in results["rounds"] if r["round"] == record["round"] - 1]
            if previous:  # the global model stayed as it was
                assert record["accuracy"] == pytest.approx(previous[0]["accuracy"])


def kill_tree(pid):
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)


def rounds_in(path):
    try:
        return len(json.loads((path / "results.json").read_text())["rounds"])
    except (FileNotFoundError, ValueError):
        return 0


def test_sigkilled_run_resumes_exactly(tmp_path, no_leftover_processes):
    args = ["--rounds", "4", "--clients", "6", "--fraction-fit", "0.5", "--seed", "5"]
    reference = gcfl_run(*args, "--out", str(tmp_path / "whole"))
    assert reference.returncode == 0, reference.stderr

    victim_dir = tmp_path / "killed"
    victim = subprocess.Popen(
        [sys.executable, "-m", "gcfl.cli", "run", *args, "--out", str(victim_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while rounds_in(victim_dir) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # into round 3
    kill_tree(victim.pid)
    victim.wait(timeout=30)
    done = rounds_in(victim_dir)
    assert 2 <= done < 4

    resumed = gcfl_run(*args, "--set", "resume=true", "--out", str(victim_dir))
    assert resumed.returncode == 0, resumed.stderr
    whole, pieced = read_results(tmp_path / "whole"), read_results(victim_dir)
    assert [r["round"] for r in pieced["rounds"]] == [1, 2, 3, 4]  # none twice, none lost

    def schedule(results):
        return [
            [(c["id"], c["lr"], c["batch_size"]) for c in r["clients"]] for r in results["rounds"]
        ]

    assert schedule(pieced) == schedule(whole)
    assert [r["accuracy"] for r in pieced["rounds"]] == pytest.approx(
        [r["accuracy"] for r in whole["rounds"]]
    )
