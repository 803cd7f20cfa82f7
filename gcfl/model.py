"""The model: the seed notebook's CNN, or any builder named in the run config.

Keras is imported inside the functions that need it, so that importing this
module (as the ClientApp does for every message) costs nothing until a model is
actually built.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras


class ModelError(ValueError):
    """The ``model`` run-config value does not name a usable builder."""


def build_seed_cnn(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Seed In [6]: three Conv-Conv-MaxPool blocks (32, 64, 128 filters), Dense 128, softmax.

    550,570 parameters on 32x32x3 with 10 classes. Needs inputs of at least 8x8
    (three 2x2 poolings).
    """
    import keras
    from keras import layers

    if len(input_shape) != 3 or min(input_shape[:2]) < 8:
        raise ModelError(f"the seed CNN needs (H, W, C) inputs of at least 8x8, got {input_shape}")
    model = keras.Sequential(name="seed_cnn")
    model.add(keras.Input(shape=input_shape))
    for filters in (32, 64, 128):
        model.add(layers.Conv2D(filters, (3, 3), padding="same", activation="relu"))
        model.add(layers.Conv2D(filters, (3, 3), padding="same", activation="relu"))
        model.add(layers.MaxPool2D((2, 2)))
    model.add(layers.Flatten())
    model.add(layers.Dense(128, activation="relu"))
    model.add(layers.Dense(num_classes, activation="softmax"))
    return model


def resolve_builder(spec: str) -> Callable[[tuple[int, ...], int], keras.Model]:
    """The builder named by ``package.module:function``; the seed CNN when empty."""
    if not spec:
        return build_seed_cnn
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelError(f"model: cannot import {module_name!r} ({error})") from error
    builder = getattr(module, attribute, None)
    if not callable(builder):
        raise ModelError(f"model: {module_name!r} has no function {attribute!r}")
    return builder


def compile_for_training(model: keras.Model) -> keras.Model:
    """Adam and sparse categorical cross-entropy (the seed's binary one was bug 2)."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def build_model(
    spec: str, input_shape: tuple[int, ...], num_classes: int, seed: int
) -> keras.Model:
    """A freshly initialised, compiled model; the same ``seed`` gives the same weights."""
    import keras

    keras.utils.set_random_seed(seed)
    return compile_for_training(resolve_builder(spec)(tuple(input_shape), num_classes))


@functools.lru_cache(maxsize=2)
def cached_model(spec: str, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """One compiled model per process and architecture, reused by every fit and evaluation.

    Rebuilding or recompiling per fit costs seconds and retraces tf.functions;
    callers set the weights and reset the optimizer instead. Ops are made
    deterministic, so that the same weights, data and seed give the same
    update: a resumed run then repeats an uninterrupted one exactly.
    """
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    return build_model(spec, input_shape, num_classes, seed=0)


def reset_optimizer(model: keras.Model, lr: float) -> float:
    """Zero the optimizer's step count and moments in place and set its lr.

    Returns the lr read back from the optimizer, which is what training uses
    (float32, so not always bit-equal to the requested value).
    """
    optimizer = model.optimizer
    for variable in optimizer.variables:
        if variable.name != "learning_rate":
            variable.assign(np.zeros(variable.shape, dtype=variable.dtype))
    optimizer.learning_rate = lr
    return float(optimizer.learning_rate.numpy())


def count_parameters(model: keras.Model) -> int:
    return int(sum(np.prod(w.shape) for w in model.weights))
