"""The Flower ServerApp: builds the strategy from the run config and records every round.

After each round it writes the checkpoint first (the source of truth for
resuming) and then ``results.json`` (the report, rebuilt from the same data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.common import Context, NDArrays, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig

from gcfl.config import GcflConfig, parse_run_config
from gcfl.server.checkpoint import (
    CHECKPOINT_FILE,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from gcfl.server.evaluation import CentralEvaluator
from gcfl.server.results import MODEL_FILE, RESULTS_FILE, RunRecorder, package_versions
from gcfl.strategy.flower_strategy import GeneticClusteredFedAvg

# Keys a resumed run may change; any other difference means a different experiment.
RESUMABLE_CHANGES = frozenset({"num-server-rounds", "resume", "probe-timeout"})


class OutputDirError(RuntimeError):
    """The results folder cannot be used without losing what it holds."""


def resolve_out_dir(config: GcflConfig, run_id: int) -> Path:
    """The run's results folder: ``out-dir``, or ``~/gcfl-results/run-<run id>`` when unset.

    A new run refuses a folder that already holds results or a checkpoint; a
    resumed run needs the checkpoint. Nothing in the folder is touched here.
    """
    if config.out_dir:
        out_dir = Path(config.out_dir).expanduser()
    else:
        out_dir = Path.home() / "gcfl-results" / f"run-{run_id}"
    if config.resume:
        if not (out_dir / CHECKPOINT_FILE).is_file():
            raise OutputDirError(
                f"resume=true but {out_dir} holds no {CHECKPOINT_FILE}; "
                "resume needs the out-dir of the run to continue"
            )
    else:
        for name in (RESULTS_FILE, CHECKPOINT_FILE):
            if (out_dir / name).exists():
                raise OutputDirError(
                    f"out-dir {out_dir} already holds {name} from an earlier run; set "
                    "resume=true to continue it, or choose another out-dir"
                )
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def check_resumable(config: GcflConfig, saved: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint of a different experiment, naming the keys that differ."""
    current = config.to_run_config()
    differing = sorted(
        key for key in current if key not in RESUMABLE_CHANGES and saved.get(key) != current[key]
    )
    if differing:
        changes = ", ".join(f"{k} ({saved.get(k)!r} -> {current[k]!r})" for k in differing)
        raise CheckpointError(
            f"cannot resume: the run config differs from the checkpoint's: {changes}"
        )


def server_fn(context: Context) -> ServerAppComponents:
    """Build the strategy, its evaluation, checkpoints and results for this run."""
    config = parse_run_config(context.run_config)
    out_dir = resolve_out_dir(config, context.run_id)
    evaluator = CentralEvaluator(config)
    recorder = RunRecorder(out_dir, config.strategy, config.to_run_config(), package_versions())
    initial_weights = None
    restored = None
    if config.resume:
        initial_weights, restored = load_checkpoint(out_dir / CHECKPOINT_FILE)
        check_resumable(config, restored["config"])
        done = restored["strategy"]["completed_rounds"]
        if done >= config.num_server_rounds:
            raise CheckpointError(
                f"the checkpoint already holds {done} rounds; raise num-server-rounds to run more"
            )
        recorder.payload["rounds"] = list(restored["rounds"])
    strategy: GeneticClusteredFedAvg

    def on_round_end(record: dict[str, Any], weights: NDArrays) -> None:
        rounds = [*recorder.payload["rounds"], record]
        save_checkpoint(
            out_dir / CHECKPOINT_FILE,
            weights,
            {
                "config": config.to_run_config(),
                "strategy": strategy.checkpoint_state(),
                "rounds": rounds,
            },
        )
        recorder.add_round(record)
        if record["round"] == config.num_server_rounds:
            evaluator.save(weights, out_dir / MODEL_FILE)

    strategy = GeneticClusteredFedAvg(
        config=config,
        initial_parameters=ndarrays_to_parameters(
            initial_weights if initial_weights is not None else evaluator.initial_weights()
        ),
        evaluate_fn=evaluator,
        on_round_end=on_round_end,
    )
    remaining = config.num_server_rounds
    if restored is not None:
        strategy.restore(restored["strategy"])
        remaining -= strategy.completed_rounds
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=remaining))


app = ServerApp(server_fn=server_fn)
