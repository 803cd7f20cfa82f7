"""Reliability on real simulations: divergence, failing clients, SIGKILL and resume.

Each test starts real Flower processes (tens of seconds) and checks that none
are left behind.
"""

import contextlib
import json
import os
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
from tests.flower_processes import gcfl_cli, genetic_rule_violations

pytestmark = pytest.mark.integration


def gcfl_run(*args):
    return gcfl_cli("run", *args)


def final_accuracy(out_dir):
    return read_results(out_dir)["rounds"][-1]["accuracy"]


# The first five seeds whose draws give round 1 at least two clients with lr <=
# 3e-3, at least three such clients sampled in rounds 1-3, and in rounds 2 and
# 3 a client sampled for the first time with lr > 3e-3 (with the array genetic
# step's initial draws; they were 6, 11, 16, 17 and 20 before).
DIVERGENCE_SEEDS = (7, 10, 21, 23, 28)
SANE_LR = 3e-3  # on this setup no client blew up at or below it


def blown(client):
    return client["status"] in ("diverged", "refused")


def test_diverging_clients_are_contained(tmp_path, no_leftover_processes):
    """lr drawn from [1e-3, 10]: clients blow up every round, the global model still learns.

    gcfl's defaults are tested on this search space below; this test keeps the
    notebook's rules, so that only the per-client guards contain the damage.

    20 iid clients, half of them per round, 10 local epochs, update guard 0.5
    (healthy ratios are 0.07-0.4). Each round samples clients for the first
    time whose initial lr blows up, so every round marks some. Each run is
    compared with a run of only its non-diverging clients: their data, every
    round, lr in [1e-3, 3e-3]. A single seed's pair differs by up to 0.23
    either way, so the means over five seeds are compared.
    """
    common = [
        *("--rounds", "3", "--partition", "iid", "--local-epochs", "10"),
        *("--set", "max-update-norm=0.5", "--set", "lr-min=1e-3"),
        # Issue 5's containment, under the notebook's rules: no migration or
        # rollback to help, and offspring lrs within x1.1 of a healthy parent's.
        *("--set", "rules=notebook"),
    ]
    wild_accuracy, alone_accuracy = [], []
    for seed in DIVERGENCE_SEEDS:
        out = tmp_path / f"wild-{seed}"
        wild = gcfl_run(
            *common,
            *("--seed", str(seed), "--clients", "20", "--fraction-fit", "0.5"),
            *("--set", "lr-max=10", "--out", str(out)),
        )
        assert wild.returncode == 0, wild.stderr
        results = read_results(out)
        rounds = results["rounds"]
        assert [r["round"] for r in rounds] == [1, 2, 3]
        blown_ids: set[int] = set()
        highest_accepted_lr = 0.0
        for record in rounds:
            clients = record["clients"]
            assert len(clients) == 10 and all("status" in c for c in clients)
            marked = [c for c in clients if blown(c)]
            assert marked, f"seed {seed} round {record['round']}: no client marked"
            assert all(c["lr"] > SANE_LR for c in marked)
            ok = [c for c in clients if c["status"] == "ok"]
            assert record["accepted"] == len(ok)  # no blown update was averaged
            for client in clients:  # a blown client is bred from healthy ones before it returns
                if client["id"] in blown_ids:
                    assert client["lr"] <= highest_accepted_lr * 1.1 * (1 + 1e-6)
            blown_ids |= {c["id"] for c in marked}
            highest_accepted_lr = max([highest_accepted_lr, *(c["lr"] for c in ok)])
        assert genetic_rule_violations(results, elite=2, mutation=0.1) == []

        sampled = {c["id"] for r in rounds for c in r["clients"]}
        non_diverging = sorted(sampled - blown_ids)
        digits = load_digits_dataset(seed=seed)
        parts = partition_indices("iid", digits.y_train, 20, seed=seed)
        kept = np.concatenate([parts[cid] for cid in non_diverging])
        npz = tmp_path / f"non-diverging-{seed}.npz"
        np.savez(
            npz,
            x_train=digits.x_train[kept],
            y_train=digits.y_train[kept],
            x_test=digits.x_test,
            y_test=digits.y_test,
        )
        alone = gcfl_run(
            *common,
            *("--seed", str(seed), "--clients", str(len(non_diverging))),
            *("--dataset", str(npz), "--set", f"lr-max={SANE_LR}"),
            *("--out", str(tmp_path / f"alone-{seed}")),
        )
        assert alone.returncode == 0, alone.stderr
        wild_accuracy.append(final_accuracy(out))
        alone_accuracy.append(final_accuracy(tmp_path / f"alone-{seed}"))

    table = list(zip(DIVERGENCE_SEEDS, wild_accuracy, alone_accuracy, strict=True))
    print("seed, wild, non-diverging alone:", table)  # README's table: pytest -rP
    assert min(wild_accuracy) > 0.3, table  # chance is 0.1
    assert np.mean(wild_accuracy) > 0.6, table
    # Measured: wild 0.696 against 0.664 on average; README has each seed's pair.
    assert np.mean(wild_accuracy) >= np.mean(alone_accuracy) - 0.05, table


