"""The Flower ServerApp: builds the strategy from the run config and records every round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.common import Context, NDArrays, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig

from gcfl.config import GcflConfig, parse_run_config
from gcfl.server.evaluation import CentralEvaluator
from gcfl.server.results import MODEL_FILE, RESULTS_FILE, RunRecorder, package_versions
from gcfl.strategy.flower_strategy import GeneticClusteredFedAvg


class OutputDirError(RuntimeError):
    """The results folder cannot be used without losing what it holds."""


def resolve_out_dir(config: GcflConfig, run_id: int) -> Path:
    """The run's results folder: ``out-dir``, or ``~/gcfl-results/run-<run id>`` when unset.

    Refuses a folder that already holds a ``results.json``: a new run never
    overwrites an earlier one's results.
    """
    out_dir = (
        Path(config.out_dir).expanduser()
        if config.out_dir
        else (Path.home() / "gcfl-results" / f"run-{run_id}")
    )
    if (out_dir / RESULTS_FILE).exists():
        raise OutputDirError(
            f"out-dir {out_dir} already holds {RESULTS_FILE} from an earlier run; "
            "choose another out-dir or move that file away"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def server_fn(context: Context) -> ServerAppComponents:
    """Build the strategy, its evaluation and its results recording for this run."""
    config = parse_run_config(context.run_config)
    out_dir = resolve_out_dir(config, context.run_id)
    evaluator = CentralEvaluator(config)
    recorder = RunRecorder(out_dir, config.strategy, config.to_run_config(), package_versions())

    def on_round_end(record: dict[str, Any], weights: NDArrays) -> None:
        recorder.add_round(record)
        if record["round"] == config.num_server_rounds:
            evaluator.save(weights, out_dir / MODEL_FILE)

    strategy = GeneticClusteredFedAvg(
        config=config,
        initial_parameters=ndarrays_to_parameters(evaluator.initial_weights()),
        evaluate_fn=evaluator,
        on_round_end=on_round_end,
    )
    return ServerAppComponents(
        strategy=strategy, config=ServerConfig(num_rounds=config.num_server_rounds)
    )


app = ServerApp(server_fn=server_fn)
