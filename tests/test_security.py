"""A deployment that lets no one in: what is published, and which inputs are refused.

Flower 1.42 serves the Fleet API and the Control API on the SuperLink's one
port, and the Control API authenticates no one without OIDC, so the port
must not be published beyond the host unless asked for (the multi-host
variant). ``gcfl deploy`` and ``gcfl node`` refuse bad node counts, hosts,
ports and paths before they start anything, naming the value.

These are static checks. Attacks on a running deployment (a stranger's key
registered, a run submitted through the Control API) are integration tests
that belong here too; README.md's "Security" section points here for them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gcfl.cli import main
from gcfl.deploy import compose
from gcfl.deploy.compose import (
    LOOPBACK,
    MULTI_HOST_FILE,
    check_multi_host_address,
    compose_document,
    write_compose_files,
)
from gcfl.deploy.local import Deployment
from gcfl.deploy.netns import MAX_NODES, NamespaceNetwork, address_plan
from gcfl.deploy.topology import (
    SUPERLINK_PORT,
    TopologyError,
    check_supernode_command,
    node_command,
    superlink_command,
    supernode_command,
)
from gcfl.processes import free_port, tool_environment

ROOT = Path(__file__).resolve().parents[1]
MULTI_HOST = "192.0.2.10"  # TEST-NET-1: an address for documentation


def published_hosts(services: dict) -> dict[str, list[str]]:
    """Each service's published ports as the host address each one binds (short syntax)."""
    found: dict[str, list[str]] = {}
    for name, service in services.items():
        hosts = []
        for entry in service.get("ports", []):
            assert isinstance(entry, str), f"{name}: only the short port syntax is generated"
            parts = entry.rsplit(":", 2)
            # HOST:PUBLISHED:TARGET; without HOST the engine binds every interface.
            hosts.append(parts[0] if len(parts) == 3 else "0.0.0.0")
        found[name] = hosts
    return found


