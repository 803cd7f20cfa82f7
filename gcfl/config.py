"""The run configuration: every run-config key, its default, type and valid range.

Flower hands the ServerApp and every ClientApp the run config as a flat dict of
kebab-case keys (``context.run_config``). :func:`parse_run_config` turns it into
one frozen :class:`GcflConfig`, checked once; nothing else reads raw keys.

The defaults here and in ``pyproject.toml``'s ``[tool.flwr.app.config]`` must
agree: the test suite compares them.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


# The seed notebook's algorithm (bugs fixed): what ``rules = "notebook"`` sets,
# whatever the same keys say, so that its results stay reproducible.
NOTEBOOK_RULES: dict[str, Any] = {
    "fitness": "loss",
    "migration": 0.0,
    "crossover": "pick",
    "mutation": "linear",
    "mutation-scale": 0.1,
    "resample": 0.0,
    "dbscan-eps": 0.15,
    "rollback": False,
    "refresh-stale": 0.0,
    "aggregate-floor": 0.0,
    "aggregate-clip": 0.0,
    "aggregate-share": 1.0,
    "batch-step": 0.0,
}


class ConfigError(ValueError):
    """A run-config value is missing, of the wrong type or out of range."""


def _key(name: str, help_text: str, check: Callable[[Any], str | None] | None = None) -> Any:
    """Metadata for a config field: its kebab-case run-config key and a range check."""
    return {"key": name, "help": help_text, "check": check}


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _at_least_one(value: int) -> str | None:
    return None if value >= 1 else "must be >= 1"


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _absolute_or_empty(value: str) -> str | None:
    if value == "" or Path(value).expanduser().is_absolute():
        return None
    return (
        "must be an absolute path (the ServerApp runs in the SuperLink's working "
        "directory, not yours)"
    )


def _dataset(value: str) -> str | None:
    if value in BUILTIN_DATASETS:
        return None
    if value.endswith(".npz"):
        return _absolute_or_empty(value)
    return f"must be one of {', '.join(BUILTIN_DATASETS)} or an absolute path to a .npz file"


def _fraction_open_closed(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


def _fraction_closed(value: float) -> str | None:
    return None if 0 <= value <= 1 else "must be in [0, 1]"


def _fraction_closed_open(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


# The values of refresh-stale, aggregate-floor, batch-step (-1) and crossover ("auto") that
# let gcfl choose by the federation: (when rounds sample a fraction of the clients, when
# every client trains). BENCHMARKS.md section 0: under sampling these rules win on average
# over the four settings measured; with every client training the floor, the batch step
# and blending each cost accuracy (the floor drops useful small updates), and no client
# is stale.
AUTO = -1.0
AUTO_RULE = "auto"
BY_PARTICIPATION: dict[str, tuple[float | str, float | str]] = {
    "refresh_stale": (0.5, 0.0),
    "aggregate_floor": (0.1, 0.0),
    "batch_step": (0.2, 0.0),
    "crossover": ("blend", "pick"),
}


def _auto_or(check: Callable[[float], str | None]) -> Callable[[float], str | None]:
    def auto_or_check(value: float) -> str | None:
        if value == AUTO:
            return None
        problem = check(value)
        return None if problem is None else f"{problem} (or -1: auto)"

    return auto_or_check


def _fraction_half(value: float) -> str | None:
    return None if 0 <= value <= 0.5 else "must be in [0, 0.5]"


def _val_fraction(value: float) -> str | None:
    return None if 0 < value < 1 else "must be in (0, 1)"


def _model_spec(value: str) -> str | None:
    if value == "" or (":" in value and all(value.split(":", 1))):
        return None
    return "must be empty (the seed CNN) or 'package.module:function'"


def parse_float_list(text: str) -> tuple[float, ...]:
    """Parse a comma-separated list of floats such as ``"1e-1,1e-2"``."""
    return tuple(float(item) for item in text.split(",") if item.strip())


def parse_int_list(text: str) -> tuple[int, ...]:
    """Parse a comma-separated list of integers such as ``"16,32"``."""
    return tuple(int(item) for item in text.split(",") if item.strip())


def _float_list(value: str) -> str | None:
    try:
        values = parse_float_list(value)
    except ValueError:
        return "must be a comma-separated list of numbers"
    if len(values) < 3 or any(not (v > 0 and math.isfinite(v)) for v in values):
        return "must list at least 3 positive learning rates"
    return None


def _int_list(value: str) -> str | None:
    try:
        values = parse_int_list(value)
    except ValueError:
        return "must be a comma-separated list of integers"
    if len(values) < 2 or any(v < 1 for v in values):
        return "must list at least 2 positive batch sizes"
    return None


@dataclass(frozen=True)
class GcflConfig:
    """Every run-config value of a gcfl run, typed and checked."""

    strategy: str = field(
        default="gcfl",
        metadata=_key("strategy", "gcfl or fedavg", _one_of(STRATEGIES)),
    )
    num_server_rounds: int = field(
        default=10, metadata=_key("num-server-rounds", "federated rounds", _at_least_one)
    )
    fraction_fit: float = field(
        default=1.0,
        metadata=_key("fraction-fit", "share of clients sampled per round", _fraction_open_closed),
    )
    fraction_evaluate: float = field(
        default=0.0,
        metadata=_key(
            "fraction-evaluate", "share of clients for federated evaluation", _fraction_closed
        ),
    )
    min_fit_clients: int = field(
        default=2,
        metadata=_key(
            "min-fit-clients", "fewest accepted updates for a round to count", _at_least_one
        ),
    )
    local_epochs: int = field(
        default=5, metadata=_key("local-epochs", "epochs per fit", _at_least_one)
    )
    val_fraction: float = field(
        default=0.2,
        metadata=_key("val-fraction", "share of a client's data held out", _val_fraction),
    )
    lr_min: float = field(default=1e-5, metadata=_key("lr-min", "lowest lr", _positive))
    lr_max: float = field(default=1e-1, metadata=_key("lr-max", "highest lr", _positive))
    batch_min: int = field(
        default=16, metadata=_key("batch-min", "smallest batch size", _at_least_one)
    )
    batch_max: int = field(
        default=128, metadata=_key("batch-max", "largest batch size", _at_least_one)
    )
    rules: str = field(
        default="gcfl",
        metadata=_key(
            "rules",
            "gcfl: the rule keys below as set; notebook: the seed notebook's rules, "
            "whatever the rule keys say",
            _one_of(RULE_PRESETS),
        ),
    )
    fitness: str = field(
        default="improvement",
        metadata=_key(
            "fitness",
            "federated: each cluster by how much the aggregate's loss on other clients' data "
            "rises when it is left out (they evaluate the candidates), clusters it hurts left "
            "out of the aggregate; improvement: relative change of the client's loss on all its "
            "local data over its fit; val-improvement: the same on its validation split; loss: "
            "validation loss after the fit (notebook)",
            _one_of(FITNESS_RULES),
        ),
    )
    fitness_evaluators: int = field(
        default=10,
        metadata=_key(
            "fitness-evaluators",
            "fitness=federated: clients that evaluate the candidates each round (those that "
            "did not train first)",
            _at_least_one,
        ),
    )
    fitness_candidates: str = field(
        default="group",
        metadata=_key(
            "fitness-candidates",
            "fitness=federated: group (the round's start plus each cluster's mean update, "
            "against the start) or leave-out (the aggregate without each cluster, against the "
            "aggregate)",
            _one_of(CANDIDATE_KINDS),
        ),
    )
    aggregate: str = field(
        default="mean",
        metadata=_key(
            "aggregate",
            "mean: every accepted update, weighted by examples (FedAvg's rule); guarded: "
            "without the updates whose move agrees with the others' mean direction less than "
            "aggregate-agreement x the round's median (never a majority), the rest shortened "
            "to at most "
            "twice their median move, then the mean; trimmed-mean: "
            "per coordinate, without the aggregate-trim share at each end; median: per "
            "coordinate; krum: the mean of the n - aggregate-byzantine updates nearest the "
            "others (Multi-Krum); drop-harmful (fitness=federated): without the clusters whose "
            "absence lowered the evaluators' loss",
            _one_of(AGGREGATE_RULES),
        ),
    )
    aggregate_agreement: float = field(
        default=0.5,
        metadata=_key(
            "aggregate-agreement",
            "aggregate=guarded: an update is kept when its cosine with the others' mean "
            "direction is positive and at least this share of the round's median cosine",
            _fraction_closed_open,
        ),
    )
    aggregate_trim: float = field(
        default=0.2,
        metadata=_key(
            "aggregate-trim",
            "aggregate=trimmed-mean: share of the updates dropped at each end of every coordinate",
            lambda v: None if 0 <= v < 0.5 else "must be in [0, 0.5)",
        ),
    )
    aggregate_byzantine: int = field(
        default=1,
        metadata=_key(
            "aggregate-byzantine",
            "aggregate=krum: how many hostile updates a round is assumed to hold",
            _non_negative,
        ),
    )
    migration: float = field(
        default=0.5,
        metadata=_key(
            "migration",
            "share of a round's clients, from the worst, that breed from the best across clusters",
            _fraction_half,
        ),
    )
    dbscan_eps: float = field(
        default=0.0,
        metadata=_key(
            "dbscan-eps",
            "DBSCAN radius in scaled features; 0 = chosen from the population",
            _non_negative,
        ),
    )
    dbscan_min_samples: int = field(
        default=2, metadata=_key("dbscan-min-samples", "DBSCAN core size", _at_least_one)
    )
    recluster_every: int = field(
        default=1,
        metadata=_key(
            "recluster-every", "cluster every N rounds; 0 = once after round 1", _non_negative
        ),
    )
    elite: int = field(
        default=2, metadata=_key("elite", "best members per group kept as they are", _non_negative)
    )
    crossover: str = field(
        default=AUTO_RULE,
        metadata=_key(
            "crossover",
            "pick: a child takes one parent's lr and the other's batch size (notebook); "
            "blend: each at a random point between the parents' values, on log scales; "
            "auto: blend when fraction-fit < 1, else pick",
            _one_of((*CROSSOVER_RULES, AUTO_RULE)),
        ),
    )
    mutation: str = field(
        default="linear",
        metadata=_key(
            "mutation",
            "log: Gaussian step in log space; linear: lr times 1-m, 1 or 1+m (notebook)",
            _one_of(MUTATION_RULES),
        ),
    )
    mutation_scale: float = field(
        default=0.1,
        metadata=_key(
            "mutation-scale",
            "log: step std as a share of the search space's width; linear: the factor m",
            _fraction_closed_open,
        ),
    )
    resample: float = field(
        default=0.0,
        metadata=_key(
            "resample",
            "log mutation: chance that an offspring is a fresh random pair",
            _fraction_closed_open,
        ),
    )
    batch_step: float = field(
        default=AUTO,
        metadata=_key(
            "batch-step",
            "chance that an offspring's batch size halves or doubles (inside batch-min..batch-max; "
            "-1: auto, 0.2 when fraction-fit < 1, else 0)",
            _auto_or(_fraction_closed_open),
        ),
    )
    refresh_stale: float = field(
        default=AUTO,
        metadata=_key(
            "refresh-stale",
            "chance that a sampled client that did not train in the latest round gets an "
            "offspring of that round's best half instead of its old pair (-1: auto, 0.5 when "
            "fraction-fit < 1, else 0)",
            _auto_or(_fraction_closed),
        ),
    )
    aggregate_share: float = field(
        default=1.0,
        metadata=_key(
            "aggregate-share",
            "share of a round's accepted updates, best by fitness, that are averaged "
            "(1: all, FedAvg's rule)",
            _fraction_open_closed,
        ),
    )
    aggregate_floor: float = field(
        default=AUTO,
        metadata=_key(
            "aggregate-floor",
            "average only the updates whose fit improved the loss by at least this share "
            "of the round's best improvement (0: all; -1: auto, 0.1 when fraction-fit < 1, "
            "else 0)",
            _auto_or(_fraction_closed_open),
        ),
    )
    aggregate_clip: float = field(
        default=0.0,
        metadata=_key(
            "aggregate-clip",
            "before averaging, shorten every update that moves the global model further "
            "than this many times the round's median move, to that length (0: off)",
            lambda v: None if v == 0 or v >= 1 else "must be 0 (off) or >= 1",
        ),
    )
    init: str = field(default="random", metadata=_key("init", "random or search", _one_of(INITS)))
    lr_grid: str = field(
        default="1e-1,1e-2,1e-3,1e-4,1e-5,1e-6",
        metadata=_key("lr-grid", "lrs tried by init=search", _float_list),
    )
    batch_grid: str = field(
        default="16,32,64,128",
        metadata=_key("batch-grid", "batch sizes tried by init=search", _int_list),
    )
    fedavg_lr: float = field(
        default=1e-4, metadata=_key("fedavg-lr", "lr of the FedAvg baseline", _positive)
    )
    fedavg_batch_size: int = field(
        default=32,
        metadata=_key("fedavg-batch-size", "batch size of the FedAvg baseline", _at_least_one),
    )
    diverge_factor: float = field(
        default=10.0,
        metadata=_key(
            "diverge-factor",
            "a fit diverged when its final loss exceeds this times its first",
            lambda v: None if v > 1 else "must be > 1",
        ),
    )
    max_update_norm: float = field(
        default=0.5,
        metadata=_key(
            "max-update-norm",
            "refuse an update whose norm exceeds this times the global model's",
            _positive,
        ),
    )
    rollback: bool = field(
        default=True,
        metadata=_key(
            "rollback",
            "discard the last aggregate when the clients' validation loss of it got worse",
            None,
        ),
    )
    rollback_tolerance: float = field(
        default=0.1,
        metadata=_key(
            "rollback-tolerance",
            "relative rise of that loss tolerated before rolling back",
            _non_negative,
        ),
    )
    fault_rate: float = field(
        default=0.0,
        metadata=_key(
            "fault-rate",
            "probability that a fit raises (fault injection for testing)",
            _fraction_closed_open,
        ),
    )
    resume: bool = field(
        default=False,
        metadata=_key("resume", "continue from out-dir's checkpoint", None),
    )
    dataset: str = field(
        default="digits",
        metadata=_key("dataset", "digits, mnist, cifar10 or /abs/path.npz", _dataset),
    )
    data_dir: str = field(
        default="",
        metadata=_key("data-dir", "folder with dataset files (absolute)", _absolute_or_empty),
    )
    partition: str = field(
        default="slices",
        metadata=_key("partition", "slices, iid or dirichlet", _one_of(PARTITIONS)),
    )
    alpha: float = field(default=0.5, metadata=_key("alpha", "Dirichlet concentration", _positive))
    model: str = field(
        default="",
        metadata=_key("model", "empty or package.module:function", _model_spec),
    )
    seed: int = field(default=42, metadata=_key("seed", "seed of every random draw", _non_negative))
    out_dir: str = field(
        default="",
        metadata=_key("out-dir", "absolute results folder", _absolute_or_empty),
    )
    probe_timeout: float = field(
        default=300.0,
        metadata=_key(
            "probe-timeout", "seconds to wait for every SuperNode before round 1", _positive
        ),
    )
    round_timeout: float = field(
        default=1800.0,
        metadata=_key(
            "round-timeout",
            "seconds a round waits for its clients' replies; later ones count as timed-out",
            _positive,
        ),
    )
    round_deadline_factor: float = field(
        default=3.0,
        metadata=_key(
            "round-deadline-factor",
            "once half of a round's clients have replied, the rest get at most this multiple "
            "of the slowest reply so far (at least 30 s; never past round-timeout); 0: off",
            _non_negative,
        ),
    )

    def __post_init__(self) -> None:
        for name, (sampled, every_client) in BY_PARTICIPATION.items():
            if getattr(self, name) in (AUTO, AUTO_RULE):
                # Frozen: the resolved value is what runs and what results.json records.
                value = sampled if self.fraction_fit < 1 else every_client
                object.__setattr__(self, name, value)
        if self.aggregate == "drop-harmful" and self.fitness != "federated":
            raise ConfigError(
                "aggregate: drop-harmful needs the federated evaluation (fitness=federated)"
            )
        if not self.lr_min < self.lr_max:
            raise ConfigError(f"lr-min ({self.lr_min}) must be smaller than lr-max ({self.lr_max})")
        if not self.batch_min <= self.batch_max:
            raise ConfigError(
                f"batch-min ({self.batch_min}) must not exceed batch-max ({self.batch_max})"
            )
        if self.init == "search":
            # The server sends only the grid points inside the search space: a search
            # must never train at a pair the space rules out.
            if len(self.search_lrs) < 3:
                raise ConfigError(
                    f"lr-grid: init=search needs at least 3 values inside [lr-min, lr-max] = "
                    f"[{self.lr_min:g}, {self.lr_max:g}], got {list(self.search_lrs)}"
                )
            if len(self.search_batch_sizes) < 2:
                raise ConfigError(
                    f"batch-grid: init=search needs at least 2 values inside [batch-min, "
                    f"batch-max] = [{self.batch_min}, {self.batch_max}], got "
                    f"{list(self.search_batch_sizes)}"
                )

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
        return parse_float_list(self.lr_grid)

    @property
    def batch_grid_values(self) -> tuple[int, ...]:
        return parse_int_list(self.batch_grid)

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """The config as Flower's flat kebab-case run-config dict."""
        return {f.metadata["key"]: getattr(self, f.name) for f in dataclasses.fields(self)}


