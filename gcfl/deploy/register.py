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
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

ALREADY_REGISTERED = "already in use"


class RegistrationError(RuntimeError):
    """The SuperLink did not answer in time, or it refused a key."""


def wait_for_health(
    address: str,
    ca_certificate: str | None,
    wait_s: float,
    *,
    poll_s: float = 0.5,
    while_waiting: Callable[[], None] | None = None,
) -> float:
    """Seconds until ``https://address/health`` (http without a CA) answered 200.

    ``while_waiting`` runs before every attempt; it may raise to stop waiting
    (``gcfl deploy`` checks that the SuperLink process it started is alive).
    """
    scheme = "http" if ca_certificate is None else "https"
    context = None if ca_certificate is None else ssl.create_default_context(cafile=ca_certificate)
    started = time.monotonic()
    last_error = "no answer yet"
    while time.monotonic() - started < wait_s:
        if while_waiting is not None:
            while_waiting()
        try:
            with urllib.request.urlopen(
                f"{scheme}://{address}/health", timeout=2, context=context
            ) as reply:
                if reply.status == 200:
                    return time.monotonic() - started
                last_error = f"HTTP {reply.status}"
        except (urllib.error.URLError, OSError) as error:
            last_error = str(getattr(error, "reason", error))
        time.sleep(poll_s)
    raise RegistrationError(
        f"the SuperLink did not answer at {scheme}://{address}/health within {wait_s:g} s "
        f"(last: {last_error})"
    )


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