@pytest.fixture
def nothing_starts(monkeypatch):
    """Fail the test the moment anything would start a process or a deployment."""

    def refuse(*args, **kwargs):
        pytest.fail(f"a process was started: {args[:1]}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr("gcfl.deploy.local.deploy", refuse)
    monkeypatch.setattr("gcfl.deploy.node.run_node", refuse)


class TestPublishedPorts:
    def test_committed_compose_files_publish_only_on_loopback(self, tmp_path):
        # The committed files are the generator's (drift check in test_deploy.py).
        committed = [p for p in write_compose_files(tmp_path) if p.suffix == ".yml"]
        assert {p.name for p in committed} == {"docker-compose.yml", "docker-compose.insecure.yml"}
        for path in committed:
            services = yaml.safe_load((ROOT / path.name).read_text())["services"]
            assert published_hosts(services)["superlink"] == [LOOPBACK], path.name
            assert all(hosts in ([], [LOOPBACK]) for hosts in published_hosts(services).values())
            # Host networking would put the SuperLink on every interface of the host.
            assert all("network_mode" not in service for service in services.values())

    @pytest.mark.parametrize("insecure", [False, True])
    def test_generator_publishes_on_loopback_unless_multi_host_is_asked(self, insecure):
        services = compose_document(num_nodes=5, insecure=insecure)["services"]
        assert published_hosts(services) == {
            name: ([LOOPBACK] if name == "superlink" else []) for name in services
        }

    def test_multi_host_variant_publishes_on_the_named_address_and_nodes_dial_it(self, monkeypatch):
        from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

        services = compose_document(multi_host=MULTI_HOST)["services"]
        link = services["superlink"]
        assert link["ports"] == [
            f"{LOOPBACK}:{SUPERLINK_PORT}:{SUPERLINK_PORT}",  # flwr run from the host
            f"{MULTI_HOST}:{SUPERLINK_PORT}:{SUPERLINK_PORT}",
        ]
        assert "--enable-supernode-auth" in link["command"] and "--insecure" not in link["command"]
        # Registration stays on the SuperLink host's compose network.
        registration = services["register-supernodes"]["command"]
        assert registration[registration.index("--address") + 1] == f"superlink:{SUPERLINK_PORT}"
        started = []
        monkeypatch.setattr(
            "gcfl.deploy.node.run_node",
            lambda socket, supernode, *policy: started.append(supernode) or 0,
        )
        nodes = [service for name, service in services.items() if name.startswith("supernode-")]
        for service in nodes:
            assert "ports" not in service
            # Through gcfl's own entry point, so the node checks accept what is generated.
            assert main(service["command"][1:]) == 0
        assert len(started) == len(nodes) == compose.COMPOSE_NODES
        for supernode in started:
            args = _parse_args_run_supernode().parse_args(supernode[1:])
            assert args.superlink == f"{MULTI_HOST}:{SUPERLINK_PORT}" and not args.insecure

    @pytest.mark.parametrize(
        ("address", "named"),
        [
            ("0.0.0.0", "every interface"),
            ("::", "IPv4"),
            ("127.0.0.1", "not reachable"),
            ("224.0.0.1", "not reachable"),
            ("2001:db8::1", "IPv4"),
            ("link.example.org", "not an IP address"),
            ("192.0.2", "not an IP address"),
            ("", "not an IP address"),
        ],
    )
    def test_multi_host_refuses_addresses_it_cannot_publish_deliberately(self, address, named):
        with pytest.raises(TopologyError, match=named) as refused:
            check_multi_host_address(address)
        assert repr(address) in str(refused.value) and "--multi-host" in str(refused.value)
        with pytest.raises(TopologyError):
            compose_document(multi_host=address)

    def test_multi_host_is_secure_only(self):
        with pytest.raises(TopologyError, match="insecure"):
            compose_document(insecure=True, multi_host=MULTI_HOST)

    def test_multi_host_command_writes_only_its_own_file(self, tmp_path, capsys):
        before = {name: (ROOT / name).read_text() for name in ("docker-compose.yml",)}
        output = tmp_path / MULTI_HOST_FILE
        assert compose.main(["--multi-host", MULTI_HOST, "--output", str(output)]) == 0
        text = output.read_text()
        assert text.startswith(
            f"# Generated by `python -m gcfl.deploy.compose --multi-host {MULTI_HOST}`"
        )
        assert yaml.safe_load(text) == compose_document(multi_host=MULTI_HOST)
        assert {name: (ROOT / name).read_text() for name in before} == before
        assert str(output) in capsys.readouterr().out

    def test_multi_host_file_lands_in_the_working_directory(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        assert compose.main(["--multi-host", MULTI_HOST, "--nodes", "2"]) == 0
        services = yaml.safe_load((tmp_path / MULTI_HOST_FILE).read_text())["services"]
        assert sorted(name for name in services if name.startswith("supernode-")) == [
            "supernode-0",
            "supernode-1",
        ]

    @pytest.mark.parametrize(
        ("argv", "named"),
        [
            (["--multi-host", "0.0.0.0"], "'0.0.0.0'"),
            (["--multi-host", "not-an-ip"], "'not-an-ip'"),
            (["--multi-host", MULTI_HOST, "--nodes", "0"], "got 0"),
        ],
    )
    def test_multi_host_command_refuses_bad_input_and_writes_nothing(
        self, argv, named, tmp_path, capsys
    ):
        output = tmp_path / MULTI_HOST_FILE
        assert compose.main([*argv, "--output", str(output)]) == 2
        error = capsys.readouterr().err
        assert named in error and error.count("\n") == 1
        assert not output.exists()


class TestNamespaceAddressPlan:
    @pytest.mark.parametrize("tag", [0, 1, 249, 250, 4321, 9999])
    def test_every_count_it_accepts_gets_distinct_usable_addresses(self, tag):
        plan = address_plan(MAX_NODES, tag)
        assert plan.network.subnet_of(ipaddress.IPv4Network("10.213.0.0/16"))
        addresses = [plan.host_address, *plan.node_addresses]
        assert len(set(addresses)) == len(addresses) == MAX_NODES + 1
        for address in map(ipaddress.IPv4Address, addresses):
            assert address in plan.network
            assert address not in (plan.network.network_address, plan.network.broadcast_address)

    def test_small_plans_keep_the_addresses_of_before(self):
        plan = address_plan(3, tag=1234)
        assert plan.host_address == "10.213.234.1"
        assert plan.node_addresses == ("10.213.234.2", "10.213.234.3", "10.213.234.4")

    @pytest.mark.parametrize("count", [MAX_NODES + 1, 1000, 0, -1])
    def test_counts_it_cannot_hold_are_refused_naming_the_count(self, count):
        with pytest.raises(TopologyError, match=rf"^{count} SuperNodes"):
            address_plan(count, tag=7)

    def test_namespace_network_refuses_before_creating_anything(self, nothing_starts, monkeypatch):
        monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a[:1]}"))
        with pytest.raises(TopologyError, match=str(MAX_NODES + 1)):
            NamespaceNetwork(MAX_NODES + 1)


def _superlink_host_of_a_deployment(monkeypatch, tmp_path: Path, netns: bool) -> str:
    """``--host`` of the SuperLink that ``deploy`` starts; nothing is started for real."""
    from gcfl.deploy import local

    class Started(Exception):
        pass

    commands = []

    def record(self, name, command, prefix=None):
        commands.append(command)
        raise Started

    monkeypatch.setattr(local.Deployment, "start", record)
    monkeypatch.setattr(local, "check_prerequisites", lambda: None)
    monkeypatch.setattr(local.NamespaceNetwork, "create", lambda self: None)
    monkeypatch.setattr(local.NamespaceNetwork, "destroy", lambda self: None)
    with pytest.raises(Started):
        local.deploy({"out-dir": str(tmp_path / "out")}, 3, netns=netns)
    (superlink,) = commands
    assert superlink[0] == "flower-superlink"
    return superlink[superlink.index("--host") + 1]


def test_local_superlink_listens_on_one_address_not_every_interface(monkeypatch, tmp_path):
    assert _superlink_host_of_a_deployment(monkeypatch, tmp_path / "a", netns=False) == LOOPBACK
    bridge = _superlink_host_of_a_deployment(monkeypatch, tmp_path / "b", netns=True)
    assert ipaddress.IPv4Address(bridge) in ipaddress.IPv4Network("10.213.0.0/16")


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--nodes", "0"], "--nodes must be >= 1, got 0"),
        (["--nodes", "-2"], "got -2"),
        (["--nodes", str(MAX_NODES + 1), "--netns"], f"--nodes: {MAX_NODES + 1} SuperNodes"),
        (["--nodes", "1000", "--netns"], f"at most {MAX_NODES}"),
        (["--rounds", "0"], "num-server-rounds"),
        (["--set", "bogus=1"], "valid keys"),
    ],
)
def test_bad_deploy_input_is_refused_before_anything_starts(
    argv, named, nothing_starts, tmp_path, capsys
):
    assert main(["deploy", *argv, "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert named in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("unavailable", "named"),
    [("root", "--netns needs root"), ("ip", "`ip` command")],
)
def test_deploy_netns_where_namespaces_cannot_be_made_is_refused_first(
    unavailable, named, nothing_starts, monkeypatch, tmp_path, capsys
):
    if unavailable == "root":
        monkeypatch.setattr("os.geteuid", lambda: 1000)
    else:
        monkeypatch.setattr("gcfl.deploy.netns.shutil.which", lambda name: None)
        monkeypatch.setattr("os.geteuid", lambda: 0)
    assert main(["deploy", "--netns", "--out", str(tmp_path / "out")]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _node_argv(socket: Path, **replace: str) -> list[str]:
    """A good ``gcfl node`` command line, with some options' values replaced."""
    options = {
        "--superlink": "127.0.0.1:9093",
        "--node-config": f"partition-id=0 num-partitions=2 worker-socket='{socket}'",
        "--host": "127.0.0.1",
        "--port": "9094",
    }
    options.update({f"--{key.replace('_', '-')}": value for key, value in replace.items()})
    supernode = ["flower-supernode", "--insecure", "--isolation", "subprocess"]
    for flag, value in options.items():
        supernode += [flag, value]
    return ["node", "--worker-socket", str(socket), "--", *supernode]


def test_a_good_node_command_passes_the_checks(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(
        "gcfl.deploy.node.run_node",
        lambda socket, supernode, *policy: started.append(socket) or 0,
    )
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("started a process"))
    socket = tmp_path / "worker.sock"
    for superlink in ("127.0.0.1:9093", "[::1]:9093", "superlink:9093", "link.example.org:1"):
        assert main(_node_argv(socket, superlink=superlink)) == 0
    assert started == [str(socket)] * 4


def test_the_node_commands_gcfl_deploy_starts_pass_the_checks(tmp_path, monkeypatch):
    from gcfl.deploy.local import _resolve

    started = []
    monkeypatch.setattr(
        "gcfl.deploy.node.run_node",
        lambda socket, supernode, *policy: started.append(supernode) or 0,
    )
    socket = str(tmp_path / "worker-0.sock")
    supernode = supernode_command(
        0, 3, superlink="10.213.4.1:41234", certs=None, port=41235, worker_socket=socket
    )
    resolved = _resolve(node_command(socket, supernode))
    assert resolved[1:3] == ["-m", "gcfl.cli"]
    assert main(resolved[3:]) == 0
    assert Path(started[0][0]).name == "flower-supernode"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"superlink": "127.0.0.1"}, "--superlink: '127.0.0.1' is not HOST:PORT"),
        ({"superlink": "127.0.0.1:0"}, "--superlink '127.0.0.1:0': port must be 1-65535, got 0"),
        ({"superlink": "127.0.0.1:65536"}, "got 65536"),
        ({"superlink": "127.0.0.1:http"}, "'http' is not a port number"),
        ({"superlink": "bad host:9093"}, "'bad host:9093': 'bad host' is neither an IP address"),
        ({"superlink": "-link.example:9093"}, "'-link.example'"),
        ({"superlink": "999.1.1.1:9093"}, "'999.1.1.1'"),
        ({"superlink": "::1:9093"}, "[ADDRESS]:PORT"),
        ({"superlink": "[::1:9093"}, "'[::1:9093'"),
        ({"superlink": "[nope]:9093"}, "[nope] is not an IPv6 address"),
        ({"host": "not a host!"}, "--host: 'not a host!'"),
        ({"port": "0"}, "--port: port must be 1-65535, got 0"),
        ({"port": "70000"}, "got 70000"),
        ({"port": "x"}, "--port: 'x' is not a port number"),
        ({"node_config": "partition-id=2 num-partitions=2"}, "below num-partitions (2), got 2"),
        ({"node_config": "partition-id=-1 num-partitions=2"}, "partition-id must be >= 0, got -1"),
        ({"node_config": "partition-id=0 num-partitions=0"}, "num-partitions must be >= 1, got 0"),
        ({"node_config": "partition-id='a' num-partitions=2"}, "integer, got 'a'"),
        ({"node_config": "worker-socket='/elsewhere.sock'"}, "'/elsewhere.sock'"),
    ],
)
def test_bad_node_input_is_refused_before_anything_starts(
    change, named, nothing_starts, tmp_path, capsys
):
    assert main(_node_argv(tmp_path / "worker.sock", **change)) == 2
    error = capsys.readouterr().err
    assert named in error and error.count("\n") == 1


