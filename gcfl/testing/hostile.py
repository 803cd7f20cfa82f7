"""A ClientApp in which chosen nodes misbehave: to show that the server holds against them.

Name it as the clientapp of a simulation (``simulate(..., client_app=CLIENT_APP)``)
and say which partitions misbehave, and how, in the environment variable
``GCFL_HOSTILE`` of the process that starts the SuperLink (Flower's
simulation hands that environment to every client): ``"3:nan-weights,5:stall"``.
Every other node is gcfl's honest client. Each case trains honestly first
where it needs to, then breaks exactly one part of the contract
(:mod:`gcfl.protocol`), so the server's refusal is of that part alone.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import numpy as np
from flwr.client import Client, ClientApp
from flwr.common import Config, Context, NDArrays, Scalar

from gcfl.client.client import GcflClient
from gcfl.config import GcflConfig, config_of
from gcfl.protocol import (
    BATCH_SIZE,
    LOSS_FIELDS,
    LR,
    NUM_PARTITIONS,
    PARTITION_ID,
    STATUS,
    FitInstruction,
)

ENV_VAR = "GCFL_HOSTILE"
CLIENT_APP = "gcfl.testing.hostile:app"
STALL_MARGIN_S = 5.0  # past the round's deadline, yet short: the actor is needed again

FitReply = tuple[NDArrays, int, dict[str, Scalar]]


def _raise(reply: FitReply, instruction: FitInstruction, client: GcflClient) -> FitReply:
    raise RuntimeError(f"hostile client {client.partition_id} raises in fit")


def _missing_metrics(reply: FitReply, *_: object) -> FitReply:
    return reply[0], reply[1], {}


def _garbage_metrics(reply: FitReply, *_: object) -> FitReply:
    metrics = dict(reply[2])
    metrics.update({LR: "fast", BATCH_SIZE: "big", STATUS: "great"})
    return reply[0], reply[1], metrics


def _nan_metrics(reply: FitReply, *_: object) -> FitReply:
    metrics = dict(reply[2])
    metrics.update({key: math.nan for key in LOSS_FIELDS.values()})
    return reply[0], reply[1], metrics


def _out_of_space(reply: FitReply, *_: object) -> FitReply:
    return reply[0], reply[1], {**reply[2], LR: 1e9, BATCH_SIZE: 10**9}


def _claims_lr(reply: FitReply, instruction: FitInstruction, _: object) -> FitReply:
    # Inside the search space, just not what was assigned (nor a grid point).
    lr = instruction.lr * 1.7 if instruction.lr else 0.0123
    return reply[0], reply[1], {**reply[2], LR: lr}


def _claims_batch(reply: FitReply, instruction: FitInstruction, _: object) -> FitReply:
    batch = instruction.batch_size + 1 if instruction.batch_size else 17
    return reply[0], reply[1], {**reply[2], BATCH_SIZE: batch}


def _weights(change: Callable[[NDArrays], NDArrays]) -> Callable[..., FitReply]:
    def case(reply: FitReply, *_: object) -> FitReply:
        return change(reply[0]), reply[1], reply[2]

    return case


def _examples(count: int) -> Callable[..., FitReply]:
    def case(reply: FitReply, *_: object) -> FitReply:
        return reply[0], count, reply[2]

    return case


def _poisoned(value: float) -> Callable[[NDArrays], NDArrays]:
    def change(weights: NDArrays) -> NDArrays:
        broken = [w.copy() for w in weights]
        if broken:  # a diverged fit returns none, and is refused as diverged already
            broken[0].flat[0] = value
        return broken

    return change


CASES: dict[str, Callable[..., FitReply]] = {
    "raises": _raise,
    "stall": lambda reply, *_: reply,  # the sleep happens before the reply, see fit
    "missing-metrics": _missing_metrics,
    "garbage-metrics": _garbage_metrics,
    "nan-metrics": _nan_metrics,
    "out-of-space": _out_of_space,
    "claims-lr": _claims_lr,
    "claims-batch": _claims_batch,
    "nan-weights": _weights(_poisoned(math.nan)),
    "inf-weights": _weights(_poisoned(math.inf)),
    "huge-weights": _weights(lambda ws: [w * np.float32(1e6) for w in ws]),
    "wrong-shape-weights": _weights(lambda ws: [w.reshape(-1) for w in ws]),
    "zero-examples": _examples(0),
    "negative-examples": _examples(-5),
}


def parse_hostile(text: str) -> dict[int, str]:
    """``"3:nan-weights,5:stall"`` as {partition id: case}; unknown cases are an error."""
    cases: dict[int, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        partition, _, case = item.partition(":")
        if case not in CASES:
            raise ValueError(f"{ENV_VAR}: unknown case {case!r}; cases: {', '.join(CASES)}")
        cases[int(partition)] = case
    return cases


class HostileClient(GcflClient):
    """gcfl's client, but its fit replies break the contract as ``case`` says."""

    def __init__(
        self, partition_id: int, num_partitions: int, config: GcflConfig, case: str
    ) -> None:
        super().__init__(partition_id, num_partitions, config)
        self.case = case

    def fit(self, parameters: NDArrays, config: Config) -> FitReply:
        instruction = FitInstruction.from_config(config)
        if self.case == "raises":
            return _raise((parameters, 0, {}), instruction, self)
        if self.case == "stall":
            time.sleep(self.config.round_timeout + STALL_MARGIN_S)
        reply = super().fit(parameters, config)
        return CASES[self.case](reply, instruction, self)

    def evaluate(self, parameters: NDArrays, config: Config) -> tuple[float, int, dict]:
        loss, count, metrics = super().evaluate(parameters, config)
        if self.case.endswith("metrics"):
            return math.nan, count, {**metrics, "accuracy": 5.0}
        if self.case.endswith("examples"):
            return loss, 0 if self.case.startswith("zero") else -5, metrics
        return loss, count, metrics


def client_fn(context: Context) -> Client:
    """gcfl's honest client, or a hostile one for the partitions ``GCFL_HOSTILE`` names."""
    config = config_of(context.run_config)
    partition_id = int(context.node_config[PARTITION_ID])
    num_partitions = int(context.node_config[NUM_PARTITIONS])
    case = parse_hostile(os.environ.get(ENV_VAR, "")).get(partition_id)
    if case is None:
        return GcflClient(partition_id, num_partitions, config).to_client()
    return HostileClient(partition_id, num_partitions, config, case).to_client()


app = ClientApp(client_fn=client_fn)
