"""Benchmark: one warm local fit of a digits client, three ways, in one process.

Usage:
    python benchmarks/local_fit.py [--partition 3] [--batch-size 32] [--epochs 2] [--repeats 20]

(a) keras: the former ``fit_once``, ``model.fit`` then ``model.evaluate``
    (copied below, so the comparison survives changes to gcfl);
(b) floor: the same number of Adam steps, each a call of a minimal
    ``tf.function`` train step on pre-sliced batches, then one compiled
    validation pass;
(c) gcfl: today's ``gcfl.client.training.fit_once``, which also evaluates the
    received weights (``val_loss_before``); row (d) times that pass alone.

All use the process's cached seed CNN, one thread and deterministic ops, as a
client does. Prints medians over ``--repeats`` warm fits as a Markdown table.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import numpy as np

from gcfl.model import cached_model, make_training_reproducible, reset_optimizer

make_training_reproducible()

import keras  # noqa: E402  (after make_training_reproducible, which must precede TF's first op)
import tensorflow as tf  # noqa: E402

from gcfl.client.training import fit_once  # noqa: E402
from gcfl.data import ClientData, client_data, load_dataset  # noqa: E402
from gcfl.model_steps import evaluate_weights  # noqa: E402


class _FirstBatchLoss(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.loss = math.nan

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if math.isnan(self.loss) and logs and "loss" in logs:
            self.loss = float(logs["loss"])


def keras_fit(model, weights, data: ClientData, lr, batch_size, epochs, seed) -> tuple:
    """The former fit_once's work: Keras fit with a callback, then Keras evaluate."""
    model.set_weights(weights)
    reset_optimizer(model, lr)
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
    val = model.evaluate(data.x_val, data.y_val, batch_size=256, verbose=0)
    return first.loss, train_loss, val, model.get_weights()


def floor_fit(model, weights, data: ClientData, lr, batch_size, epochs, seed, step, evaluate):
    """The same Adam steps, one Python-level call each, and one validation pass."""
    model.set_weights(weights)
    reset_optimizer(model, lr)
    rng = np.random.default_rng(seed)
    y_train = data.y_train.astype(np.int32)
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(data.x_train))
        for start in range(0, len(order), batch_size):
            picked = order[start : start + batch_size]
            losses.append(step(data.x_train[picked], y_train[picked]))
    val = evaluate(data.x_val, data.y_val.astype(np.int32))
    return float(losses[0]), float(losses[-1]), [float(v) for v in val], model.get_weights()


def minimal_steps(model) -> tuple[Callable, Callable]:
    spec = (
        tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32),
        tf.TensorSpec((None,), tf.int32),
    )

    @tf.function(input_signature=spec)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(y=y, y_pred=model(x, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return loss

    @tf.function(input_signature=spec)
    def evaluate(x, y):
        y_pred = model(x, training=False)
        accuracy = tf.reduce_mean(keras.metrics.sparse_categorical_accuracy(y, y_pred))
        return model.compute_loss(y=y, y_pred=y_pred), accuracy

    return step, evaluate


def median_ms(work: Callable[[int], object], repeats: int) -> float:
    """Median time of ``work(seed)`` over seeds 1..repeats, after a warm-up call with seed 0."""
    work(0)  # traces and first-call allocations
    times = []
    for seed in range(1, repeats + 1):
        started = time.perf_counter()
        work(seed)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partition", type=int, default=3, help="digits client of 10")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    dataset = load_dataset("digits", "", 42)
    data = client_data("digits", "", 42, "slices", 0.5, args.partition, 10, 0.2)
    model = cached_model("", dataset.input_shape, dataset.num_classes)
    weights = model.get_weights()
    step, evaluate = minimal_steps(model)
    fit = (args.lr, args.batch_size, args.epochs)
    timings = {
        "(a) keras: model.fit + model.evaluate": median_ms(
            lambda seed: keras_fit(model, weights, data, *fit, seed), args.repeats
        ),
        "(b) floor: per-step tf.function loop + validation": median_ms(
            lambda seed: floor_fit(model, weights, data, *fit, seed, step, evaluate),
            args.repeats,
        ),
        "(c) gcfl: fit_once": median_ms(
            lambda seed: fit_once(model, weights, data, *fit, 10.0, seed), args.repeats
        ),
        "(d) gcfl: evaluate_weights (val_loss_before, inside c)": median_ms(
            lambda _: evaluate_weights(model, weights, data.x_val, data.y_val), args.repeats
        ),
    }
    steps = args.epochs * math.ceil(len(data.x_train) / args.batch_size)
    floor = timings["(b) floor: per-step tf.function loop + validation"]
    print(
        f"digits client {args.partition} of 10: {len(data.x_train)} training and "
        f"{len(data.x_val)} validation samples, batch {args.batch_size}, {args.epochs} epochs "
        f"= {steps} Adam steps; median of {args.repeats} warm repetitions\n"
    )
    print("| path | ms | / floor |")
    print("|---|---:|---:|")
    for name, ms in timings.items():
        print(f"| {name} | {ms:.1f} | {ms / floor:.2f} |")


if __name__ == "__main__":
    main()