@pytest.mark.parametrize(
    ("socket", "named"),
    [
        ("/tmp/" + "s" * 120 + ".sock", "bytes; a Unix socket path holds at most 107"),
        ("/no/such/folder/worker.sock", "no such folder '/no/such/folder'"),
    ],
)
def test_bad_worker_socket_is_refused_before_anything_starts(socket, named, nothing_starts, capsys):
    argv = _node_argv(Path(socket))
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "--worker-socket" in error and named in error


@pytest.mark.parametrize(
    ("supernode", "named"),
    [
        (["python", "-c", "print(1)"], "gcfl node runs flower-supernode, got 'python'"),
        (["flower-supernode", "--superlink"], "--superlink: no value given"),
        (["flower-supernode", "--port=0"], "--port: port must be 1-65535, got 0"),
    ],
)
def test_node_runs_only_a_well_formed_supernode(supernode, named, nothing_starts, tmp_path, capsys):
    argv = ["node", "--worker-socket", str(tmp_path / "w.sock"), "--", *supernode]
    assert main(argv) == 2
    assert named in capsys.readouterr().err


def test_supernode_check_reads_the_flag_forms_flower_accepts():
    check_supernode_command(["flower-supernode", "--superlink=127.0.0.1:9093"], None)
    with pytest.raises(TopologyError, match=re.escape("'127.0.0.1:99999'")):
        check_supernode_command(["flower-supernode", "--superlink=127.0.0.1:99999"], None)


