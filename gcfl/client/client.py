"""The gcfl NumPyClient: trains with the lr and batch size the server sends it."""

from __future__ import annotations

import numpy as np
from flwr.client import NumPyClient
from flwr.common import Config, NDArrays, Scalar

from gcfl.config import GcflConfig
from gcfl.data import ClientData, client_data, load_dataset
from gcfl.protocol import (
    LOSS_FIELDS,
    EvaluateInstruction,
    EvaluateReport,
    FitReport,
    NodeInfo,
    PropertiesRequest,
    SearchInstruction,
    fit_instruction_from_config,
)

FAULT_STREAM = 4  # a seed stream of its own: injected faults never shift training draws


class InjectedFault(RuntimeError):
    """A failure injected on purpose by ``fault-rate``, to test that runs survive failures."""


class GcflClient(NumPyClient):
    """A Keras client holding one partition of the training set, keyed by its partition id.

    It speaks gcfl's protocol (:mod:`gcfl.protocol`): ``get_properties``
    describes the node (partition and size) without TensorFlow, so the server
    can learn every node cheaply before round 1; ``fit`` trains the process's
    cached model as instructed and reports what it trained with; ``evaluate``
    scores the global model on the client's own validation split.
    """

    def __init__(self, partition_id: int, num_partitions: int, config: GcflConfig) -> None:
        self.partition_id = partition_id
        self.num_partitions = num_partitions
        self.config = config

    def _data(self) -> ClientData:
        cfg = self.config
        return client_data(
            cfg.dataset,
            cfg.data_dir,
            cfg.seed,
            cfg.partition,
            cfg.alpha,
            self.partition_id,
            self.num_partitions,
            cfg.val_fraction,
        )

    def get_properties(self, config: Config) -> dict[str, Scalar]:
        PropertiesRequest.from_config(config)  # a server of another contract is refused
        info = NodeInfo(self.partition_id, self.num_partitions, len(self._data().x_train))
        return info.to_properties()

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, dict[str, Scalar]]:
        from gcfl.model import cached_model, make_training_reproducible

        make_training_reproducible()
        from gcfl.client.training import check_weight_shapes, fit_once, search_init

        cfg = self.config
        instruction = fit_instruction_from_config(config)
        if cfg.fault_rate > 0:
            draw = np.random.default_rng(
                [cfg.seed, FAULT_STREAM, instruction.server_round, self.partition_id]
            )
            if draw.random() < cfg.fault_rate:
                raise InjectedFault(
                    f"fault-rate={cfg.fault_rate}: injected failure of client "
                    f"{self.partition_id} in round {instruction.server_round}"
                )
        dataset = load_dataset(cfg.dataset, cfg.data_dir, cfg.seed)
        data = self._data()
        model = cached_model(cfg.model, dataset.input_shape, dataset.num_classes)
        check_weight_shapes(model, parameters)
        fit_seed = int(
            np.random.SeedSequence(
                [cfg.seed, instruction.server_round, self.partition_id]
            ).generate_state(1)[0]
        )
        if isinstance(instruction, SearchInstruction):
            outcome = search_init(
                model,
                parameters,
                data,
                instruction.lr_grid,
                instruction.batch_grid,
                cfg.diverge_factor,
                np.random.default_rng([cfg.seed, self.partition_id]),
                fit_seed,
            )
        else:
            outcome = fit_once(
                model,
                parameters,
                data,
                instruction.lr,
                instruction.batch_size,
                cfg.local_epochs,
                cfg.diverge_factor,
                fit_seed,
            )
        report = FitReport(
            client_id=self.partition_id,
            lr=outcome.lr,
            batch_size=outcome.batch_size,
            status=outcome.status,
            **{name: getattr(outcome, name) for name in LOSS_FIELDS},
        )
        if outcome.weights is None:
            return [], 0, report.to_metrics()
        return outcome.weights, len(data.x_train), report.to_metrics()

    def evaluate(
        self, parameters: NDArrays, config: Config
    ) -> tuple[float, int, dict[str, Scalar]]:
        """Each model's loss on this client's examples; the first model's accuracy.

        The request says how many models its arrays hold (one: the global
        model) and on which split (:class:`~gcfl.protocol.EvaluateInstruction`).
        Every model is checked against the model's shapes before any is used.
        """
        from gcfl.model import cached_model, make_training_reproducible

        make_training_reproducible()
        from gcfl.client.training import check_weight_shapes
        from gcfl.model_steps import evaluate_weights

        instruction = EvaluateInstruction.from_config(config)
        cfg = self.config
        dataset = load_dataset(cfg.dataset, cfg.data_dir, cfg.seed)
        data = self._data()
        model = cached_model(cfg.model, dataset.input_shape, dataset.num_classes)
        size = len(model.weights)
        if len(parameters) != size * instruction.candidates:
            raise ValueError(
                f"the request holds {len(parameters)} arrays, not {instruction.candidates} "
                f"model(s) of {size}"
            )
        models = [
            list(parameters[i * size : (i + 1) * size]) for i in range(instruction.candidates)
        ]
        for weights in models:
            check_weight_shapes(model, weights)
        if instruction.split == "local":
            x = np.concatenate([data.x_train, data.x_val])
            y = np.concatenate([data.y_train, data.y_val])
        else:
            x, y = data.x_val, data.y_val
        results = [evaluate_weights(model, weights, x, y) for weights in models]
        loss, accuracy = results[0]
        losses = tuple(float(r[0]) for r in results) if instruction.candidates > 1 else ()
        report = EvaluateReport(self.partition_id, float(loss), float(accuracy), losses)
        return float(loss), len(x), report.to_metrics()