def test_wild_search_space_with_the_defaults_still_learns(tmp_path, no_leftover_processes):
    """Issue 10: lr-min=1e-3 lr-max=10, every other key at its default (10 clients, 3 rounds)."""
    out = tmp_path / "wild"
    run = gcfl_run(
        *("--rounds", "3", "--clients", "10", "--out", str(out)),
        *("--set", "lr-min=1e-3", "--set", "lr-max=10"),
    )
    assert run.returncode == 0, run.stderr
    results = read_results(out)
    rounds = results["rounds"]
    accuracies = [r["accuracy"] for r in rounds]
    print("accuracy per round:", accuracies)  # README quotes them: pytest -rP
    assert all(np.isfinite(r["loss"]) for r in rounds), accuracies
    # Chance is 0.1 (0.016 is one standard deviation of it on 360 test images); measured:
    # 0.164, 0.442, 0.606 (0.097, 0.106, 0.383 with other draws). Most first-round lrs blow up.
    assert accuracies[-1] >= 0.15 and accuracies[-1] > accuracies[0], accuracies
    marked = [c for r in rounds for c in r["clients"] if blown(c)]
    assert marked and all(c["lr"] > 1e-2 for c in marked)
    assert all("reason" in c or c["status"] == "diverged" for c in marked)
    assert genetic_rule_violations(results, elite=2) == []


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
        # Only the injected faults fail: an lr range in which no update is refused,
        # and no rollback to turn a failed round into a rolled-back one.
        *("--set", "lr-max=3e-3", "--set", "rollback=false"),
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


# Imported by every Python process of the victim's run (through PYTHONPATH,
# which Flower hands on to its Ray actors): each fit of round
# GCFL_TEST_HOLD_ROUND leaves a file, then waits to be killed, so that the kill
# lands mid-round whatever the machine's speed.
HOLD_FITS_HOOK = """
import importlib.machinery
import os
import pathlib
import sys
import time


class HoldFits:
    def find_spec(self, name, path, target=None):
        if name != "gcfl.client.client":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            fit = module.GcflClient.fit

            def held_fit(self, parameters, config):
                if int(config["server-round"]) == int(os.environ["GCFL_TEST_HOLD_ROUND"]):
                    marks = pathlib.Path(os.environ["GCFL_TEST_HOLD_MARKS"])
                    (marks / f"fit-{self.partition_id}").touch()
                    time.sleep(3600)
                return fit(self, parameters, config)

            module.GcflClient.fit = held_fit

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, HoldFits())
"""


def test_sigkilled_run_resumes_exactly(tmp_path, no_leftover_processes):
    rounds = 5
    args = ["--rounds", str(rounds), "--clients", "6", "--fraction-fit", "0.5", "--seed", "5"]
    reference = gcfl_run(*args, "--out", str(tmp_path / "whole"))
    assert reference.returncode == 0, reference.stderr

    # Killed mid-round, the harder case: round 2 is on disk, round 3's fits have begun.
    hook, marks = tmp_path / "hook", tmp_path / "round-3-fits"
    hook.mkdir()
    marks.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD_FITS_HOOK)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
        "GCFL_TEST_HOLD_ROUND": "3",
        "GCFL_TEST_HOLD_MARKS": str(marks),
    }
    victim_dir = tmp_path / "killed"
    victim_log = tmp_path / "victim.txt"
    with open(victim_log, "w") as output:  # a file: a pipe nobody reads can stall the run
        victim = subprocess.Popen(
            [sys.executable, "-m", "gcfl.cli", "run", *args, "--out", str(victim_dir)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 600
        while not any(marks.iterdir()):
            assert victim.poll() is None, (
                "the run ended before round 3's fits began:\n" + (victim_log.read_text()[-3000:])
            )
            assert time.monotonic() < deadline, "round 3's fits did not begin within 600 s"
            time.sleep(0.05)
    finally:
        kill_tree(victim.pid)
        victim.wait(timeout=30)
    assert rounds_in(victim_dir) == 2

    resumed = gcfl_run(*args, "--set", "resume=true", "--out", str(victim_dir))
    assert resumed.returncode == 0, resumed.stderr
    whole, pieced = read_results(tmp_path / "whole"), read_results(victim_dir)
    # none twice, none lost
    assert [r["round"] for r in pieced["rounds"]] == list(range(1, rounds + 1))

    def schedule(results):
        return [
            [(c["id"], c["lr"], c["batch_size"]) for c in r["clients"]] for r in results["rounds"]
        ]

    assert schedule(pieced) == schedule(whole)
    assert [r["accuracy"] for r in pieced["rounds"]] == pytest.approx(
        [r["accuracy"] for r in whole["rounds"]]
    )
