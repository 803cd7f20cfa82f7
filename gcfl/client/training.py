"""Local training with Keras: one fit at a given lr and batch size, and the seed's init search.

This is the only client module that imports TensorFlow; the ClientApp imports
it on the first fit, so property probes never pay for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np

from gcfl.data import ClientData
from gcfl.model import reset_optimizer

EVAL_BATCH_SIZE = 256


@dataclass(frozen=True)
class FitOutcome:
    """What one local fit produced; ``weights`` is None when it diverged."""

    weights: list[np.ndarray] | None
    lr: float
    batch_size: int
    first_loss: float
    train_loss: float
    val_loss: float
    val_accuracy: float
    status: str


class _FirstBatchLoss(keras.callbacks.Callback):
    """Records the loss of the very first batch: the loss at the start of the fit."""

    def __init__(self) -> None:
        super().__init__()
        self.loss = math.nan

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if math.isnan(self.loss) and logs and "loss" in logs:
            self.loss = float(logs["loss"])


def _finite(values: list[np.ndarray]) -> bool:
    return all(np.all(np.isfinite(v)) for v in values)


def divergence(first_loss: float, train_loss: float, val_loss: float, factor: float) -> bool:
    """A fit diverged when a loss is non-finite or the final loss exceeds factor x the first.

    Finite weights are not enough: Adam at lr 1-10 reaches losses near 1e19
    with every weight still finite.
    """
    if not all(math.isfinite(v) for v in (first_loss, train_loss, val_loss)):
        return True
    return train_loss > factor * first_loss


def fit_once(
    model: keras.Model,
    weights: list[np.ndarray],
    data: ClientData,
    lr: float,
    batch_size: int,
    epochs: int,
    diverge_factor: float,
    seed: int,
) -> FitOutcome:
    """Train ``model`` from ``weights`` for ``epochs`` with Adam at ``lr`` and ``batch_size``."""
    model.set_weights(weights)
    lr_used = reset_optimizer(model, lr)
    keras.utils.set_random_seed(seed)
    first = _FirstBatchLoss()
    history = model.fit(
        data.x_train,
        data.y_train,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=0,
        callbacks=[first],
    )
    train_loss = float(history.history["loss"][-1])
    val_loss, val_accuracy = (
        float(v)
        for v in model.evaluate(data.x_val, data.y_val, batch_size=EVAL_BATCH_SIZE, verbose=0)
    )
    new_weights = model.get_weights()
    diverged = divergence(first.loss, train_loss, val_loss, diverge_factor) or not _finite(
        new_weights
    )
    return FitOutcome(
        weights=None if diverged else new_weights,
        lr=lr_used,
        batch_size=int(batch_size),
        first_loss=first.loss,
        train_loss=train_loss,
        val_loss=val_loss,
        val_accuracy=val_accuracy,
        status="diverged" if diverged else "ok",
    )


def search_init(
    model: keras.Model,
    weights: list[np.ndarray],
    data: ClientData,
    lr_grid: tuple[float, ...],
    batch_grid: tuple[int, ...],
    diverge_factor: float,
    rng: np.random.Generator,
    seed: int,
) -> FitOutcome:
    """Seed In [8]/[10], fixed: try 3 lrs x 2 batch sizes for one epoch each from ``weights``.

    Returns the outcome (model and pair) with the lowest local validation loss;
    diverged tries rank last.
    """
    lrs = rng.choice(np.asarray(lr_grid), size=3, replace=False)
    batches = rng.choice(np.asarray(batch_grid), size=2, replace=False)
    best: FitOutcome | None = None
    for batch_size in batches:
        for lr in lrs:
            outcome = fit_once(
                model, weights, data, float(lr), int(batch_size), 1, diverge_factor, seed
            )
            if best is None or _search_key(outcome) < _search_key(best):
                best = outcome
    assert best is not None
    return best


def _search_key(outcome: FitOutcome) -> tuple[int, float]:
    return (0, outcome.val_loss) if outcome.status == "ok" else (1, 0.0)
