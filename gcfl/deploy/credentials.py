"""TLS certificates and SuperNode authentication keys for a deployment.

One self-signed CA signs the SuperLink's server certificate (whose names
cover every address it is reached at: ``superlink`` in docker-compose,
``localhost``/127.0.0.1 on one machine, the namespace address with
``--netns``). Each SuperNode gets a P-384 key pair in OpenSSH format: the
private key stays with the node, the public key is registered with the
SuperLink (``flwr supernode register``) before the node connects.

Run as ``python -m gcfl.deploy.credentials DIR --nodes N`` (what
``deploy/generate-certs.sh`` does for docker-compose).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DEFAULT_NAMES = ("superlink", "localhost")
DEFAULT_ADDRESSES = ("127.0.0.1",)
VALID_DAYS = 365


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


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_tls(
    folder: Path,
    names: tuple[str, ...] = DEFAULT_NAMES,
    addresses: tuple[str, ...] = DEFAULT_ADDRESSES,
) -> Credentials:
    """A CA and a SuperLink certificate valid for ``names`` and ``addresses``."""
    folder.mkdir(parents=True, exist_ok=True)
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
    credentials = Credentials(folder)
    credentials.ca_certificate.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    credentials.server_certificate.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(credentials.server_key, _key_pem(server_key))
    return credentials


def create_node_keys(folder: Path, count: int) -> Credentials:
    """One OpenSSH P-384 key pair per SuperNode: ``supernode-<i>`` and ``supernode-<i>.pub``."""
    folder.mkdir(parents=True, exist_ok=True)
    credentials = Credentials(folder)
    for index in range(count):
        key = ec.generate_private_key(ec.SECP384R1())
        _write_private(
            credentials.node_private_key(index),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            ),
        )
        credentials.node_public_key(index).write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            + b"\n"
        )
    return credentials


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create TLS certificates and SuperNode keys.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--name", action="append", default=[], help="extra DNS name")
    parser.add_argument("--address", action="append", default=[], help="extra IP address")
    args = parser.parse_args(argv)
    create_tls(
        args.folder,
        names=(*DEFAULT_NAMES, *args.name),
        addresses=(*DEFAULT_ADDRESSES, *args.address),
    )
    create_node_keys(args.folder, args.nodes)
    print(f"credentials for a SuperLink and {args.nodes} SuperNodes in {args.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
