"""Server-side evaluation of the global model on the test set, and saving it."""

from __future__ import annotations

import warnings
from pathlib import Path

from flwr.common import NDArrays, Scalar

from gcfl.config import GcflConfig
from gcfl.data import Dataset, load_dataset


class CentralEvaluator:
    """Evaluates global weights on the dataset's test set with a cached compiled model.

    Usable as Flower's ``evaluate_fn``; the dataset and model are loaded on
    first use.
    """

    def __init__(self, config: GcflConfig) -> None:
        self.config = config

    @property
    def dataset(self) -> Dataset:
        return load_dataset(self.config.dataset, self.config.data_dir, self.config.seed)

    def _model(self):
        from gcfl.model import cached_model, make_training_reproducible

        # The same evaluation, bit for bit, whichever process runs the server
        # (Flower's ServerApp, or gcfl's in-process engine, which calls it too).
        make_training_reproducible()
        return cached_model(self.config.model, self.dataset.input_shape, self.dataset.num_classes)

    def initial_weights(self) -> NDArrays:
        """The initial global model: the same weights for the same seed, run after run."""
        from gcfl.model import build_model, make_training_reproducible

        make_training_reproducible()
        model = build_model(
            self.config.model, self.dataset.input_shape, self.dataset.num_classes, self.config.seed
        )
        return model.get_weights()

    def __call__(
        self, server_round: int, weights: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, dict[str, Scalar]]:
        from gcfl.model_steps import evaluate_weights

        # The clients' compiled evaluation loop (256-example chunks, as Keras'
        # evaluate at this batch size), without Keras' per-call set-up: the
        # clients wait for this between rounds.
        loss, accuracy = evaluate_weights(
            self._model(), weights, self.dataset.x_test, self.dataset.y_test
        )
        return loss, {"accuracy": accuracy}

    def save(self, weights: NDArrays, path: Path) -> None:
        """Save the global model as a ``.keras`` file, atomically."""
        model = self._model()
        model.set_weights(weights)
        partial = path.with_name(path.stem + ".partial.keras")
        with warnings.catch_warnings():
            # Keras 3.15's saver calls np.array() on a variable, which NumPy 2.4
            # flags as deprecated; not ours to fix, and harmless here.
            warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept")
            model.save(partial)
        partial.replace(path)
