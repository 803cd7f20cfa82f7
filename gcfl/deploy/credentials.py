"""TLS certificates and SuperNode authentication keys for a deployment.

One self-signed CA signs the SuperLink's server certificate (whose names
cover every address it is reached at: ``superlink`` in docker-compose,
``localhost``/127.0.0.1 on one machine, the namespace address with
``--netns``). Each SuperNode gets a P-384 key pair in OpenSSH format: the
private key stays with the node, the public key is registered with the
SuperLink (``flwr supernode register``) before the node connects.

Run as ``python -m gcfl.deploy.credentials DIR --nodes N [--force]`` (what
``deploy/generate-certs.sh`` does for docker-compose).

No other user can read a private key at any moment: the folder is 0700, and
every file is born with its final mode (``O_CREAT|O_EXCL``, then ``fchmod``
on the open descriptor before a byte is written) instead of being written
and then chmodded. Nothing already in the folder is replaced unless asked
(``overwrite=True``, ``--force``), and a replacement is renamed into place
whole. POSIX only, like the rest of ``gcfl deploy``.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import secrets
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DEFAULT_NAMES = ("superlink", "localhost")
DEFAULT_ADDRESSES = ("127.0.0.1",)
VALID_DAYS = 365

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
FOLDER_MODE = 0o700
# O_EXCL also refuses a symlink planted at the name; O_NOFOLLOW says so twice where it exists.
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


class ExistingCredentialsError(FileExistsError):
    """A file gcfl would write is already there; it was left as it is."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"{path} already exists; refusing to overwrite it. Delete {path.parent} to start "
            "afresh, or regenerate all its credentials with --force (overwrite=True)"
        )
        self.path = path


class UnsafeFolderError(PermissionError):
    """The credentials folder can be reached by, or belongs to, another user."""

    def __init__(self, folder: Path, reason: str) -> None:
        super().__init__(
            f"{folder} {reason}; private keys must not be kept there. "
            f"Use a folder of your own with mode 0700 (chmod 700 {folder}), and regenerate "
            "any keys that were already in it (--force)"
        )
        self.folder = folder


