"""Register SuperNode public keys once the SuperLink answers, with a bounded wait.

docker-compose.yml's ``register-supernodes`` service runs this, so that the
start order does not depend on engine healthchecks (podman without systemd
never runs them): it polls the SuperLink's ``/health`` endpoint until it
answers or ``--wait`` seconds pass, then runs ``flwr supernode register`` for
each key. A key the SuperLink already holds (a restart over kept state) counts
as registered. Exit code 1 with the reason when the SuperLink never answers or
a registration fails.

    python -m gcfl.deploy.register --address superlink:9093 --ca /certs/ca.crt \\
        --connection gcfl-deploy --wait 120 /certs/supernode-0.pub ...
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence

from gcfl.processes import RegistrationError, wait_for_health

ALREADY_REGISTERED = "already in use"


def register_key(public_key: str, connection: str) -> str:
    """Register one key; returns 'registered' or 'already registered'."""
    result = subprocess.run(
        ["flwr", "supernode", "register", public_key, connection],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    if result.returncode == 0:
        return "registered"
    if ALREADY_REGISTERED in output:
        return "already registered"
    raise RegistrationError(f"registering {public_key} failed:\n{output.strip()}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gcfl.deploy.register", description=__doc__)
    parser.add_argument("--address", required=True, help="the SuperLink's HOST:PORT")
    parser.add_argument("--ca", help="CA certificate (TLS); omit for an insecure SuperLink")
    parser.add_argument("--connection", required=True, help="Flower connection name")
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to wait for it")
    parser.add_argument("keys", nargs="+", help="SuperNode public key files")
    args = parser.parse_args(argv)
    try:
        waited = wait_for_health(args.address, args.ca, args.wait)
        print(f"SuperLink at {args.address} answered after {waited:.1f} s", flush=True)
        for key in args.keys:
            print(f"{key}: {register_key(key, args.connection)}", flush=True)
    except RegistrationError as error:
        print(f"gcfl register: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
