"""Names every layer shares: rule and dataset names, a fit's outcomes. A leaf: imports no gcfl."""

from __future__ import annotations

from typing import Literal

# ok: the update was accepted; diverged: the client said its fit blew up; refused: the
# server rejected the reply; failed: an error instead of a reply; timed-out: no reply by
# the round's deadline.
Outcome = Literal["ok", "diverged", "refused", "failed", "timed-out"]
OUTCOMES: tuple[Outcome, ...] = ("ok", "diverged", "refused", "failed", "timed-out")
# The outcomes of a client that sent no usable reply.
NoReplyOutcome = Literal["failed", "timed-out"]
VERSION = "0.1.0"  # the package version, as pyproject.toml declares it

# The run config's choices: config checks a key against these, the strategy implements them.
STRATEGIES = ("gcfl", "fedavg")
RULE_PRESETS = ("gcfl", "notebook")
FITNESS_RULES = ("federated", "improvement", "val-improvement", "loss")
MUTATION_RULES = ("log", "linear")
CROSSOVER_RULES = ("pick", "blend")
INITS = ("random", "search")
AGGREGATE_RULES = ("mean", "guarded", "trimmed-mean", "median", "krum", "drop-harmful")
CANDIDATE_KINDS = ("group", "leave-out")
PARTITIONS = ("slices", "iid", "dirichlet")
BUILTIN_DATASETS = ("digits", "mnist", "cifar10")
