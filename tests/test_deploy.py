"""Deployment: the topology as real processes (TLS, SuperNode auth), and docker-compose."""

import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gcfl.deploy.compose import CONTAINER_CERTS, compose_document, render
from gcfl.deploy.credentials import create_node_keys, create_tls
from gcfl.deploy.local import Deployment, _register, _wait_for_superlink
from gcfl.deploy.topology import (
    CertificatePaths,
    connection_toml,
    node_command,
    superlink_command,
    supernode_command,
)
from gcfl.server.results import read_results
from gcfl.simulation.superlink import free_port, tool_environment
from tests.flower_processes import gcfl_cli

ROOT = Path(__file__).resolve().parents[1]


class TestCompose:
    def test_committed_files_are_generated_from_the_topology(self):
        for name, insecure in (
            ("docker-compose.yml", False),
            ("docker-compose.insecure.yml", True),
        ):
            committed = (ROOT / name).read_text()
            assert committed == render(compose_document(insecure=insecure)), (
                f"{name} is stale: run python -m gcfl.deploy.compose"
            )

    def test_services_and_commands_match_the_topology(self):
        services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
        assert list(services) == [
            "superlink",
            "register-supernodes",
            "supernode-0",
            "supernode-1",
            "supernode-2",
        ]
        link = services["superlink"]
        assert link["command"] == superlink_command(
            host="0.0.0.0", port=9093, certs=CONTAINER_CERTS, database="/state/state.db"
        )
        assert "--enable-supernode-auth" in link["command"] and "--insecure" not in link["command"]
        assert (
            "./deploy/certs:/certs:ro" in link["volumes"]
            and "./results:/results" in link["volumes"]
        )
        # No engine healthcheck (podman without systemd never runs one): the
        # registration step waits for the SuperLink itself, bounded.
        assert all("healthcheck" not in service for service in services.values())
        registration = services["register-supernodes"]["command"]
        assert registration[:3] == ["python", "-m", "gcfl.deploy.register"]
        assert registration[registration.index("--address") + 1] == "superlink:9093"
        assert float(registration[registration.index("--wait") + 1]) > 0
        for index in range(3):
            assert CONTAINER_CERTS.node_public_key(index) in registration
            node = services[f"supernode-{index}"]
            # Each SuperNode runs beside its warm training worker, on one socket.
            socket_path = node["command"][node["command"].index("--worker-socket") + 1]
            assert node["command"] == node_command(
                socket_path,
                supernode_command(
                    index,
                    3,
                    superlink="superlink:9093",
                    certs=CONTAINER_CERTS,
                    worker_socket=socket_path,
                ),
            )
            assert (
                f"partition-id={index} num-partitions=3 worker-socket='{socket_path}'"
                in (node["command"])
            )
            assert node["depends_on"] == {
                "register-supernodes": {"condition": "service_completed_successfully"}
            }
            # A node gets the CA and its own private key, nothing else.
            assert node["volumes"] == [
                "./deploy/certs/ca.crt:/certs/ca.crt:ro",
                f"./deploy/certs/supernode-{index}:/certs/supernode-{index}:ro",
            ]

    def test_insecure_variant_is_insecure_everywhere(self):
        services = yaml.safe_load((ROOT / "docker-compose.insecure.yml").read_text())["services"]
        assert "register-supernodes" not in services
        assert all("--insecure" in s["command"] for s in services.values())

    def test_registration_config_points_at_the_superlink_with_the_ca(self):
        assert (ROOT / "deploy/flwr-home/config.toml").read_text() == connection_toml(
            "superlink:9093", "/certs/ca.crt"
        )

    @pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose missing")
    @pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.insecure.yml"])
    def test_docker_compose_accepts_the_file(self, name, tmp_path):
        shutil.copy(ROOT / name, tmp_path / name)
        shutil.copy(ROOT / "Dockerfile", tmp_path / "Dockerfile")
        run = subprocess.run(
            ["docker-compose", "-f", name, "config", "-q"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr

    def test_dockerfile_takes_the_base_image_as_a_build_arg(self):
        text = (ROOT / "Dockerfile").read_text()
        assert "ARG BASE_IMAGE=python:3.11-slim" in text and "FROM ${BASE_IMAGE}" in text
        assert "pip install ." in text
        assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in text


def test_credentials_script_creates_what_compose_mounts(tmp_path):
    for name in ("deploy", "gcfl", "pyproject.toml"):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    env_path = str(Path(sys.executable).parent)
    run = subprocess.run(
        ["bash", "deploy/generate-certs.sh", "3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": env_path + ":/usr/bin:/bin"},
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    mounted = {"ca.crt", "server.pem", "server.key"} | {
        f"supernode-{i}{suffix}" for i in range(3) for suffix in ("", ".pub")
    }
    assert {p.name for p in (tmp_path / "deploy/certs").iterdir()} == mounted
    assert "root-certificates" in (tmp_path / "deploy/host-flwr-home/config.toml").read_text()


@pytest.mark.integration
def test_deploy_three_nodes_with_tls_and_auth(tmp_path, no_leftover_processes):
    out_dir = tmp_path / "deployed"
    run = gcfl_cli("deploy", "--nodes", "3", "--rounds", "2", "--out", str(out_dir))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "TLS and SuperNode authentication" in run.stdout
    results = read_results(out_dir)
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    for record in results["rounds"]:
        assert [c["id"] for c in record["clients"]] == [0, 1, 2]  # all 3 train every round
        for client in record["clients"]:
            # Every node replied; an lr near the top of the space may blow up, and is marked.
            assert client["status"] in ("ok", "diverged", "refused")
            assert math.isclose(client["lr"], client["assigned_lr"], rel_tol=1e-6)
            assert client["batch_size"] == client["assigned_batch_size"]
    assert len({c["assigned_lr"] for c in results["rounds"][0]["clients"]}) == 3
    logs = out_dir / "deploy-logs"
    assert "registered successfully" in (logs / "register-0.log").read_text()
    for index in range(3):
        # Every round trained on the node's warm worker, none in a ClientApp process.
        node_log = (logs / f"supernode-{index}.log").read_text()
        for server_round in (1, 2):
            assert f"trained partition {index}, round {server_round}," in node_log
        assert "training in the ClientApp process instead" not in node_log
    assert "DEPRECATED" not in (out_dir / "flower.log").read_text()


@pytest.mark.integration
def test_unregistered_or_unverified_supernodes_are_refused(tmp_path, no_leftover_processes):
    env = tool_environment(tmp_path / "home", tmp_path / "ray")
    (tmp_path / "home").mkdir()
    create_tls(tmp_path / "certs")
    create_node_keys(tmp_path / "certs", 2)
    certs = CertificatePaths(str(tmp_path / "certs"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    (tmp_path / "home" / "config.toml").write_text(connection_toml(address, certs.ca_certificate))
    (tmp_path / "logs").mkdir()
    deployment = Deployment(tmp_path, tmp_path / "logs", env)
    try:
        deployment.start("superlink", superlink_command(host="127.0.0.1", port=port, certs=certs))
        _wait_for_superlink(address, Path(certs.ca_certificate), deployment)
        _register(0, certs, env, tmp_path / "logs")
        deployment.start(
            "registered", supernode_command(0, 2, superlink=address, certs=certs, port=free_port())
        )
        deployment.start(
            "unregistered",
            supernode_command(1, 2, superlink=address, certs=certs, port=free_port()),
        )
        without_ca = supernode_command(0, 2, superlink=address, certs=certs, port=free_port())
        flag = without_ca.index("--root-certificates")
        del without_ca[flag : flag + 2]
        deployment.start("without-ca", without_ca)
        deadline = time.monotonic() + 120
        refused = ("unregistered", "without-ca")
        while time.monotonic() < deadline and any(
            deployment.processes[name].poll() is None for name in refused
        ):
            time.sleep(0.5)
        assert all(deployment.processes[name].poll() not in (None, 0) for name in refused)
        assert deployment.processes["registered"].poll() is None  # still connected
    finally:
        deployment.stop()
    logs = tmp_path / "logs"
    assert "Failed to activate SuperNode" in (logs / "unregistered.log").read_text()
    assert "CERTIFICATE_VERIFY_FAILED" in (logs / "without-ca.log").read_text()


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and ip")
def test_deploy_in_network_namespaces(tmp_path, no_leftover_processes):
    out_dir = tmp_path / "netns"
    run = gcfl_cli("deploy", "--nodes", "3", "--rounds", "1", "--netns", "--out", str(out_dir))
    assert run.returncode == 0, run.stdout + run.stderr
    # Every node replied across its namespace (an lr that blows up is still a reply).
    statuses = [c["status"] for c in read_results(out_dir)["rounds"][0]["clients"]]
    assert len(statuses) == 3 and "failed" not in statuses
    # Each SuperNode reached the SuperLink from its own namespace's address.
    activations = re.findall(
        r"(10\.213\.\d+\.\d+):\d+ - \"POST /v1/fleet/activate-node",
        (out_dir / "deploy-logs" / "superlink.log").read_text(),
    )
    assert len(set(activations)) == 3
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "gcfl-" not in listed


def test_registration_waits_a_bounded_time_and_says_why_it_gave_up(capsys):
    from gcfl.deploy.register import main as register_main

    port = free_port()  # nothing listens there
    code = register_main(
        ["--address", f"127.0.0.1:{port}", "--connection", "c", "--wait", "1", "key.pub"]
    )
    assert code == 1
    error = capsys.readouterr().err
    assert f"did not answer at http://127.0.0.1:{port}/health within 1 s" in error
