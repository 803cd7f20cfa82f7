"""Local training: one fit at a given lr and batch size, and the seed's init search.

This is the only client module that imports TensorFlow; the ClientApp imports
it on the first fit, so property probes never pay for it.

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
import weakref
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from gcfl.data import ClientData
from gcfl.model import optimizer_state, set_learning_rate
from gcfl.protocol import FitStatus

EVAL_BATCH_SIZE = 256


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


class CompiledSteps:
    """One model's train loop and evaluation as ``tf.function``s, traced once per process.

    Every argument is a tensor with a free leading dimension, so clients of
    any size and any batch size reuse the one trace; ``train_traces`` and
    ``eval_traces`` count traces (they only grow while tracing; the two
    evaluation functions, ``evaluate`` and ``evaluate_splits``, count in
    ``eval_traces``). The model
    is held weakly, so that a model dropped from ``cached_model`` can go.
    """

    def __init__(self, model: keras.Model) -> None:
        self._model = weakref.ref(model)
        self.train_traces = 0
        self.eval_traces = 0
        self._train: tf.types.experimental.PolymorphicFunction | None = None
        self._evaluate: tf.types.experimental.PolymorphicFunction | None = None
        self._evaluate_splits: tf.types.experimental.PolymorphicFunction | None = None
        # Dropout and other random layers draw from SeedGenerator states that
        # advance on every call; they are re-seeded per fit so that the same
        # seed repeats a fit (keras.utils.set_random_seed leaves them as they are).
        self.seed_states = [
            v for v in model.non_trainable_variables if v.name == "seed_generator_state"
        ]

    def _live_model(self) -> keras.Model:
        model = self._model()
        if model is None:
            raise RuntimeError("the model of these compiled steps is gone (dropped from the cache)")
        return model

    def _specs(self, x: np.ndarray) -> list[tf.TensorSpec]:
        return [
            tf.TensorSpec((None, *x.shape[1:]), tf.float32),
            tf.TensorSpec((None,), tf.int32),
        ]

    def train(self, x: np.ndarray, y: np.ndarray, order: np.ndarray, batch_size: int) -> np.ndarray:
        """Adam steps from zeroed moments, one row of ``order`` per epoch; each step's loss."""
        if self._train is None:
            model = self._live_model()
            if not model.optimizer.built:
                # Creating the moments inside the trace would tie them to it.
                model.optimizer.build(model.trainable_variables)
            spec = [
                *self._specs(x),
                tf.TensorSpec((None, None), tf.int32),
                tf.TensorSpec((), tf.int32),
            ]
            self._train = tf.function(self._train_loop, input_signature=spec, autograph=False)
        return self._train(x, y, order, np.int32(batch_size)).numpy()

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Loss and accuracy over all of ``x``, as ``model.evaluate`` aggregates them."""
        if len(x) == 0:
            return math.nan, math.nan
        if self._evaluate is None:
            self._evaluate = tf.function(
                self._evaluate_one, input_signature=self._specs(x), autograph=False
            )
        loss, accuracy = self._evaluate(x, y)
        return float(loss), float(accuracy)

    def evaluate_splits(
        self, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray]
    ) -> tuple[float, float, float]:
        """The training split's loss, the validation split's loss and accuracy (NaN if empty).

        One call for both: a fit needs them together twice (received and trained
        weights), and each call of a compiled function costs a few ms on its own.
        """
        if self._evaluate_splits is None:
            self._evaluate_splits = tf.function(
                self._evaluate_both, input_signature=self._specs(train[0]) * 2, autograph=False
            )
        train_loss, val_loss, val_accuracy = self._evaluate_splits(*train, *val)
        return float(train_loss), float(val_loss), float(val_accuracy)

    def _evaluate_one(self, x: tf.Tensor, y: tf.Tensor):
        self.eval_traces += 1
        return self._evaluate_loop(x, y)

    def _evaluate_both(self, x: tf.Tensor, y: tf.Tensor, x_val: tf.Tensor, y_val: tf.Tensor):
        self.eval_traces += 1
        # An empty split divides 0 by 0: NaN, as ``evaluate`` returns for one.
        return self._evaluate_loop(x, y)[0], *self._evaluate_loop(x_val, y_val)

    def _train_loop(self, x: tf.Tensor, y: tf.Tensor, order: tf.Tensor, batch_size: tf.Tensor):
        self.train_traces += 1
        model = self._live_model()
        variables = model.trainable_variables
        # Zeroing in the graph is one op; eagerly it is one call per moment (13 ms on the seed
        # CNN). Automatic control dependencies run these before the loop, which reads them.
        for state in optimizer_state(model):
            state.assign(tf.zeros_like(state))
        num_samples = tf.shape(order)[1]
        steps_per_epoch = (num_samples + batch_size - 1) // batch_size
        steps = tf.shape(order)[0] * steps_per_epoch

        def step(index: tf.Tensor, losses: tf.TensorArray):
            epoch, batch = index // steps_per_epoch, index % steps_per_epoch
            start = batch * batch_size
            picked = order[epoch, start : tf.minimum(start + batch_size, num_samples)]
            x_batch, y_batch = tf.gather(x, picked), tf.gather(y, picked)
            with tf.GradientTape() as tape:
                y_pred = model(x_batch, training=True)
                loss = model.compute_loss(x=x_batch, y=y_batch, y_pred=y_pred, training=True)
            gradients = tape.gradient(loss, variables)
            model.optimizer.apply_gradients(zip(gradients, variables, strict=True))
            return index + 1, losses.write(index, loss)

        _, losses = tf.while_loop(
            lambda index, _: index < steps,
            step,
            (tf.constant(0), tf.TensorArray(tf.float32, size=steps)),
            # Each step reads the weights the previous one wrote.
            parallel_iterations=1,
        )
        return losses.stack()

    def _evaluate_loop(self, x: tf.Tensor, y: tf.Tensor):
        model = self._live_model()
        num_samples = tf.shape(x)[0]

        def chunk(start: tf.Tensor, loss_sum: tf.Tensor, correct: tf.Tensor):
            end = tf.minimum(start + EVAL_BATCH_SIZE, num_samples)
            x_batch, y_batch = x[start:end], y[start:end]
            y_pred = model(x_batch, training=False)
            # Keras' loss tracker weights each batch's mean loss by the batch size.
            loss = model.compute_loss(x=x_batch, y=y_batch, y_pred=y_pred, training=False)
            size = tf.cast(end - start, tf.float32)
            hits = keras.metrics.sparse_categorical_accuracy(y_batch, y_pred)
            return end, loss_sum + loss * size, correct + tf.reduce_sum(hits)

        _, loss_sum, correct = tf.while_loop(
            lambda start, *_: start < num_samples,
            chunk,
            (tf.constant(0), tf.constant(0.0), tf.constant(0.0)),
            parallel_iterations=1,
        )
        count = tf.cast(num_samples, tf.float32)
        return loss_sum / count, correct / count


_STEPS: weakref.WeakKeyDictionary[keras.Model, CompiledSteps] = weakref.WeakKeyDictionary()


def compiled_steps(model: keras.Model) -> CompiledSteps:
    """The process's compiled steps of ``model``, built on first use."""
    steps = _STEPS.get(model)
    if steps is None:
        steps = _STEPS[model] = CompiledSteps(model)
    return steps


def _arrays(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int32).reshape(-1)


def evaluate_weights(
    model: keras.Model, weights: list[np.ndarray], x: np.ndarray, y: np.ndarray
) -> tuple[float, float]:
    """Loss and accuracy of ``weights`` on ``(x, y)``; leaves ``weights`` in ``model``."""
    model.set_weights(weights)
    return compiled_steps(model).evaluate(*_arrays(x, y))


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
    x, y = _arrays(data.x_train, data.y_train)
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
        (x, y), _arrays(data.x_val, data.y_val)
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
    splits = _arrays(data.x_train, data.y_train), _arrays(data.x_val, data.y_val)
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
