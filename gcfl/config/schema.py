"""The run configuration's schema: every key, its default, type, meaning and check."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from gcfl import names
from gcfl.config import checks
from gcfl.config.checks import key_spec


@dataclass(frozen=True)
class GcflConfig:
    """Every run-config value of a gcfl run, typed and checked."""

    strategy: str = field(
        default="gcfl",
        metadata=key_spec("strategy", "gcfl or fedavg", checks.one_of(names.STRATEGIES)),
    )
    num_server_rounds: int = field(
        default=10,
        metadata=key_spec("num-server-rounds", "federated rounds", checks.at_least_one),
    )
    fraction_fit: float = field(
        default=1.0,
        metadata=key_spec(
            "fraction-fit", "share of clients sampled per round", checks.fraction_open_closed
        ),
    )
    fraction_evaluate: float = field(
        default=0.0,
        metadata=key_spec(
            "fraction-evaluate", "share of clients for federated evaluation", checks.fraction_closed
        ),
    )
    min_fit_clients: int = field(
        default=2,
        metadata=key_spec(
            "min-fit-clients", "fewest accepted updates for a round to count", checks.at_least_one
        ),
    )
    local_epochs: int = field(
        default=5, metadata=key_spec("local-epochs", "epochs per fit", checks.at_least_one)
    )
    val_fraction: float = field(
        default=0.2,
        metadata=key_spec(
            "val-fraction", "share of a client's data held out", checks.validation_share
        ),
    )
    lr_min: float = field(default=1e-5, metadata=key_spec("lr-min", "lowest lr", checks.positive))
    lr_max: float = field(default=1e-1, metadata=key_spec("lr-max", "highest lr", checks.positive))
    batch_min: int = field(
        default=16,
        metadata=key_spec("batch-min", "smallest batch size", checks.at_least_one),
    )
    batch_max: int = field(
        default=128,
        metadata=key_spec("batch-max", "largest batch size", checks.at_least_one),
    )
    rules: str = field(
        default="gcfl",
        metadata=key_spec(
            "rules",
            "gcfl: the rule keys below as set; notebook: the seed notebook's rules, "
            "whatever the rule keys say",
            checks.one_of(names.RULE_PRESETS),
        ),
    )
    fitness: str = field(
        default="improvement",
        metadata=key_spec(
            "fitness",
            "federated: each cluster by how much the aggregate's loss on other clients' data "
            "rises when it is left out (they evaluate the candidates), clusters it hurts left "
            "out of the aggregate; improvement: relative change of the client's loss on all its "
            "local data over its fit; val-improvement: the same on its validation split; loss: "
            "validation loss after the fit (notebook)",
            checks.one_of(names.FITNESS_RULES),
        ),
    )
    fitness_evaluators: int = field(
        default=10,
        metadata=key_spec(
            "fitness-evaluators",
            "fitness=federated: clients that evaluate the candidates each round (those that "
            "did not train first)",
            checks.at_least_one,
        ),
    )
    fitness_candidates: str = field(
        default="group",
        metadata=key_spec(
            "fitness-candidates",
            "fitness=federated: group (the round's start plus each cluster's mean update, "
            "against the start) or leave-out (the aggregate without each cluster, against the "
            "aggregate)",
            checks.one_of(names.CANDIDATE_KINDS),
        ),
    )
    aggregate: str = field(
        default="mean",
        metadata=key_spec(
            "aggregate",
            "mean: every accepted update, weighted by examples (FedAvg's rule); guarded: "
            "without the updates whose move agrees with the others' (the median cosine, per "
            "array) less than aggregate-agreement x the round's median (never a majority), the "
            "rest shortened to at most twice their median move, then the mean; trimmed-mean: "
            "per coordinate, without the aggregate-trim share at each end; median: per "
            "coordinate; krum: the mean of the n - aggregate-byzantine updates nearest the "
            "others (Multi-Krum); drop-harmful (fitness=federated): without the clusters whose "
            "absence lowered the evaluators' loss",
            checks.one_of(names.AGGREGATE_RULES),
        ),
    )
    aggregate_agreement: float = field(
        default=0.5,
        metadata=key_spec(
            "aggregate-agreement",
            "aggregate=guarded: an update is kept when its agreement (the median of its "
            "cosines with the others' moves, averaged over the arrays) is positive and at "
            "least this share of the round's median agreement",
            checks.fraction_closed_open,
        ),
    )
    aggregate_trim: float = field(
        default=0.2,
        metadata=key_spec(
            "aggregate-trim",
            "aggregate=trimmed-mean: share of the updates dropped at each end of every coordinate",
            lambda v: None if 0 <= v < 0.5 else "must be in [0, 0.5)",
        ),
    )
    aggregate_byzantine: int = field(
        default=1,
        metadata=key_spec(
            "aggregate-byzantine",
            "aggregate=krum: how many hostile updates a round is assumed to hold",
            checks.non_negative,
        ),
    )
    migration: float = field(
        default=0.5,
        metadata=key_spec(
            "migration",
            "share of a round's clients, from the worst, that breed from the best across clusters",
            checks.fraction_half,
        ),
    )
    dbscan_eps: float = field(
        default=0.0,
        metadata=key_spec(
            "dbscan-eps",
            "DBSCAN radius in scaled features; 0 = chosen from the population",
            checks.non_negative,
        ),
    )
    dbscan_min_samples: int = field(
        default=2,
        metadata=key_spec("dbscan-min-samples", "DBSCAN core size", checks.at_least_one),
    )
    recluster_every: int = field(
        default=1,
        metadata=key_spec(
            "recluster-every", "cluster every N rounds; 0 = once after round 1", checks.non_negative
        ),
    )
    elite: int = field(
        default=2,
        metadata=key_spec("elite", "best members per group kept as they are", checks.non_negative),
    )
    crossover: str = field(
        default=checks.AUTO_RULE,
        metadata=key_spec(
            "crossover",
            "pick: a child takes one parent's lr and the other's batch size (notebook); "
            "blend: each at a random point between the parents' values, on log scales; "
            "auto: blend when fraction-fit < 1, else pick",
            checks.one_of((*names.CROSSOVER_RULES, checks.AUTO_RULE)),
        ),
    )
    mutation: str = field(
        default="linear",
        metadata=key_spec(
            "mutation",
            "log: Gaussian step in log space; linear: lr times 1-m, 1 or 1+m (notebook)",
            checks.one_of(names.MUTATION_RULES),
        ),
    )
    mutation_scale: float = field(
        default=0.1,
        metadata=key_spec(
            "mutation-scale",
            "log: step std as a share of the search space's width; linear: the factor m",
            checks.fraction_closed_open,
        ),
    )
    resample: float = field(
        default=0.0,
        metadata=key_spec(
            "resample",
            "log mutation: chance that an offspring is a fresh random pair",
            checks.fraction_closed_open,
        ),
    )
    batch_step: float = field(
        default=checks.AUTO,
        metadata=key_spec(
            "batch-step",
            "chance that an offspring's batch size halves or doubles (inside batch-min..batch-max; "
            "-1: auto, 0.2 when fraction-fit < 1, else 0)",
            checks.auto_or(checks.fraction_closed_open),
        ),
    )
    refresh_stale: float = field(
        default=checks.AUTO,
        metadata=key_spec(
            "refresh-stale",
            "chance that a sampled client that did not train in the latest round gets an "
            "offspring of that round's best half instead of its old pair (-1: auto, 0.5 when "
            "fraction-fit < 1, else 0)",
            checks.auto_or(checks.fraction_closed),
        ),
    )
    aggregate_share: float = field(
        default=1.0,
        metadata=key_spec(
            "aggregate-share",
            "share of a round's accepted updates, best by fitness, that are averaged "
            "(1: all, FedAvg's rule)",
            checks.fraction_open_closed,
        ),
    )
    aggregate_floor: float = field(
        default=checks.AUTO,
        metadata=key_spec(
            "aggregate-floor",
            "average only the updates whose fit improved the loss by at least this share "
            "of the round's best improvement (0: all; -1: auto, 0.1 when fraction-fit < 1, "
            "else 0)",
            checks.auto_or(checks.fraction_closed_open),
        ),
    )
    aggregate_clip: float = field(
        default=0.0,
        metadata=key_spec(
            "aggregate-clip",
            "before averaging, shorten every update that moves the global model further "
            "than this many times the round's median move, to that length (0: off)",
            lambda v: None if v == 0 or v >= 1 else "must be 0 (off) or >= 1",
        ),
    )
    init: str = field(
        default="random",
        metadata=key_spec("init", "random or search", checks.one_of(names.INITS)),
    )
    lr_grid: str = field(
        default="1e-1,1e-2,1e-3,1e-4,1e-5,1e-6",
        metadata=key_spec("lr-grid", "lrs tried by init=search", checks.lr_list),
    )
    batch_grid: str = field(
        default="16,32,64,128",
        metadata=key_spec("batch-grid", "batch sizes tried by init=search", checks.batch_list),
    )
    fedavg_lr: float = field(
        default=1e-4,
        metadata=key_spec("fedavg-lr", "lr of the FedAvg baseline", checks.positive),
    )
    fedavg_batch_size: int = field(
        default=32,
        metadata=key_spec(
            "fedavg-batch-size", "batch size of the FedAvg baseline", checks.at_least_one
        ),
    )
    diverge_factor: float = field(
        default=10.0,
        metadata=key_spec(
            "diverge-factor",
            "a fit diverged when its final loss exceeds this times its first",
            lambda v: None if v > 1 else "must be > 1",
        ),
    )
    max_update_norm: float = field(
        default=0.5,
        metadata=key_spec(
            "max-update-norm",
            "refuse an update whose norm exceeds this times the global model's",
            checks.positive,
        ),
    )
    rollback: bool = field(
        default=True,
        metadata=key_spec(
            "rollback",
            "discard the last aggregate when the clients' validation loss of it got worse",
            None,
        ),
    )
    rollback_tolerance: float = field(
        default=0.1,
        metadata=key_spec(
            "rollback-tolerance",
            "relative rise of that loss tolerated before rolling back",
            checks.non_negative,
        ),
    )
    fault_rate: float = field(
        default=0.0,
        metadata=key_spec(
            "fault-rate",
            "probability that a fit raises (fault injection for testing)",
            checks.fraction_closed_open,
        ),
    )
    resume: bool = field(
        default=False,
        metadata=key_spec("resume", "continue from out-dir's checkpoint", None),
    )
    dataset: str = field(
        default="digits",
        metadata=key_spec(
            "dataset", "digits, mnist, cifar10 or /abs/path.npz", checks.dataset_name
        ),
    )
    data_dir: str = field(
        default="",
        metadata=key_spec(
            "data-dir", "folder with dataset files (absolute)", checks.absolute_or_empty
        ),
    )
    partition: str = field(
        default="slices",
        metadata=key_spec("partition", "slices, iid or dirichlet", checks.one_of(names.PARTITIONS)),
    )
    alpha: float = field(
        default=0.5, metadata=key_spec("alpha", "Dirichlet concentration", checks.positive)
    )
    model: str = field(
        default="",
        metadata=key_spec("model", "empty or package.module:function", checks.model_spec),
    )
    seed: int = field(
        default=42,
        metadata=key_spec("seed", "seed of every random draw", checks.non_negative),
    )
    out_dir: str = field(
        default="",
        metadata=key_spec("out-dir", "absolute results folder", checks.absolute_or_empty),
    )
    probe_timeout: float = field(
        default=300.0,
        metadata=key_spec(
            "probe-timeout", "seconds to wait for every SuperNode before round 1", checks.positive
        ),
    )
    round_timeout: float = field(
        default=1800.0,
        metadata=key_spec(
            "round-timeout",
            "seconds a round waits for its clients' replies; later ones count as timed-out",
            checks.positive,
        ),
    )
    round_deadline_factor: float = field(
        default=3.0,
        metadata=key_spec(
            "round-deadline-factor",
            "once half of a round's clients have replied, the rest get at most this multiple "
            "of the slowest reply so far (at least 30 s; never past round-timeout); 0: off",
            checks.non_negative,
        ),
    )

    def __post_init__(self) -> None:
        checks.resolve_and_check(self)

    @property
    def search_lrs(self) -> tuple[float, ...]:
        """The lr grid a search request carries: ``lr-grid`` inside the search space."""
        return tuple(lr for lr in self.lr_grid_values if self.lr_min <= lr <= self.lr_max)

    @property
    def search_batch_sizes(self) -> tuple[int, ...]:
        """The batch grid a search request carries: ``batch-grid`` inside the search space."""
        return tuple(b for b in self.batch_grid_values if self.batch_min <= b <= self.batch_max)

    @property
    def lr_grid_values(self) -> tuple[float, ...]:
        return checks.parse_float_list(self.lr_grid)

    @property
    def batch_grid_values(self) -> tuple[int, ...]:
        return checks.parse_int_list(self.batch_grid)

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """The config as Flower's flat kebab-case run-config dict."""
        return {f.metadata["key"]: getattr(self, f.name) for f in dataclasses.fields(self)}
