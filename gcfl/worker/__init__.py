"""The warm training worker: one long-lived process per SuperNode that trains for its ClientApps.

Flower 1.42 starts a fresh ClientApp process for every message, so without
help every round on every node pays the TensorFlow import and a first traced
fit. The worker pays them once: it imports TensorFlow when it starts, keeps
the process caches (dataset, partitions, compiled model) across runs and
rounds, and trains whenever a ClientApp process on its node asks over a Unix
socket (``worker-socket`` in the node config). A run with another dataset or
model gets its own cache entries, so nothing of one run leaks into another.

What the worker trusts, and what it does not:

* It trusts whoever can connect to ask for training, and nothing more. The
  socket is created mode 0600, so only the node's user (and root) can send a
  request at all.
* It does not trust what a request names. A fit request's run config comes
  from the federation's ServerApp, relayed by the ClientApp; its ``model`` (a
  ``package.module:function`` that would be imported and called) and its
  ``data-dir`` and ``dataset`` (files that would be read, CIFAR-10 batches
  unpickled) are checked against the node's own allow-list,
  :class:`WorkerPolicy`, before anything is imported or read. The node sets it
  (``gcfl worker``/``gcfl node`` flags ``--allow-model``, ``--data-dir``,
  ``--allow-dataset``); by default only gcfl's built-in CNN and built-in
  datasets (scikit-learn's digits, MNIST and CIFAR-10 from Keras' cache or
  download) pass. Anything else is refused with an error reply naming the key,
  the value and the flag that would allow it, and the worker keeps serving.
* It does not trust a message's framing or its sender's pace
  (:mod:`gcfl.worker.framing`): no pickle, at most
  ``MAX_MESSAGE_BYTES`` per message checked before reading, and a deadline
  for the whole request (``REQUEST_TIMEOUT_S``, 30 s) and for sending the
  reply (``REPLY_TIMEOUT_S``). A malformed,
  oversized, stalled or trickling request ends with an error reply and costs
  the worker nothing else: each connection is received in its own thread (at
  most ``MAX_CONNECTIONS`` at once; one more is told the worker is busy), so
  other ClientApps keep being served. Only the training itself is serialised
  by a lock (one Keras model per process: fits never overlap), and a request
  waits for that lock no longer than its own deadline (``deadline-s`` in the
  request), so fits nobody waits for any more are not run.

What the ClientApp does when the worker does not deliver
(:func:`fit_on_worker`, called by ``WorkerBackedClient``):

* No worker takes the request (no socket, nobody listening, the worker busy,
  the connection cut while the round still has time):
  :class:`WorkerUnavailable`; the ClientApp trains in its own process, with a
  warning. Training is deterministic, so the fallback gives the result the
  worker would have.
* The worker took the request but sent no reply within the run's
  ``round-timeout``: :class:`WorkerTimeout`, and the fit fails with that
  reason. It is not retried in process: the server has stopped waiting for
  this reply, and a second training would only answer later still.
* An error while training (bad weights, an injected fault):
  :class:`WorkerFitError`, an error of the fit, reported as such and not
  retried.
* The worker refused what the request names (a model or data outside the
  node's allow-list): :class:`WorkerRefused`, a :class:`WorkerFitError`. Not
  retried in process either: that would run the refused model in the
  ClientApp's process instead.

Run it with ``gcfl worker --socket PATH [--allow-model SPEC] [--data-dir DIR]
[--allow-dataset NPZ]``; ``gcfl node`` starts one beside a SuperNode with the
same flags, and ``gcfl deploy`` and docker-compose.yml do that for every node.
"""

from gcfl.worker.client import fit_on_worker, ping, wait_for_worker
from gcfl.worker.messages import (
    NODE_CONFIG_KEY,
    WorkerFitError,
    WorkerRefused,
    WorkerTimeout,
    WorkerUnavailable,
)
from gcfl.worker.policy import WorkerPolicy, add_policy_arguments, policy_from_args

__all__ = [
    "NODE_CONFIG_KEY",
    "WorkerFitError",
    "WorkerPolicy",
    "WorkerRefused",
    "WorkerTimeout",
    "WorkerUnavailable",
    "add_policy_arguments",
    "fit_on_worker",
    "ping",
    "policy_from_args",
    "wait_for_worker",
]