def _fields_by_key() -> dict[str, dataclasses.Field[Any]]:
    return {f.metadata["key"]: f for f in dataclasses.fields(GcflConfig)}


def config_keys() -> tuple[str, ...]:
    """Every valid run-config key, in declaration order."""
    return tuple(_fields_by_key())


def default_run_config() -> dict[str, bool | int | float | str]:
    """The default value of every run-config key, as declared (``-1`` for auto)."""
    defaults: dict[str, bool | int | float | str] = {}
    for f in dataclasses.fields(GcflConfig):
        assert isinstance(f.default, (bool, int, float, str)), f.name  # every field has one
        defaults[f.metadata["key"]] = f.default
    return defaults


def _coerce(key: str, expected: type, value: Any) -> Any:
    """Convert a run-config value to the field's type, or say what is wrong."""
    if expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise ConfigError(f"{key}: {value!r} is not a finite number")
            return float(value)
    elif expected is str and isinstance(value, str):
        return value
    raise ConfigError(f"{key}: expected {expected.__name__}, got {type(value).__name__} {value!r}")


def parse_run_config(run_config: Mapping[str, Any]) -> GcflConfig:
    """Check a run-config mapping and return it as a :class:`GcflConfig`.

    Missing keys take their defaults; an unknown key, a wrong type or a value
    out of range raises :class:`ConfigError` naming the key.
    """
    fields = _fields_by_key()
    unknown = sorted(set(run_config) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown run-config key(s): {', '.join(unknown)}; valid keys: {', '.join(fields)}"
        )
    type_of = {name: hint for name, hint in GcflConfig.__annotations__.items()}
    types = {"int": int, "float": float, "str": str, "bool": bool}
    values: dict[str, Any] = {}
    for key, value in run_config.items():
        spec = fields[key]
        coerced = _coerce(key, types[type_of[spec.name]], value)
        problem = spec.metadata["check"](coerced) if spec.metadata["check"] else None
        if problem:
            raise ConfigError(f"{key}: {coerced!r} {problem}")
        values[spec.name] = coerced
    if values.get("rules") == "notebook":
        values.update({fields[key].name: value for key, value in NOTEBOOK_RULES.items()})
    return GcflConfig(**values)


