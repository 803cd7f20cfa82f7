"""Helpers for tests that start real Flower processes, and stop them again."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import psutil

from gcfl.processes import free_port, stop_process_tree, tool_environment


def managed_superlink_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a plain ``flwr run .``: private FLWR_HOME and ports, no dependency install.

    Free ports keep ``flwr run`` from reusing a SuperLink someone else started
    on Flower's fixed default ports.
    """
    env = tool_environment(tmp_path / "flwr-home", Path("/tmp") / f"gcfl-ray-{os.getpid()}")
    env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(free_port())
    env["FLWR_LOCAL_CONTROL_API_PORT"] = str(free_port())
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    return env


def stop_managed_superlink(flwr_home: Path) -> list[int]:
    """Stop the SuperLink that ``flwr run`` started for ``flwr_home``; return its PIDs."""
    stopped = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "flower-superlink" in cmdline and str(flwr_home) in cmdline:
            stop_process_tree(process.info["pid"])
            stopped.append(process.info["pid"])
    return stopped


def gcfl_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run the ``gcfl`` command line in a process of its own, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "gcfl.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def flwr_executable() -> str:
    return str(Path(sys.executable).parent / "flwr")


def close(a: float, b: float) -> bool:
    # Clients read their lr back from a float32 optimizer variable.
    return math.isclose(a, b, rel_tol=1e-5)


def genetic_rule_violations(results: dict, elite: int, mutation: float | None = None) -> list[str]:
    """Every place where round r+1's hyperparameters break the genetic rules of round r.

    Cluster by cluster (the cluster each client was put in at the end of round
    r): the ``elite`` best healthy clients train with their round-r pair in
    round r+1, unless migration replaced it (gcfl's rules). With ``mutation``
    (the notebook's rules, ranked by raw validation loss), every other client's
    lr is a member's lr times 1-m, 1 or 1+m, and its batch size a member's.
    Without it (gcfl's rules, ranked by score), every pair lies in the search
    space, and the migrants are the round's worst.
    """
    problems = []
    rounds = results["rounds"]
    config = results["config"]
    notebook = mutation is not None
    trained = ("ok", "diverged", "refused")

    def key(c):
        value = c["val_loss"] if notebook else c.get("score")
        healthy = c["status"] == "ok" and value is not None
        return (0, value, c["id"]) if healthy else (1, 0.0, c["id"])

    for current, following in itertools.pairwise(rounds):
        now = {c["id"]: c for c in current["clients"]}
        nxt = {c["id"]: c for c in following["clients"]}
        clusters: dict[int, list[dict]] = {}
        for client in now.values():
            if client["status"] in trained:
                clusters.setdefault(client["cluster"], []).append(client)
        if not notebook:
            migrants = sorted(c["id"] for c in now.values() if c.get("migrated"))
            ranked_round = sorted((c for c in now.values() if c["status"] in trained), key=key)
            worst = sorted(c["id"] for c in ranked_round[len(ranked_round) - len(migrants) :])
            if migrants != worst:
                problems.append(f"round {current['round']}: migrants {migrants} are not the worst")
        for label, members in clusters.items():
            ranked = sorted(members, key=key)
            round_healthy = [c for c in now.values() if c["status"] in trained and key(c)[0] == 0]
            healthy = [c for c in members if key(c)[0] == 0] or round_healthy or members
            for rank, client in enumerate(ranked):
                if client["id"] not in nxt:
                    continue
                then = nxt[client["id"]]
                where = f"round {following['round']} client {client['id']} (cluster {label})"
                if rank < elite and key(client)[0] == 0 and not client.get("migrated"):
                    if not (
                        close(then["lr"], client["lr"])
                        and then["batch_size"] == client["batch_size"]
                    ):
                        problems.append(f"{where}: elite did not keep its pair")
                    continue
                if not notebook:
                    lr_ok = (
                        config["lr-min"] * (1 - 1e-5) <= then["lr"] <= config["lr-max"] * (1 + 1e-5)
                    )
                    if (
                        not lr_ok
                        or not config["batch-min"] <= then["batch_size"] <= config["batch-max"]
                    ):
                        problems.append(f"{where}: pair outside the search space")
                    continue
                if not any(
                    close(then["lr"], m["lr"] * f)
                    for m in healthy
                    for f in (1 - mutation, 1, 1 + mutation)
                ):
                    problems.append(f"{where}: lr {then['lr']} is no member's lr x factor")
                if then["batch_size"] not in {m["batch_size"] for m in healthy}:
                    problems.append(f"{where}: batch size {then['batch_size']} is no member's")
    return problems