def _reachable(prefix: list[str], host: str, port: int) -> bool:
    """Whether a TCP connection to host:port succeeds from the network ``prefix`` runs in."""
    probe = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(({host!r}, {port}), timeout=3).close()\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    return subprocess.run([*prefix, sys.executable, "-c", probe], check=False).returncode == 0


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and ip")
def test_a_loopback_bound_superlink_cannot_be_reached_from_another_host(
    tmp_path, no_leftover_processes
):
    """A namespace joined to this host by a virtual network stands for another machine."""
    network = NamespaceNetwork(1)
    env = tool_environment(tmp_path / "home", tmp_path / "ray")
    (tmp_path / "home").mkdir()
    (tmp_path / "logs").mkdir()
    deployment = Deployment(tmp_path, tmp_path / "logs", env)
    loopback_port, bridge_port = free_port(), free_port()
    try:
        network.create()
        # As gcfl deploy binds it, and (the control) as --netns binds it.
        deployment.start(
            "loopback", superlink_command(host="127.0.0.1", port=loopback_port, certs=None)
        )
        deployment.start(
            "bridge", superlink_command(host=network.host_address, port=bridge_port, certs=None)
        )
        here = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
            here := [
                _reachable([], "127.0.0.1", loopback_port),
                _reachable([], network.host_address, bridge_port),
            ]
        ):
            deployment.check_alive()
            time.sleep(0.5)
        assert all(here), "the SuperLinks never came up on this host"
        elsewhere = network.exec_prefix(0)
        assert _reachable(elsewhere, network.host_address, bridge_port)  # the network works
        assert not _reachable(elsewhere, network.host_address, loopback_port)
        assert not _reachable(elsewhere, "127.0.0.1", loopback_port)  # its own loopback
    finally:
        deployment.stop()
        network.destroy()