@dataclass(frozen=True)
class Credentials:
    """Paths of everything a deployment's processes need."""

    folder: Path

    @property
    def ca_certificate(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def server_certificate(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    def node_private_key(self, index: int) -> Path:
        return self.folder / f"supernode-{index}"

    def node_public_key(self, index: int) -> Path:
        return self.folder / f"supernode-{index}.pub"


# name in the folder -> (contents, mode)
Files = Mapping[str, tuple[bytes, int]]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@contextmanager
def _private_folder(folder: Path) -> Iterator[int]:
    """A descriptor of ``folder`` (created 0700 if missing) once it is known to be private.

    Every file is then opened relative to this descriptor, so the folder that was
    checked is the folder written to, whatever is renamed or symlinked meanwhile.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)  # parents hold no keys: usual mode
    try:
        os.mkdir(folder, FOLDER_MODE)
        created = True
    except FileExistsError:
        created = False
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if created:
            # mkdir's mode went through the umask, which may have removed our own bits.
            os.fchmod(descriptor, FOLDER_MODE)
        status = os.fstat(descriptor)
        # An existing folder is refused rather than tightened: gcfl did not create it, so
        # it may be shared on purpose or hold other files, and any key already in it may
        # have been read while it was open; changing its mode silently would hide both.
        if status.st_uid != os.geteuid():
            raise UnsafeFolderError(folder, f"belongs to another user (uid {status.st_uid})")
        if status.st_mode & 0o077:
            raise UnsafeFolderError(
                folder, f"can be entered by other users (mode {status.st_mode & 0o777:04o})"
            )
        yield descriptor
    finally:
        os.close(descriptor)


def _create(folder: int, name: str, data: bytes, mode: int) -> None:
    """``name`` as a new file, with ``mode`` from its first moment; never an existing one."""
    descriptor = os.open(name, _CREATE_FLAGS, mode, dir_fd=folder)
    try:
        # The umask may have narrowed ``mode`` (a public file under umask 077); it can
        # never have widened it, so the file was no more readable than ``mode`` before this.
        os.fchmod(descriptor, mode)
        remaining = memoryview(data)
        while remaining:
            remaining = remaining[os.write(descriptor, remaining) :]
        os.fsync(descriptor)
    except BaseException:
        os.close(descriptor)
        os.unlink(name, dir_fd=folder)  # ours (O_EXCL): no half-written key is left behind
        raise
    os.close(descriptor)


def _refuse_existing(folder: Path, descriptor: int, names: list[str]) -> None:
    # Checked before anything is written, so that a refusal leaves the folder as it was
    # rather than a new certificate beside an old key.
    for name in names:
        try:
            os.stat(name, dir_fd=descriptor, follow_symlinks=False)
        except FileNotFoundError:
            continue
        raise ExistingCredentialsError(folder / name)


def _write_files(folder: Path, files: Files, overwrite: bool) -> None:
    with _private_folder(folder) as descriptor:
        if not overwrite:
            _refuse_existing(folder, descriptor, list(files))
        for name, (data, mode) in files.items():
            if not overwrite:
                try:
                    _create(descriptor, name, data, mode)
                except FileExistsError:  # appeared since the check
                    raise ExistingCredentialsError(folder / name) from None
                continue
            # A new file under a name of its own, renamed over the old one: readers see
            # the old key or the new one, and a symlink at ``name`` is replaced, not followed.
            temporary = f".{name}.{secrets.token_hex(8)}.tmp"
            _create(descriptor, temporary, data, mode)
            try:
                os.replace(temporary, name, src_dir_fd=descriptor, dst_dir_fd=descriptor)
            except BaseException:
                os.unlink(temporary, dir_fd=descriptor)
                raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _tls_files(names: tuple[str, ...], addresses: tuple[str, ...]) -> Files:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("gcfl deployment CA"))
        .issuer_name(_name("gcfl deployment CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    alternative_names = [x509.DNSName(n) for n in names] + [
        x509.IPAddress(ipaddress.ip_address(a)) for a in addresses
    ]
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    # The CA's own key is not kept: nothing is ever signed with it again.
    layout = Credentials(Path())
    return {
        layout.server_key.name: (_key_pem(server_key), PRIVATE_MODE),
        layout.server_certificate.name: (
            server_cert.public_bytes(serialization.Encoding.PEM),
            PUBLIC_MODE,
        ),
        layout.ca_certificate.name: (ca_cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE),
    }


def _node_files(count: int) -> Files:
    layout = Credentials(Path())
    files: dict[str, tuple[bytes, int]] = {}
    for index in range(count):
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = (
            key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            + b"\n"
        )
        files[layout.node_private_key(index).name] = (private, PRIVATE_MODE)
        files[layout.node_public_key(index).name] = (public, PUBLIC_MODE)
    return files


def create_tls(
    folder: Path,
    names: tuple[str, ...] = DEFAULT_NAMES,
    addresses: tuple[str, ...] = DEFAULT_ADDRESSES,
    *,
    overwrite: bool = False,
) -> Credentials:
    """A CA and a SuperLink certificate valid for ``names`` and ``addresses``.

    Raises ExistingCredentialsError, writing nothing, if any of the files is already
    there, unless ``overwrite``; UnsafeFolderError if ``folder`` is not private.
    """
    _write_files(folder, _tls_files(names, addresses), overwrite)
    return Credentials(folder)


def create_node_keys(folder: Path, count: int, *, overwrite: bool = False) -> Credentials:
    """One OpenSSH P-384 key pair per SuperNode: ``supernode-<i>`` and ``supernode-<i>.pub``.

    Existing files and unsafe folders are refused as by ``create_tls``.
    """
    _write_files(folder, _node_files(count), overwrite)
    return Credentials(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create TLS certificates and SuperNode keys.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--name", action="append", default=[], help="extra DNS name")
    parser.add_argument("--address", action="append", default=[], help="extra IP address")
    parser.add_argument(
        "--force", action="store_true", help="replace credentials already in FOLDER"
    )
    args = parser.parse_args(argv)
    files = {
        **_tls_files((*DEFAULT_NAMES, *args.name), (*DEFAULT_ADDRESSES, *args.address)),
        **_node_files(args.nodes),
    }
    try:
        # One set, so that a refusal comes before the certificates are written, not after.
        _write_files(args.folder, files, overwrite=args.force)
    except (ExistingCredentialsError, UnsafeFolderError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"credentials for a SuperLink and {args.nodes} SuperNodes in {args.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
