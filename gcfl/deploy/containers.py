"""docker-compose.yml on a real container engine: Docker, or podman through its Docker API.

The container test (``tests/test_containers.py``) and ``benchmarks/deployment.py``
drive the committed compose file with this, step for step as the README's
Deployment section says: find an engine, build the image (from a local base
when no registry answers), ``generate-certs.sh``, ``docker-compose up -d``,
``flwr run . gcfl-deploy --stream`` from the host, ``docker-compose down -v``.
Everything it starts it stops again: the podman API service by its PID, the
compose project by ``down -v``; :meth:`ComposeStack.leftovers` says what
survived, if anything.

Podman needs two host settings on some machines (runc, lower ulimits in
``/etc/containers/containers.conf``); ``.ci/run`` writes them, and the
README's recipe shows them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gcfl.deploy.compose import COMPOSE_NODES, IMAGE
from gcfl.deploy.topology import CONNECTION_NAME, SUPERLINK_PORT
from gcfl.processes import flower_command, run_status, stop_process_tree, stream_flwr_run

REGISTRY_BASE_IMAGE = "docker.io/library/python:3.11-slim"
LOCAL_BASE_IMAGE = "localhost/debian-py311:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


class ContainersUnavailable(RuntimeError):
    """This machine cannot run the compose file; the message says why."""


def _run(
    command: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def _checked(
    command: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    result = _run(command, env=env, cwd=cwd, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited with code {result.returncode}:\n"
            f"{(result.stdout + result.stderr).strip()[-4000:]}"
        )
    return result


@dataclass
class Engine:
    """A container engine and the compose command that talks to it."""

    name: str  # "podman" or "docker"
    compose: list[str]
    env: dict[str, str] = field(default_factory=lambda: os.environ.copy())
    service: subprocess.Popen[bytes] | None = None
    service_dir: Path | None = None

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return _run([self.name, *args], env=self.env, timeout=timeout)

    def image_exists(self, image: str) -> bool:
        return self.run("image", "inspect", image, timeout=60).returncode == 0

    def close(self) -> None:
        """Stop the podman API service this started (by PID), if any."""
        if self.service is not None:
            stop_process_tree(self.service.pid)
            self.service = None
        if self.service_dir is not None:
            shutil.rmtree(self.service_dir, ignore_errors=True)
            self.service_dir = None


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker and _run([docker, "compose", "version"], timeout=30).returncode == 0:
        return ["docker", "compose"]
    return None


def _wait_for_socket(path: Path, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ContainersUnavailable(
                f"podman system service exited with code {process.returncode}"
            )
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(str(path))
            return
        except OSError:
            time.sleep(0.2)
    raise ContainersUnavailable(f"podman's API socket {path} did not open in {timeout_s:g} s")


def open_engine() -> Engine:
    """Docker if its daemon answers, else podman with its API service started here.

    :class:`ContainersUnavailable` names what is missing.
    """
    compose = _compose_command()
    if compose is None:
        raise ContainersUnavailable("neither docker-compose nor `docker compose` is installed")
    if shutil.which("docker") and _run(["docker", "info"], timeout=60).returncode == 0:
        return Engine("docker", compose)
    if not shutil.which("podman"):
        raise ContainersUnavailable("no Docker daemon answers and podman is not installed")
    if compose != ["docker-compose"]:
        raise ContainersUnavailable("podman needs docker-compose (it talks to podman's API)")
    info = _run(["podman", "info"], timeout=60)
    if info.returncode != 0:
        raise ContainersUnavailable(f"podman info failed: {info.stderr.strip()[-500:]}")
    service_dir = Path(tempfile.mkdtemp(prefix="gcfl-podman-"))
    socket_path = service_dir / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket_path}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    engine = Engine("podman", compose, service=service, service_dir=service_dir)
    engine.env["DOCKER_HOST"] = f"unix://{socket_path}"
    try:
        _wait_for_socket(socket_path, service, timeout_s=60)
    except BaseException:
        engine.close()
        raise
    return engine


def _debootstrap_base(engine: Engine, tag: str) -> None:
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        raise ContainersUnavailable(
            f"no base image: {REGISTRY_BASE_IMAGE} cannot be pulled, and building "
            f"{tag} needs debootstrap and root"
        )
    work = Path(tempfile.mkdtemp(prefix="gcfl-rootfs-"))
    try:
        rootfs = work / "rootfs"
        _checked(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={DEBIAN_PACKAGES}",
                "bookworm",
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            timeout=1200,
        )
        # pip inside the image build must trust what this host trusts (a
        # TLS-inspecting proxy's CA, for one); Debian's pip reads this bundle.
        host_bundle = Path(HOST_CA_BUNDLE)
        if host_bundle.is_file():
            shutil.copy(host_bundle, rootfs / HOST_CA_BUNDLE.lstrip("/"))
        archive = work / "rootfs.tar"
        _checked(["tar", "-C", str(rootfs), "-cf", str(archive), "."], timeout=600)
        _checked([engine.name, "import", str(archive), tag], env=engine.env, timeout=600)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def base_image(engine: Engine) -> str:
    """``python:3.11-slim`` when present or pullable, else a Debian bookworm image built here."""
    for image in (REGISTRY_BASE_IMAGE, LOCAL_BASE_IMAGE):
        if engine.image_exists(image):
            return image
    if engine.run("pull", REGISTRY_BASE_IMAGE, timeout=600).returncode == 0:
        return REGISTRY_BASE_IMAGE
    _debootstrap_base(engine, LOCAL_BASE_IMAGE)
    return LOCAL_BASE_IMAGE


def build_image(engine: Engine, source: Path, base: str, tag: str = IMAGE) -> None:
    """``docker build --build-arg BASE_IMAGE=base -t tag source``."""
    _checked(
        [engine.name, "build", "--build-arg", f"BASE_IMAGE={base}", "-t", tag, str(source)],
        env=engine.env,
        timeout=1800,
    )


def check_engine_runs(engine: Engine, image: str) -> None:
    """A container starts at all (cgroups, runtime and ulimits allow it)."""
    probe = engine.run("run", "--rm", image, "python3", "-c", "pass", timeout=300)
    if probe.returncode != 0:
        raise ContainersUnavailable(
            f"{engine.name} cannot start a container here: {probe.stderr.strip()[-800:]}"
        )


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Submission:
    run_id: int
    status: str
    log: Path


class ComposeStack:
    """The committed docker-compose.yml, copied to ``directory`` and run as project ``project``."""

    def __init__(self, engine: Engine, directory: Path, project: str) -> None:
        self.engine = engine
        self.directory = directory
        self.project = project

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return _checked(
            [*self.engine.compose, "-p", self.project, *args],
            env=self.engine.env,
            cwd=self.directory,
            timeout=timeout,
        )

    def prepare(self, source: Path, num_nodes: int = COMPOSE_NODES) -> None:
        """The compose file and ``deploy/`` beside it, then ``deploy/generate-certs.sh``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / "docker-compose.yml", self.directory / "docker-compose.yml")
        shutil.copytree(source / "deploy", self.directory / "deploy", dirs_exist_ok=True)
        shutil.rmtree(self.directory / "deploy" / "certs", ignore_errors=True)
        env = os.environ.copy()
        env["PATH"] = str(Path(flower_command("flwr")).parent) + os.pathsep + env["PATH"]
        _checked(
            ["bash", "deploy/generate-certs.sh", str(num_nodes)],
            env=env,
            cwd=self.directory,
            timeout=120,
        )

    def up(self) -> None:
        if _port_in_use(SUPERLINK_PORT):
            raise RuntimeError(
                f"port {SUPERLINK_PORT} is taken (a SuperLink from an earlier run?); "
                "the compose file publishes the SuperLink there"
            )
        self.compose("up", "-d")

    def stop(self, service: str) -> None:
        self.compose("stop", service)

    def logs(self, service: str) -> str:
        return self.compose("logs", "--no-color", service, timeout=120).stdout

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans")

    def submit(
        self,
        app: Path,
        run_config: str,
        on_line: Callable[[str], None] | None = None,
    ) -> Submission:
        """``flwr run APP gcfl-deploy --stream --run-config ...`` with the stack's FLWR_HOME."""
        env = os.environ.copy()
        env["FLWR_HOME"] = str(self.directory / "deploy" / "host-flwr-home")
        env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
        log = self.directory / f"flwr-run-{time.time_ns()}.log"
        command = [flower_command("flwr"), "run", str(app), CONNECTION_NAME, "--stream"]
        run_id = stream_flwr_run(
            [*command, "--run-config", run_config], env, log, on_line, CONNECTION_NAME
        ).run_id
        return Submission(run_id, run_status(env, CONNECTION_NAME, run_id), log)

    def leftovers(self) -> list[str]:
        """Containers, networks and volumes of this project that still exist."""
        label = f"label=com.docker.compose.project={self.project}"
        found = []
        for kind, listing in (
            ("container", ["ps", "-a", "--filter", label, "--format", "{{.Names}}"]),
            ("network", ["network", "ls", "--format", "{{.Name}}"]),
            ("volume", ["volume", "ls", "--format", "{{.Name}}"]),
        ):
            result = self.engine.run(*listing, timeout=60)
            if result.returncode != 0:
                found.append(f"{kind}s: listing failed: {result.stderr.strip()}")
                continue
            found += [
                f"{kind} {name}"
                for name in result.stdout.split()
                if kind == "container" or name.startswith(f"{self.project}_")
            ]
        return found
