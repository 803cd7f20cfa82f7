"""Private keys are never readable by other users, and never replaced silently.

Every test runs under umask 022, the usual default, under which a file written
plainly is readable by everyone.
"""

import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gcfl.deploy import credentials
from gcfl.deploy.credentials import (
    ExistingCredentialsError,
    UnsafeFolderError,
    create_node_keys,
    create_tls,
)

ROOT = Path(__file__).resolve().parents[1]
NODES = 3
PRIVATE = ["server.key", *(f"supernode-{i}" for i in range(NODES))]
PUBLIC = ["ca.crt", "server.pem", *(f"supernode-{i}.pub" for i in range(NODES))]


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def create_all(folder: Path, *, overwrite: bool = False) -> None:
    create_tls(folder, overwrite=overwrite)
    create_node_keys(folder, NODES, overwrite=overwrite)


def contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_keys_are_0600_public_files_0644_and_the_folder_0700(tmp_path):
    folder = tmp_path / "nested" / "certs"
    create_all(folder)
    assert mode(folder) == 0o700
    assert sorted(p.name for p in folder.iterdir()) == sorted(PRIVATE + PUBLIC)
    assert {name: mode(folder / name) for name in PRIVATE} == dict.fromkeys(PRIVATE, 0o600)
    assert {name: mode(folder / name) for name in PUBLIC} == dict.fromkeys(PUBLIC, 0o644)


@pytest.mark.parametrize("umask", [0o077, 0o277], ids=["umask-077", "umask-277"])
def test_modes_are_exact_whatever_the_umask(tmp_path, umask):
    # 077 would leave certificates unreadable to the containers' other users, 277 would
    # leave the folder unwritable to gcfl itself: the modes are set, not left to the umask.
    os.umask(umask)
    folder = tmp_path / "certs"
    create_all(folder)
    assert mode(folder) == 0o700
    assert all(mode(folder / name) == 0o600 for name in PRIVATE)
    assert all(mode(folder / name) == 0o644 for name in PUBLIC)


def test_a_key_is_0600_from_the_moment_it_exists(tmp_path, monkeypatch):
    opened: dict[int, str] = {}
    creations: list[tuple[str, int, int]] = []
    modes_while_written: dict[str, set[int]] = {}
    real_open, real_write = os.open, os.write

    def recording_open(path, flags, mode=0o777, *, dir_fd=None):
        descriptor = real_open(path, flags, mode, dir_fd=dir_fd)
        if flags & os.O_CREAT:
            name = os.path.basename(path)
            opened[descriptor] = name
            creations.append((name, flags, mode))
        return descriptor

    def checking_write(descriptor, data):
        if descriptor in opened:
            status = os.fstat(descriptor)
            modes_while_written.setdefault(opened[descriptor], set()).add(
                stat.S_IMODE(status.st_mode)
            )
        return real_write(descriptor, data)

    def no_chmod(*args, **kwargs):
        raise AssertionError("a credential is chmodded after it was created")

    monkeypatch.setattr(os, "open", recording_open)
    monkeypatch.setattr(os, "write", checking_write)
    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    create_all(tmp_path / "certs")

    created = {name: (flags, mode) for name, flags, mode in creations}
    exclusive = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    for name in PRIVATE:
        flags, creation_mode = created[name]
        assert flags & exclusive == exclusive, name
        assert creation_mode == 0o600, name
        assert modes_while_written[name] == {0o600}, name
    assert set(created) == set(PRIVATE + PUBLIC)  # nothing written any other way


def test_an_existing_key_is_not_overwritten_and_the_error_names_it(tmp_path):
    folder = tmp_path / "certs"
    create_all(folder)
    before = contents(folder)
    with pytest.raises(
        ExistingCredentialsError, match=re.escape(str(folder / "server.key"))
    ) as refusal:
        create_tls(folder)
    assert refusal.value.path == folder / "server.key"
    with pytest.raises(ExistingCredentialsError, match=re.escape(str(folder / "supernode-0"))):
        create_node_keys(folder, NODES)
    assert contents(folder) == before


def test_a_refusal_writes_nothing_at_all(tmp_path):
    # A new certificate beside the old key would be a broken set: all or nothing.
    folder = tmp_path / "certs"
    folder.mkdir(mode=0o700)
    (folder / "server.pem").write_bytes(b"someone's certificate")
    with pytest.raises(ExistingCredentialsError, match=re.escape(str(folder / "server.pem"))):
        create_tls(folder)
    assert contents(folder) == {"server.pem": b"someone's certificate"}


def test_overwrite_replaces_every_file_whole_and_private(tmp_path):
    folder = tmp_path / "certs"
    create_all(folder)
    before = contents(folder)
    create_all(folder, overwrite=True)
    after = contents(folder)
    assert set(after) == set(before)  # no temporary file left behind
    assert all(after[name] != before[name] for name in PRIVATE)
    assert all(mode(folder / name) == 0o600 for name in PRIVATE)
    assert all(mode(folder / name) == 0o644 for name in PUBLIC)
    key = serialization.load_ssh_private_key(after["supernode-1"], None)
    assert key.public_key() == serialization.load_ssh_public_key(after["supernode-1.pub"])


