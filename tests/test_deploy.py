"""Deployment: the topology as real processes (TLS, SuperNode auth), and docker-compose."""

import argparse
import ipaddress
import math
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gcfl.deploy.compose import write_compose_files
from gcfl.deploy.credentials import create_node_keys, create_tls
from gcfl.deploy.local import Deployment, _register, _wait_for_superlink
from gcfl.deploy.topology import (
    CertificatePaths,
    connection_toml,
    superlink_command,
    supernode_command,
)
from gcfl.processes import free_port, tool_environment
from gcfl.server.results import read_results
from tests.flower_processes import gcfl_cli

ROOT = Path(__file__).resolve().parents[1]


def compose_services(name: str = "docker-compose.yml") -> dict:
    return yaml.safe_load((ROOT / name).read_text())["services"]


def host_path(service: dict, container_path: str) -> str | None:
    """The host path behind ``container_path`` in ``service``'s bind mounts; None if unmounted."""
    for volume in service.get("volumes", []):
        host, container, *_ = volume.split(":")
        if not host.startswith("./"):
            continue  # a named volume: nothing the user provides
        if container_path == container or container_path.startswith(container + "/"):
            return host + container_path[len(container) :]
    return None


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def superlink_args(services: dict) -> argparse.Namespace:
    # Flower 1.42's own parsers: the command lines are read as the containers will read them.
    from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink

    command = services["superlink"]["command"]
    assert command[0] == "flower-superlink"
    return _parse_args_run_superlink().parse_args(command[1:])


def supernode_args(service: dict, monkeypatch) -> tuple[str, argparse.Namespace, dict]:
    """What ``gcfl node`` gives its worker and flower-supernode, and the node config Flower reads.

    The command goes through gcfl's own entry point, with the start of the
    processes replaced by a record of what would start.
    """
    from flwr.common.config import parse_config_args
    from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

    from gcfl.cli import main

    command = service["command"]
    assert command[0] == "gcfl"
    started = []
    monkeypatch.setattr(
        "gcfl.deploy.node.run_node",
        lambda socket, supernode, policy: started.append((socket, supernode)) or 0,
    )
    assert main(command[1:]) == 0 and len(started) == 1
    worker_socket, supernode = started[0]
    assert supernode[0] == "flower-supernode"
    args = _parse_args_run_supernode().parse_args(supernode[1:])
    return worker_socket, args, parse_config_args([args.node_config])


