"""Local training: one fit at a given lr and batch size, and the seed's init search.

With :mod:`gcfl.model_steps` (the compiled loops), the only client code that
imports TensorFlow; the ClientApp imports it on the first fit, so property
probes never pay for it.

A fit runs all of its Adam steps inside one ``tf.function`` call (a
``tf.while_loop`` that gathers each batch by index from the client's whole
training array), traced once per process and model. On a digits client ``model.fit`` plus
``model.evaluate`` took about 1 s, most of it per-call set-up (data
adapters, callbacks, history); the loop is a little faster than a Python loop
over a compiled train step (``benchmarks/local_fit.py``). Keras still owns the
model, its loss (``model.compute_loss``) and its optimizer (``model.optimizer``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np

from gcfl.data import ClientData
from gcfl.model import set_learning_rate
from gcfl.model_steps import CompiledSteps, as_arrays, compiled_steps
from gcfl.protocol import FitStatus


@dataclass(frozen=True)
class FitOutcome:
    """What one local fit produced; ``weights`` is None when it diverged.

    ``val_loss_before`` is the loss of the received weights on the client's
    validation split, before any training: unlike ``first_loss`` (one
    shuffled batch) it is comparable across fits of the same client.
    ``local_loss_before`` and ``local_loss_after`` are the losses of the
    received and of the trained weights on all the client's examples
    (training and validation): the server ranks fits by their relative change.
    """

    weights: list[np.ndarray] | None
    lr: float
    batch_size: int
    first_loss: float
    train_loss: float
    val_loss_before: float
    val_loss: float
    val_accuracy: float
    status: FitStatus
    local_loss_before: float = math.nan
    local_loss_after: float = math.nan


def check_weight_shapes(model: keras.Model, weights: list[np.ndarray]) -> None:
    """A clear error when ``weights`` do not fit ``model`` (another model, a corrupt message)."""
    expected = [tuple(w.shape) for w in model.weights]
    got = [tuple(np.shape(w)) for w in weights]
    if got != expected:
        if len(got) != len(expected):
            detail = f"{len(got)} arrays, the model has {len(expected)}"
        else:
            index = next(i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
            detail = f"array {index} has shape {got[index]}, the model expects {expected[index]}"
        raise ValueError(f"weights do not fit model {model.name!r}: {detail}")


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


def _reseed(steps: CompiledSteps, seed: int) -> None:
    if steps.seed_states:
        draws = np.random.SeedSequence(seed).generate_state(len(steps.seed_states))
        for state, draw in zip(steps.seed_states, draws, strict=True):
            # Halved so that it fits the state's dtype, int32 on some backends.
            state.assign(np.array([draw >> 1, 0], dtype=state.dtype))


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
    """Train ``model`` from ``weights`` for ``epochs`` with Adam at ``lr`` and ``batch_size``.

    Samples are reshuffled every epoch by a generator seeded with ``seed``;
    the last batch of an epoch keeps the remainder, as in ``model.fit``.
    """
    before = _losses_before(model, weights, data)
    return _fit(model, data, lr, batch_size, epochs, diverge_factor, seed, before)


def _fit(
    model: keras.Model,
    data: ClientData,
    lr: float,
    batch_size: int,
    epochs: int,
    diverge_factor: float,
    seed: int,
    before: tuple[float, float],
) -> FitOutcome:
    """``fit_once`` from the weights in ``model``, whose (validation, training) losses are known."""
    steps = compiled_steps(model)
    lr_used = set_learning_rate(model, lr)
    _reseed(steps, seed)
    x, y = as_arrays(data.x_train, data.y_train)
    rng = np.random.default_rng(seed)
    order = np.stack([rng.permutation(len(x)) for _ in range(epochs)]).astype(np.int32)
    losses = steps.train(x, y, order, batch_size)
    # Keras' history: the mean over the last epoch's batches, each weighted by its size.
    per_epoch = math.ceil(len(x) / batch_size)
    sizes = np.full(per_epoch, batch_size, dtype=np.float64)
    sizes[-1] = len(x) - batch_size * (per_epoch - 1)
    first_loss = float(losses[0])
    train_loss = float(np.dot(losses[-per_epoch:].astype(np.float64), sizes) / len(x))
    # The training split's loss comes with the validation pass; a diverged fit drops it.
    train_loss_after, val_loss, val_accuracy = steps.evaluate_splits(
        (x, y), as_arrays(data.x_val, data.y_val)
    )
    new_weights = model.get_weights()
    diverged = divergence(first_loss, train_loss, val_loss, diverge_factor) or not _finite(
        new_weights
    )
    val_loss_before, train_loss_before = before
    if diverged:
        train_loss_after = math.nan
    return FitOutcome(
        weights=None if diverged else new_weights,
        lr=lr_used,
        batch_size=int(batch_size),
        first_loss=first_loss,
        train_loss=train_loss,
        val_loss_before=val_loss_before,
        val_loss=val_loss,
        val_accuracy=val_accuracy,
        status="diverged" if diverged else "ok",
        local_loss_before=_pooled(train_loss_before, len(x), val_loss_before, len(data.x_val)),
        local_loss_after=_pooled(train_loss_after, len(x), val_loss, len(data.x_val)),
    )


def _losses_before(
    model: keras.Model, weights: list[np.ndarray], data: ClientData
) -> tuple[float, float]:
    """Validation and training loss of the received ``weights``; leaves them in ``model``."""
    model.set_weights(weights)
    splits = as_arrays(data.x_train, data.y_train), as_arrays(data.x_val, data.y_val)
    train_loss, val_loss, _ = compiled_steps(model).evaluate_splits(*splits)
    return val_loss, train_loss


def _pooled(train_loss: float, n_train: int, val_loss: float, n_val: int) -> float:
    """The mean loss over all local examples, from the two splits' means."""
    if n_val == 0 or math.isnan(val_loss):
        return train_loss
    return (train_loss * n_train + val_loss * n_val) / (n_train + n_val)


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
    diverged tries rank last. Every try starts from ``weights``, so they share
    one ``val_loss_before``.
    """
    lrs = rng.choice(np.asarray(lr_grid), size=3, replace=False)
    batches = rng.choice(np.asarray(batch_grid), size=2, replace=False)
    before = _losses_before(model, weights, data)
    best: FitOutcome | None = None
    for batch_size in batches:
        for lr in lrs:
            model.set_weights(weights)
            outcome = _fit(model, data, float(lr), int(batch_size), 1, diverge_factor, seed, before)
            if best is None or _search_key(outcome) < _search_key(best):
                best = outcome
    assert best is not None
    return best


def _search_key(outcome: FitOutcome) -> tuple[int, float]:
    return (0, outcome.val_loss) if outcome.status == "ok" else (1, 0.0)
