"""``gcfl node``: a SuperNode together with its warm training worker, as one process tree.

A container runs one command; this is that command for a SuperNode service:
it starts the training worker on ``--worker-socket``, waits (bounded) until it
answers, then runs the given ``flower-supernode`` command line, which names
the same socket in its ``--node-config``. The SuperNode's exit code is the
node's; SIGTERM (``docker stop``) stops both. A worker that fails to start or
dies later does not stop the node: its ClientApps then train in-process, with
a warning, and this says so in the node's log. The worker gets the node's
allow-list (:class:`~gcfl.worker.WorkerPolicy`: ``--allow-model``,
``--data-dir``, ``--allow-dataset``); by default it trains only gcfl's
built-in model on built-in datasets.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from gcfl.deploy.topology import SUPERNODE_ENVIRONMENT
from gcfl.processes import stop_process_tree
from gcfl.worker import WorkerPolicy, wait_for_worker

WORKER_START_TIMEOUT_S = 120.0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_node(
    worker_socket: str, supernode_command: Sequence[str], policy: WorkerPolicy | None = None
) -> int:
    """Start the worker, then the SuperNode; stop both when the SuperNode ends or on SIGTERM.

    ``policy`` is what the worker may train beyond gcfl's built-ins (None: nothing).
    """
    if not supernode_command:
        raise ValueError("gcfl node: give the flower-supernode command line after '--'")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gcfl.cli",
            "worker",
            "--socket",
            worker_socket,
            *(policy or WorkerPolicy()).to_args(),
        ],
        start_new_session=True,
    )
    supernode = None
    try:
        if not wait_for_worker(worker_socket, WORKER_START_TIMEOUT_S):
            print(
                f"gcfl node: the training worker did not answer at {worker_socket} within "
                f"{WORKER_START_TIMEOUT_S:.0f} s; ClientApps will train in-process",
                file=sys.stderr,
                flush=True,
            )
        env = {**SUPERNODE_ENVIRONMENT, **os.environ}  # set values win
        supernode = subprocess.Popen(list(supernode_command), env=env, start_new_session=True)
        return supernode.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if supernode is not None:
            stop_process_tree(supernode.pid)
        stop_process_tree(worker.pid)
