"""The contract between gcfl's server and its clients: every key of every message, typed.

A client learns its task from a fit instruction (Flower's fit config), answers
with a fit report (Flower's fit metrics, beside the weights and the number of
examples), and may be asked to evaluate (an evaluate report). Before round 1
the server reads each node's description from ``get_properties``. Each type
converts to and from Flower's flat ``{str: scalar}`` dicts; this module is the
only place that spells a key, and it imports neither Flower nor TensorFlow.

Parsing checks form only (keys present, types right, the protocol version);
whether the server believes a well-formed report is the judge's decision
(:mod:`gcfl.strategy.judge`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

# 2: an evaluate request carries one or more candidate models and names the split.
PROTOCOL_VERSION = 2

Scalar = bool | int | float | str | bytes
FitStatus = Literal["ok", "diverged"]
FIT_STATUSES: tuple[FitStatus, ...] = ("ok", "diverged")

# Fit config (server -> client).
ROUND = "server-round"
LR = "lr"
BATCH_SIZE = "batch-size"
SEARCH = "search"
LR_GRID = "lr-grid"
BATCH_GRID = "batch-grid"
# Every message both ways: a client built for another contract is refused, not misread.
VERSION = "gcfl-protocol"
# Fit metrics (client -> server), besides LR, BATCH_SIZE and VERSION.
CLIENT_ID = "client-id"
STATUS = "status"
LOSS_FIELDS = {
    "train_loss": "train-loss",
    "first_loss": "first-loss",
    "val_loss_before": "val-loss-before",
    "val_loss": "val-loss",
    "val_accuracy": "val-accuracy",
    "local_loss_before": "local-loss-before",
    "local_loss_after": "local-loss-after",
}
# Evaluate config (server -> client), besides ROUND and VERSION.
CANDIDATES = "candidates"
EVAL_SPLIT = "eval-split"
EvalSplit = Literal["val", "local"]
EVAL_SPLITS: tuple[EvalSplit, ...] = ("val", "local")
# The most models one evaluate request may carry: a bound on what a client unpacks.
MAX_CANDIDATES = 64
# Evaluate metrics (client -> server), besides CLIENT_ID and VERSION.
ACCURACY = "accuracy"
CANDIDATE_LOSS = "candidate-loss-"  # + the candidate's index: one loss per model received
# Node properties (client -> server, before round 1).
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
NUM_EXAMPLES = "num-examples"


# A ClientApp that gives up on its own call past the round's deadline says so with this
# phrase in its error; the server records such a client as timed-out, not failed.
ABANDONED_CALL = "did not return within"


class ProtocolError(ValueError):
    """A message that does not follow the contract; the text says which key and why."""


def _get(message: Mapping[str, Any], key: str) -> Any:
    try:
        return message[key]
    except KeyError:
        raise ProtocolError(f"{key} is missing") from None


def _integer(message: Mapping[str, Any], key: str) -> int:
    value = _get(message, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{key} {value!r} is not an integer")
    return value


def _number(message: Mapping[str, Any], key: str) -> float:
    """A float (NaN and infinity pass: whether they are acceptable is the judge's call)."""
    value = _get(message, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"{key} {value!r} is not a number")
    return float(value)


def _check_version(message: Mapping[str, Any]) -> None:
    version = _get(message, VERSION)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"{VERSION} {version!r}: this server speaks version {PROTOCOL_VERSION}")


