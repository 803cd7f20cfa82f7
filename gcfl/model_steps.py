"""A model's compiled loops: its training steps and its evaluation as ``tf.function``s.

Next to the model (:mod:`gcfl.model`), below both users: the clients train
and evaluate with them (:mod:`gcfl.client.training`), the server evaluates
the global model with the same evaluation loop (:mod:`gcfl.server.evaluation`).
The one per-process cache is the compiled steps of each model.
"""

from __future__ import annotations

import math
import weakref

import keras
import numpy as np
import tensorflow as tf

from gcfl.model import optimizer_state

EVAL_BATCH_SIZE = 256


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


def as_arrays(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int32).reshape(-1)


def evaluate_weights(
    model: keras.Model, weights: list[np.ndarray], x: np.ndarray, y: np.ndarray
) -> tuple[float, float]:
    """Loss and accuracy of ``weights`` on ``(x, y)``; leaves ``weights`` in ``model``."""
    model.set_weights(weights)
    return compiled_steps(model).evaluate(*as_arrays(x, y))
