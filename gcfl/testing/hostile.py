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
from gcfl.client.client_app import with_deadline
from gcfl.config import GcflConfig, config_of
from gcfl.data import ClientData, load_dataset
from gcfl.protocol import (
    ACCURACY,
    BATCH_SIZE,
    LOSS_FIELDS,
    LR,
    NUM_PARTITIONS,
    PARTITION_ID,
    STATUS,
    FitInstruction,
    TrainInstruction,
    fit_instruction_from_config,
)

ENV_VAR = "GCFL_HOSTILE"
CLIENT_APP = "gcfl.testing.hostile:app"
STALL_MARGIN_S = 5.0  # past the round's deadline, yet short: the actor is needed again
HANG_S = 3600.0  # a client that hangs for good, as far as any run here is concerned

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
    lr = instruction.lr * 1.7 if isinstance(instruction, TrainInstruction) else 0.0123
    return reply[0], reply[1], {**reply[2], LR: lr}


def _claims_batch(reply: FitReply, instruction: FitInstruction, _: object) -> FitReply:
    batch = instruction.batch_size + 1 if isinstance(instruction, TrainInstruction) else 17
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


# Well-formed poison: replies that pass every edge check, built to steer the model.
# Each stays just inside max-update-norm (this share of it), the largest move the server accepts.
POISON_NORM_SHARE = 0.9


def _at_accepted_norm(
    global_weights: NDArrays, direction: NDArrays, config: GcflConfig
) -> NDArrays:
    """``global + d``, with ``d`` along ``direction`` at 0.9 x the largest accepted move."""
    scale = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in global_weights))
    length = math.sqrt(sum(float(np.sum(np.square(d, dtype=np.float64))) for d in direction))
    factor = POISON_NORM_SHARE * config.max_update_norm * scale / length if length > 0 else 0.0
    return [
        (g + factor * d).astype(g.dtype) for g, d in zip(global_weights, direction, strict=True)
    ]


def _sign_flip(
    reply: FitReply, parameters: NDArrays, client: GcflClient, server_round: int
) -> FitReply:
    """The honest fit's move, reversed: the old model minus its update."""
    if not reply[0]:
        return reply
    direction = [g - w for w, g in zip(reply[0], parameters, strict=True)]
    return _at_accepted_norm(parameters, direction, client.config), reply[1], reply[2]


def _noise(
    reply: FitReply, parameters: NDArrays, client: GcflClient, server_round: int
) -> FitReply:
    """Random noise of the same length as the sign flip's, drawn anew each round."""
    if not reply[0]:
        return reply
    rng = np.random.default_rng([client.config.seed, client.partition_id, server_round])
    direction = [rng.normal(size=g.shape).astype(np.float32) for g in parameters]
    return _at_accepted_norm(parameters, direction, client.config), reply[1], reply[2]


POISON: dict[str, Callable[[FitReply, NDArrays, GcflClient, int], FitReply]] = {
    "sign-flip": _sign_flip,
    "noise": _noise,
    "label-flip": lambda reply, *_: reply,  # the labels are permuted before training, see _data
}


CASES: dict[str, Callable[..., FitReply]] = {
    "raises": _raise,
    "stall": lambda reply, *_: reply,  # the sleep happens before the reply, see fit
    "hang": lambda reply, *_: reply,  # the same, for an hour
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
    **{name: (lambda reply, *_: reply) for name in POISON},  # applied in fit, see HostileClient
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

    def _data(self) -> ClientData:
        data = super()._data()
        if self.case != "label-flip":
            return data
        # Trains and reports on labels shifted by one class: every metric it sends is
        # honest about the data it holds, and its update teaches the model wrong labels.
        cfg = self.config
        classes = load_dataset(cfg.dataset, cfg.data_dir, cfg.seed).num_classes
        return ClientData(
            data.x_train, (data.y_train + 1) % classes, data.x_val, (data.y_val + 1) % classes
        )

    def fit(self, parameters: NDArrays, config: Config) -> FitReply:
        if self.case in POISON:
            reply = super().fit(parameters, config)
            server_round = fit_instruction_from_config(config).server_round
            return POISON[self.case](reply, parameters, self, server_round)
        instruction = fit_instruction_from_config(config)
        if self.case == "raises":
            return _raise((parameters, 0, {}), instruction, self)
        if self.case == "stall":
            time.sleep(self.config.round_timeout + STALL_MARGIN_S)
        if self.case == "hang":
            time.sleep(HANG_S)
        reply = super().fit(parameters, config)
        return CASES[self.case](reply, instruction, self)

    def evaluate(self, parameters: NDArrays, config: Config) -> tuple[float, int, dict]:
        loss, count, metrics = super().evaluate(parameters, config)
        if self.case.endswith("metrics"):
            return math.nan, count, {**metrics, ACCURACY: 5.0}
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
        client = GcflClient(partition_id, num_partitions, config)
    else:
        client = HostileClient(partition_id, num_partitions, config, case)
    # As gcfl's own ClientApp: a hung call must not hold the process for good.
    return with_deadline(client.to_client(), config, partition_id, context.run_id)


app = ClientApp(client_fn=client_fn)