def _grid(text: Any, kind: type, key: str) -> tuple[Any, ...]:
    if not isinstance(text, str):
        raise ProtocolError(f"{key} {text!r} is not a comma-separated list")
    try:
        return tuple(kind(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise ProtocolError(f"{key} {text!r} is not a list of {kind.__name__}s") from None


@dataclass(frozen=True)
class TrainInstruction:
    """Train with the pair the server assigned: the usual fit of a round."""

    server_round: int
    lr: float
    batch_size: int

    def to_config(self) -> dict[str, Scalar]:
        return {
            VERSION: PROTOCOL_VERSION,
            ROUND: self.server_round,
            LR: float(self.lr),
            BATCH_SIZE: int(self.batch_size),
        }


@dataclass(frozen=True)
class SearchInstruction:
    """Search for a pair (``init=search``): try pairs from ``lr_grid`` x ``batch_grid`` and
    report the one kept."""

    server_round: int
    lr_grid: tuple[float, ...]
    batch_grid: tuple[int, ...]

    def to_config(self) -> dict[str, Scalar]:
        return {
            VERSION: PROTOCOL_VERSION,
            ROUND: self.server_round,
            SEARCH: True,
            LR_GRID: ",".join(repr(float(lr)) for lr in self.lr_grid),
            BATCH_GRID: ",".join(str(int(b)) for b in self.batch_grid),
        }


# What the server asks of one client in one round: one of the two kinds.
FitInstruction = TrainInstruction | SearchInstruction


def fit_instruction_from_config(config: Mapping[str, Any]) -> FitInstruction:
    """The fit instruction in a fit config, of the kind its ``search`` key names."""
    _check_version(config)
    server_round = _integer(config, ROUND)
    if config.get(SEARCH, False) is True:
        lr_grid = _grid(_get(config, LR_GRID), float, LR_GRID)
        batch_grid = _grid(_get(config, BATCH_GRID), int, BATCH_GRID)
        if not lr_grid or not batch_grid:
            raise ProtocolError("a search request needs a non-empty lr-grid and batch-grid")
        return SearchInstruction(server_round, lr_grid, batch_grid)
    lr, batch_size = _number(config, LR), _integer(config, BATCH_SIZE)
    if not (math.isfinite(lr) and lr > 0) or batch_size < 1:
        raise ProtocolError(f"lr {lr!r} and batch-size {batch_size!r} must be positive")
    return TrainInstruction(server_round, lr, batch_size)


@dataclass(frozen=True)
class FitReport:
    """What a client says of its fit. Losses may be NaN (not measured, or diverged)."""

    client_id: int
    lr: float
    batch_size: int
    status: FitStatus
    train_loss: float = math.nan
    first_loss: float = math.nan
    val_loss_before: float = math.nan
    val_loss: float = math.nan
    val_accuracy: float = math.nan
    local_loss_before: float = math.nan
    local_loss_after: float = math.nan

    def to_metrics(self) -> dict[str, Scalar]:
        metrics: dict[str, Scalar] = {
            VERSION: PROTOCOL_VERSION,
            CLIENT_ID: self.client_id,
            LR: float(self.lr),
            BATCH_SIZE: int(self.batch_size),
            STATUS: self.status,
        }
        for name, key in LOSS_FIELDS.items():
            value = float(getattr(self, name))
            # Metrics travel as protobuf doubles; inf passes but is sent as NaN, meaning "none".
            metrics[key] = value if math.isfinite(value) else math.nan
        return metrics

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> FitReport:
        _check_version(metrics)
        status = _get(metrics, STATUS)
        if status not in FIT_STATUSES:
            raise ProtocolError(f"{STATUS} {status!r} is not one of {', '.join(FIT_STATUSES)}")
        return cls(
            client_id=_integer(metrics, CLIENT_ID),
            lr=_number(metrics, LR),
            batch_size=_integer(metrics, BATCH_SIZE),
            status=status,
            **{name: _number(metrics, key) for name, key in LOSS_FIELDS.items()},
        )


@dataclass(frozen=True)
class EvaluateInstruction:
    """What the server asks of an evaluating client: the loss of each model it sends.

    The request's arrays are ``candidates`` models, one after another, each
    with the global model's arrays. ``split`` names the examples: ``"val"``
    (the client's validation split: the federated evaluation of the global
    model) or ``"local"`` (all its examples: the federated fitness, where
    every candidate is compared with the others on the same examples).
    """

    server_round: int
    candidates: int = 1
    split: EvalSplit = "val"

    def to_config(self) -> dict[str, Scalar]:
        return {
            VERSION: PROTOCOL_VERSION,
            ROUND: self.server_round,
            CANDIDATES: self.candidates,
            EVAL_SPLIT: self.split,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EvaluateInstruction:
        _check_version(config)
        candidates = _integer(config, CANDIDATES)
        if not 1 <= candidates <= MAX_CANDIDATES:
            raise ProtocolError(f"{CANDIDATES} {candidates} is outside 1..{MAX_CANDIDATES}")
        split = _get(config, EVAL_SPLIT)
        if split not in EVAL_SPLITS:
            raise ProtocolError(f"{EVAL_SPLIT} {split!r} is not one of {', '.join(EVAL_SPLITS)}")
        return cls(_integer(config, ROUND), candidates, split)


@dataclass(frozen=True)
class EvaluateReport:
    """A client's evaluation of the models it was sent: only scalars leave the client.

    ``loss`` and ``accuracy`` are the first model's; ``losses`` holds every
    model's loss in the order received (the first's included), on the same
    examples, so the server can compare candidates pair by pair.
    """

    client_id: int
    loss: float
    accuracy: float
    losses: tuple[float, ...] = ()

    def to_metrics(self) -> dict[str, Scalar]:
        metrics: dict[str, Scalar] = {
            VERSION: PROTOCOL_VERSION,
            CLIENT_ID: self.client_id,
            ACCURACY: float(self.accuracy),
            CANDIDATES: len(self.losses) or 1,
        }
        for index, value in enumerate(self.losses):
            metrics[f"{CANDIDATE_LOSS}{index}"] = float(value)
        return metrics

    @classmethod
    def from_reply(cls, loss: Any, metrics: Mapping[str, Any]) -> EvaluateReport:
        """The report from Flower's ``EvaluateRes`` loss and metrics."""
        _check_version(metrics)
        if isinstance(loss, bool) or not isinstance(loss, (int, float)):
            raise ProtocolError(f"loss {loss!r} is not a number")
        count = _integer(metrics, CANDIDATES)
        if not 1 <= count <= MAX_CANDIDATES:
            raise ProtocolError(f"{CANDIDATES} {count} is outside 1..{MAX_CANDIDATES}")
        # A single model's report may leave its loss to Flower's ``loss`` field alone.
        single = count == 1 and f"{CANDIDATE_LOSS}0" not in metrics
        losses = (
            () if single else tuple(_number(metrics, f"{CANDIDATE_LOSS}{i}") for i in range(count))
        )
        return cls(_integer(metrics, CLIENT_ID), float(loss), _number(metrics, ACCURACY), losses)


def evaluate_config(server_round: int) -> dict[str, Scalar]:
    """The config of a request to evaluate the global model on the validation split."""
    return EvaluateInstruction(server_round).to_config()


@dataclass(frozen=True)
class PropertiesRequest:
    """The server's question before round 1: describe yourself (the node's partition, its size)."""

    def to_config(self) -> dict[str, Scalar]:
        return {VERSION: PROTOCOL_VERSION}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PropertiesRequest:
        _check_version(config)
        return cls()


@dataclass(frozen=True)
class NodeInfo:
    """A node's description of itself: which partition it holds and how many examples."""

    partition_id: int
    num_partitions: int
    num_examples: int

    def to_properties(self) -> dict[str, Scalar]:
        return {
            VERSION: PROTOCOL_VERSION,
            PARTITION_ID: self.partition_id,
            NUM_PARTITIONS: self.num_partitions,
            NUM_EXAMPLES: self.num_examples,
        }

    @classmethod
    def from_properties(cls, properties: Mapping[str, Any]) -> NodeInfo:
        _check_version(properties)
        info = cls(
            _integer(properties, PARTITION_ID),
            _integer(properties, NUM_PARTITIONS),
            _integer(properties, NUM_EXAMPLES),
        )
        if not 0 <= info.partition_id < info.num_partitions:
            raise ProtocolError(
                f"{PARTITION_ID} {info.partition_id} is outside 0..{info.num_partitions - 1}"
            )
        if info.num_examples < 1:
            raise ProtocolError(f"{NUM_EXAMPLES} {info.num_examples} must be >= 1")
        return info
