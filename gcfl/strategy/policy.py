"""The hyperparameter policy's interface, the client state it keeps, and FedAvg's fixed policy.

The :class:`~gcfl.strategy.coordinator.Coordinator` asks its policy for each
sampled client's pair when it configures a fit (``assignment``) and hands it
the round's reports once they are in (``step``, or ``record`` then
``evolve`` when the fitness comes later).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gcfl.names import Outcome
from gcfl.strategy.genetic import Hyperparameters

Status = Outcome  # the fit's outcome, as the judge named it
# Clients whose pair the server knows after the round, and who therefore evolve;
# a failed or timed-out client keeps its state and waits to be sampled again.
TRAINED: frozenset[str] = frozenset({"ok", "diverged", "refused"})


@dataclass(frozen=True)
class Report:
    """What one sampled client's fit produced in a round, as the server accepted it.

    ``status``: "ok" (update aggregated), "diverged" (the client said so),
    "refused" (the server rejected the reply), "failed" (an error instead of
    a reply) or "timed-out" (no reply by the round's deadline). ``lr`` and
    ``batch_size`` are the pair the server assigned (or, for a search, the grid
    point it accepted); None when the server knows none, never a client's
    unchecked claim. Losses are None unless the reply was accepted.
    ``val_loss_before`` is the client's validation loss of the global model it
    received, ``val_loss`` that of its trained model; ``local_loss_before`` and
    ``local_loss_after`` the same on all its local examples.
    """

    lr: float | None
    batch_size: int | None
    val_loss: float | None
    status: Status
    val_loss_before: float | None = None
    local_loss_before: float | None = None
    local_loss_after: float | None = None


@dataclass
class ClientState:
    """The algorithm's memory of one client, keyed by partition id."""

    lr: float | None
    batch_size: int | None
    val_loss: float | None = None
    status: str = "new"
    cluster: int | None = None
    val_loss_before: float | None = None
    local_loss_before: float | None = None
    local_loss_after: float | None = None
    score: float | None = None
    # What the client last trained with, and in which round: the pairs the
    # population has evidence about (``lr``/``batch_size`` are its next pair).
    trained_round: int | None = None
    trained_lr: float | None = None
    trained_batch_size: int | None = None


@dataclass(frozen=True)
class RoundRules:
    """What the server does with a round's accepted updates besides averaging them.

    The defaults are FedAvg's: every accepted update, averaged by examples.
    ``aggregate`` is the rule that merges them (``mean``, ``guarded``, ...),
    ``clip`` shortens each to that many times the round's median move (0:
    off), ``floor`` and ``share`` keep only the updates whose fitness says
    they moved the model (0 and 1: all), ``federated`` waits for the
    federated fitness before the population evolves.
    """

    aggregate: str = "mean"
    clip: float = 0.0
    floor: float = 0.0
    share: float = 1.0
    federated: bool = False


class HyperparameterPolicy(Protocol):
    """How a strategy picks each client's hyperparameters, round after round."""

    states: dict[int, ClientState]
    migrants: set[int]  # the clients whose next pair the last step bred from the round's best
    rules: RoundRules  # the strategy's rules for the updates; FedAvg's: RoundRules()

    def prepare(self, server_round: int, sampled: list[int]) -> set[int]:
        """Update the pairs of ``sampled`` before their instructions; the clients changed."""

    def assignment(self, client_id: int) -> Hyperparameters | None:
        """The pair ``client_id`` trains with next; None when the client picks (init=search)."""

    def step(self, server_round: int, reports: Mapping[int, Report]) -> dict[int, int]:
        """Take a round's reports; return the cluster of each client that trained."""

    def record(self, server_round: int, reports: Mapping[int, Report]) -> dict[int, int]:
        """The first half of ``step``: store the reports, cluster; the clusters."""

    def evolve(self, labels: Mapping[int, int], scores: Mapping[int, float | None]) -> None:
        """The second half of ``step``, with the scores given (the federated fitness)."""

    def local_scores(self, client_ids: Iterable[int]) -> dict[int, float | None]:
        """Each client's relative improvement of its local loss over its last fit."""


def record_reports(
    states: dict[int, ClientState], server_round: int, reports: Mapping[int, Report]
) -> None:
    """Store what each client trained with and how it did; failed clients keep their state."""
    for client_id, report in reports.items():
        state = states[client_id]
        state.status = report.status
        if report.status in TRAINED:
            if report.lr is not None and report.batch_size is not None:
                state.lr, state.batch_size = report.lr, report.batch_size
                state.trained_lr, state.trained_batch_size = report.lr, report.batch_size
                state.trained_round = server_round
            state.val_loss = report.val_loss if report.status == "ok" else None
            state.val_loss_before = report.val_loss_before
            state.local_loss_before = report.local_loss_before
            state.local_loss_after = report.local_loss_after if report.status == "ok" else None


class FixedHyperparameters:
    """The FedAvg baseline: every client trains with one fixed pair, every update averaged."""

    rules = RoundRules()

    def __init__(self, client_ids: Iterable[int], fixed: Hyperparameters) -> None:
        self.fixed = fixed
        self.states = {cid: ClientState(fixed.lr, fixed.batch_size) for cid in client_ids}
        self.migrants: set[int] = set()

    def prepare(self, server_round: int, sampled: list[int]) -> set[int]:
        return set()

    def assignment(self, client_id: int) -> Hyperparameters:
        return self.fixed

    def step(self, server_round: int, reports: Mapping[int, Report]) -> dict[int, int]:
        return self.record(server_round, reports)

    def record(self, server_round: int, reports: Mapping[int, Report]) -> dict[int, int]:
        record_reports(self.states, server_round, reports)
        return {}

    def evolve(self, labels: Mapping[int, int], scores: Mapping[int, float | None]) -> None:
        return None

    def local_scores(self, client_ids: Iterable[int]) -> dict[int, float | None]:
        return dict.fromkeys(client_ids)


def states_to_dict(states: Mapping[int, ClientState]) -> dict[str, dict[str, Any]]:
    """Client states as JSON-ready data (keys become strings)."""
    return {str(cid): vars(state).copy() for cid, state in sorted(states.items())}


# A checkpoint written before the states' losses took the protocol's names.
_RENAMED = {"loss": "val_loss", "loss_before": "val_loss_before"}


def states_from_dict(data: Mapping[str, Mapping[str, Any]]) -> dict[int, ClientState]:
    """The inverse of :func:`states_to_dict`."""
    return {
        int(cid): ClientState(**{_RENAMED.get(k, k): v for k, v in fields.items()})
        for cid, fields in data.items()
    }
