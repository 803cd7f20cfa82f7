"""The Flower ServerApp: builds the strategy from the run config and records every round.

After each round it writes the checkpoint first (the source of truth for
resuming) and then ``results.json`` (the report, rebuilt from the same data).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flwr.common import Context, NDArrays, ndarrays_to_parameters
from flwr.common.logger import log
from flwr.server import Grid, ServerApp, ServerAppComponents, ServerConfig
from flwr.server.compat import start_grid

from gcfl.config import GcflConfig, config_of
from gcfl.run_end import mark_ended
from gcfl.server.checkpoint import (
    CHECKPOINT_FILE,
    CheckpointError,
    load_checkpoint,
    load_previous_weights,
    save_checkpoint,
)
from gcfl.server.evaluation import CentralEvaluator
from gcfl.server.grid import PromptGrid
from gcfl.server.progress import progress_event, progress_line
from gcfl.server.results import MODEL_FILE, RunRecorder, package_versions, resolve_out_dir
from gcfl.strategy.flower_strategy import GeneticClusteredFedAvg
from gcfl.strategy.record import RoundRecord

# Keys a resumed run may change; any other difference means a different experiment.
RESUMABLE_CHANGES = frozenset(
    {"num-server-rounds", "resume", "probe-timeout", "round-timeout", "round-deadline-factor"}
)


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


def server_fn(
    context: Context, on_round: Callable[[dict[str, Any]], None] | None = None
) -> ServerAppComponents:
    """Build the strategy, its evaluation, checkpoints and results for this run.

    After each round's checkpoint and results, a progress event goes to Flower's
    log (which ``flwr run --stream`` carries) and to ``on_round`` if given.
    """
    config = config_of(context.run_config)
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

    def on_round_end(round_record: RoundRecord, weights: NDArrays) -> None:
        record = round_record.to_dict()
        rounds = [*recorder.payload["rounds"], record]
        save_checkpoint(
            out_dir / CHECKPOINT_FILE,
            weights,
            {
                "config": config.to_run_config(),
                "strategy": strategy.checkpoint_state(),
                "rounds": rounds,
            },
            previous_weights=strategy.previous_weights,
        )
        recorder.add_round(record)
        if record["round"] == config.num_server_rounds:
            evaluator.save(weights, out_dir / MODEL_FILE)
        # Last, so a reader never sees a round that the files do not yet hold.
        event = progress_event(record, config.num_server_rounds)
        log(logging.INFO, progress_line(event))
        if on_round is not None:
            on_round(dict(event))

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
        strategy.restore(restored["strategy"], load_previous_weights(out_dir / CHECKPOINT_FILE))
        remaining -= strategy.completed_rounds
    # Flower's server passes round_timeout to every fit and evaluate message as its TTL;
    # gcfl's Grid counts it from the round's first message and names who missed it.
    return ServerAppComponents(
        strategy=strategy,
        config=ServerConfig(num_rounds=remaining, round_timeout=config.round_timeout),
    )


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """What ``ServerApp(server_fn=server_fn)`` runs, on a Grid that looks for replies promptly."""
    # Nothing here may set TF_ENABLE_ONEDNN_OPTS: under simulation Ray starts the
    # client actors from this process, before or after such a change, so a
    # fresh run and its resume would get different kernels.
    components = server_fn(context)
    config = config_of(context.run_config)  # the one server_fn parsed, from the cache
    prompt = PromptGrid(grid, deadline_factor=config.round_deadline_factor)
    try:
        start_grid(grid=prompt, strategy=components.strategy, config=components.config)
    finally:
        # A ClientApp call still running (a hung client) is abandoned when it sees this,
        # so that the simulation can end now rather than at the call's own deadline.
        mark_ended(config.out_dir, context.run_id)