# The last few parsed run configs, oldest first. A process sees one run config (a
# SuperNode's ClientApp, a worker) or a handful (the compare runner), so a small
# bound keeps every hit without letting a long-lived process grow it. The lock:
# Flower may call a ClientApp from several threads.
CONFIG_CACHE_SIZE = 8
_PARSED: dict[tuple[tuple[str, type, Any], ...], GcflConfig] = {}
_PARSED_LOCK = threading.Lock()


def config_of(run_config: Mapping[str, Any]) -> GcflConfig:
    """:func:`parse_run_config`, memoised per process on the mapping's items.

    Hot paths (one call per Flower message or per fit) get the same frozen
    :class:`GcflConfig` back without re-checking every key. A bad config is
    not cached: it raises :class:`ConfigError` on every call.
    """
    # The value's type is part of the key: True == 1 == 1.0, yet only some of
    # them are valid for a given key.
    key = tuple(sorted((name, type(value), value) for name, value in run_config.items()))
    try:
        hash(key)
    except TypeError:
        # An unhashable value is never a valid one: let the parser name the key.
        return parse_run_config(run_config)
    with _PARSED_LOCK:
        config = _PARSED.pop(key, None)
        if config is None:
            config = parse_run_config(run_config)
            while len(_PARSED) >= CONFIG_CACHE_SIZE:
                del _PARSED[next(iter(_PARSED))]
        _PARSED[key] = config
    return config


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse one ``key=value`` override as typed by a user on the command line.

    The value is converted to the key's type; an unknown key lists the valid ones.
    """
    if "=" not in text:
        raise ConfigError(f"expected key=value, got {text!r}")
    key, raw = (part.strip() for part in text.split("=", 1))
    fields = _fields_by_key()
    if key not in fields:
        raise ConfigError(f"unknown run-config key: {key}; valid keys: {', '.join(fields)}")
    kind = GcflConfig.__annotations__[fields[key].name]
    raw = raw.strip("'\"") if kind == "str" else raw
    try:
        converters: dict[str, Callable[[str], Any]] = {
            "int": int,
            "float": float,
            "str": str,
            "bool": lambda s: {"true": True, "false": False}[s.lower()],
        }
        value: Any = converters[kind](raw)
    except (ValueError, KeyError):
        raise ConfigError(f"{key}: {raw!r} is not a valid {kind}") from None
    return key, value