class TestCompose:
    def test_committed_files_are_what_the_generator_writes(self, tmp_path):
        # Drift check: the committed files must be regenerated whenever the topology changes.
        for written in write_compose_files(tmp_path):
            name = written.relative_to(tmp_path)
            assert (ROOT / name).read_text() == written.read_text(), (
                f"{name} is stale: run python -m gcfl.deploy.compose"
            )

    def test_superlink_serves_tls_and_authenticates_supernodes(self):
        services = compose_services()
        link = services["superlink"]
        args = superlink_args(services)
        assert not args.insecure and args.enable_supernode_auth
        tls_files = (args.ssl_ca_certfile, args.ssl_certfile, args.ssl_keyfile)
        hosts = [host_path(link, path) for path in tls_files]
        assert hosts == [
            "./deploy/certs/ca.crt",
            "./deploy/certs/server.pem",
            "./deploy/certs/server.key",
        ]
        # flwr run from the host, on its loopback only (tests/test_security.py)
        assert link["ports"] == [f"127.0.0.1:{args.port}:{args.port}"]
        # out-dir='/results/...' lands in ./results on the host (README).
        assert host_path(link, "/results/run-1") == "./results/run-1"
        # State lives in a named volume: kept across restarts, dropped by down -v.
        state_volume = {v.split(":")[1]: v.split(":")[0] for v in link["volumes"]}["/state"]
        assert args.database.startswith("/state/") and not state_volume.startswith("./")
        # No engine healthcheck: podman without systemd never runs one.
        assert all("healthcheck" not in service for service in services.values())

    @pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.insecure.yml"])
    def test_each_supernode_has_its_partition_and_a_warm_worker(self, name, monkeypatch):
        services = compose_services(name)
        link_port = superlink_args(services).port
        nodes = {key: value for key, value in services.items() if key.startswith("supernode-")}
        partitions = []
        for service in nodes.values():
            worker_socket, supernode, node_config = supernode_args(service, monkeypatch)
            assert supernode.superlink == f"superlink:{link_port}"
            assert node_config["num-partitions"] == len(nodes)
            partitions.append(node_config["partition-id"])
            # The ClientApps find the worker that gcfl node starts beside the SuperNode.
            assert node_config["worker-socket"] == worker_socket
        assert sorted(partitions) == list(range(len(nodes))) and len(nodes) >= 2

    def test_each_supernode_holds_only_its_own_key_and_it_is_registered_first(self, monkeypatch):
        services = compose_services()
        registration = services["register-supernodes"]["command"]
        register_service = services["register-supernodes"]
        registered = {
            host_path(register_service, key) for key in registration if key.endswith(".pub")
        }
        link_port = superlink_args(services).port
        assert option(registration, "--address") == f"superlink:{link_port}"
        assert host_path(register_service, option(registration, "--ca")) == "./deploy/certs/ca.crt"
        assert 0 < float(option(registration, "--wait")) < 600  # waits, but not forever
        keys = set()
        for name, service in services.items():
            if not name.startswith("supernode-"):
                continue
            _, supernode, node_config = supernode_args(service, monkeypatch)
            assert not supernode.insecure
            assert host_path(service, supernode.root_certificates) == "./deploy/certs/ca.crt"
            key = host_path(service, supernode.auth_supernode_private_key)
            assert key == f"./deploy/certs/supernode-{node_config['partition-id']}"
            keys.add(key)
            # The CA and its own private key, nothing else: no other node's key, no server key.
            mounted = {v.split(":")[0] for v in service["volumes"]}
            assert mounted == {"./deploy/certs/ca.crt", key}
            assert service["depends_on"] == {
                "register-supernodes": {"condition": "service_completed_successfully"}
            }
        assert registered == {f"{key}.pub" for key in keys}

    def test_registration_uses_a_connection_to_the_superlink_with_the_ca(self):
        services = compose_services()
        service = services["register-supernodes"]
        command = service["command"]
        flwr_home = host_path(service, service["environment"]["FLWR_HOME"])
        config = tomllib.loads((ROOT / flwr_home / "config.toml").read_text())
        # register.py runs flwr supernode register with this connection name.
        connection = config["superlink"][option(command, "--connection")]
        assert connection["address"] == option(command, "--address")
        ca = connection["root-certificates"]
        assert host_path(service, ca) == "./deploy/certs/ca.crt"
        assert not connection.get("insecure", False)

    def test_insecure_variant_has_no_tls_anywhere(self, monkeypatch):
        services = compose_services("docker-compose.insecure.yml")
        assert "register-supernodes" not in services
        args = superlink_args(services)
        assert args.insecure and not args.enable_supernode_auth
        assert (args.ssl_ca_certfile, args.ssl_certfile, args.ssl_keyfile) == (None, None, None)
        for name, service in services.items():
            assert not any(v.startswith("./deploy/certs") for v in service.get("volumes", []))
            if name.startswith("supernode-"):
                _, supernode, _ = supernode_args(service, monkeypatch)
                assert supernode.insecure and supernode.root_certificates is None
                assert supernode.auth_supernode_private_key is None
                assert service["depends_on"] == {"superlink": {"condition": "service_started"}}

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
    # Not the checkout's own generated credentials: the script refuses to replace them.
    generated = shutil.ignore_patterns("certs", "host-flwr-home")
    for name in ("deploy", "gcfl", "pyproject.toml"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=generated)
        else:
            shutil.copy(source, tmp_path / name)
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

    # Every host file or folder docker-compose.yml mounts, or names inside a mount, exists.
    services = compose_services()
    needed = set()
    for service in services.values():
        needed |= {v.split(":")[0] for v in service.get("volumes", []) if v.startswith("./")}
        needed |= {path for arg in service["command"] if (path := host_path(service, arg))}
    assert {"./deploy/certs/server.key", "./deploy/certs/supernode-2.pub"} <= needed
    assert [path for path in sorted(needed) if not (tmp_path / path).exists()] == []

    # Each node's mounted private key belongs to a public key that gets registered.
    register = services["register-supernodes"]
    registered = {host_path(register, arg) for arg in register["command"]}
    for name, service in services.items():
        if name.startswith("supernode-"):
            command = service["command"]
            private = host_path(service, option(command, "--auth-supernode-private-key"))
            assert f"{private}.pub" in registered
            key = serialization.load_ssh_private_key((tmp_path / private).read_bytes(), None)
            public = serialization.load_ssh_public_key((tmp_path / f"{private}.pub").read_bytes())
            assert key.public_key() == public

    # The SuperLink's certificate is the CA's, and valid for every name it is dialled by:
    # the compose service name from the containers, 127.0.0.1 from the host.
    certs = tmp_path / "deploy/certs"
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((certs / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    server_key = serialization.load_pem_private_key((certs / "server.key").read_bytes(), None)
    assert server_key.public_key() == server.public_key()
    alternative = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    link_host = option(services["supernode-0"]["command"], "--superlink").split(":")[0]
    assert link_host in alternative.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in alternative.get_values_for_type(x509.IPAddress)

    # The README's `flwr run . gcfl-deploy` from the host reaches the published port with the CA.
    host_config = tomllib.loads((tmp_path / "deploy/host-flwr-home/config.toml").read_text())
    connection = host_config["superlink"]["gcfl-deploy"]
    host_ip, published, _ = services["superlink"]["ports"][0].split(":")
    assert connection["address"] == f"{host_ip}:{published}"
    assert Path(connection["root-certificates"]).resolve() == (certs / "ca.crt").resolve()


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