@pytest.mark.parametrize("target_exists", [False, True])
def test_a_symlink_planted_at_a_key_path_is_refused(tmp_path, target_exists):
    folder = tmp_path / "certs"
    folder.mkdir(mode=0o700)
    target = tmp_path / "stolen"
    if target_exists:
        target.write_bytes(b"victim")
    (folder / "server.key").symlink_to(target)
    with pytest.raises(ExistingCredentialsError, match=re.escape(str(folder / "server.key"))):
        create_tls(folder)
    assert (target.read_bytes() == b"victim") if target_exists else not target.exists()


def test_a_symlink_planted_after_the_check_is_refused_by_open(tmp_path):
    # The race the up-front check cannot close: O_EXCL (and O_NOFOLLOW) at open time.
    target = tmp_path / "stolen"
    folder = tmp_path / "certs"
    folder.mkdir(mode=0o700)
    (folder / "server.key").symlink_to(target)
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            credentials._create(descriptor, "server.key", b"secret", 0o600)
    finally:
        os.close(descriptor)
    assert not target.exists()
    assert (folder / "server.key").is_symlink()


def test_overwrite_replaces_a_planted_symlink_without_following_it(tmp_path):
    folder = tmp_path / "certs"
    folder.mkdir(mode=0o700)
    target = tmp_path / "stolen"
    target.write_bytes(b"victim")
    (folder / "server.key").symlink_to(target)
    create_tls(folder, overwrite=True)
    assert target.read_bytes() == b"victim"
    assert not (folder / "server.key").is_symlink()
    assert mode(folder / "server.key") == 0o600


def test_a_folder_others_can_enter_is_refused_untouched(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o755)
    with pytest.raises(
        UnsafeFolderError, match=re.escape(f"{folder} can be entered by other users")
    ):
        create_tls(folder)
    assert list(folder.iterdir()) == []
    assert mode(folder) == 0o755


def test_the_command_refuses_without_force_and_replaces_with_it(tmp_path, capsys):
    folder = tmp_path / "certs"
    assert credentials.main([str(folder), "--nodes", "2"]) == 0
    before = contents(folder)
    assert credentials.main([str(folder), "--nodes", "2"]) == 1
    error = capsys.readouterr().err
    assert str(folder / "server.key") in error and "--force" in error
    assert contents(folder) == before
    assert credentials.main([str(folder), "--nodes", "2", "--force"]) == 0
    assert contents(folder)["server.key"] != before["server.key"]


# deploy/generate-certs.sh


@pytest.fixture
def script_checkout(tmp_path: Path) -> Path:
    """The script where it expects to be, beside the gcfl it runs (the one under test)."""
    (tmp_path / "deploy").mkdir()
    shutil.copy(ROOT / "deploy" / "generate-certs.sh", tmp_path / "deploy")
    (tmp_path / "gcfl").symlink_to(ROOT / "gcfl")
    return tmp_path


def generate(checkout: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("bash") is None:
        pytest.skip("deploy/generate-certs.sh needs bash")
    return subprocess.run(
        ["bash", "deploy/generate-certs.sh", *args],
        cwd=checkout,
        capture_output=True,
        text=True,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
        timeout=120,
    )


def test_the_script_creates_private_keys_in_private_folders(script_checkout):
    run = generate(script_checkout, str(NODES))
    assert run.returncode == 0, run.stderr
    certs = script_checkout / "deploy" / "certs"
    assert sorted(p.name for p in certs.iterdir()) == sorted(PRIVATE + PUBLIC)
    for folder in ("deploy/certs", "deploy/host-flwr-home", "results"):
        assert mode(script_checkout / folder) == 0o700, folder
    assert {name: mode(certs / name) for name in PRIVATE} == dict.fromkeys(PRIVATE, 0o600)
    assert {name: mode(certs / name) for name in PUBLIC} == dict.fromkeys(PUBLIC, 0o644)
    assert mode(script_checkout / "deploy/host-flwr-home/config.toml") == 0o644


def test_the_script_refuses_to_replace_keys_without_force(script_checkout):
    assert generate(script_checkout, str(NODES)).returncode == 0
    certs = script_checkout / "deploy" / "certs"
    before = contents(certs)

    refused = generate(script_checkout, str(NODES))
    assert refused.returncode != 0
    assert "deploy/certs/server.key already exists" in refused.stderr
    assert "--force" in refused.stderr
    assert contents(certs) == before  # byte for byte

    forced = generate(script_checkout, "--force", str(NODES))
    assert forced.returncode == 0, forced.stderr
    after = contents(certs)
    assert set(after) == set(before)
    assert all(after[name] != before[name] for name in [*PRIVATE, "ca.crt", "server.pem"])
    assert all(mode(certs / name) == 0o600 for name in PRIVATE)
    assert mode(certs) == 0o700
