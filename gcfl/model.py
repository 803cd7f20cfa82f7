"""The model: the seed notebook's CNN, or any builder named in the run config.

Keras is imported inside the functions that need it, so that importing this
module (as the ClientApp does for every message) costs nothing until a model is
actually built.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras


class ModelError(ValueError):
    """The ``model`` run-config value does not name a usable builder."""


def build_seed_cnn(input_shape: tuple[int, ...], num_classes: int, seed: int = 0) -> keras.Model:
    """Seed In [6]: three Conv-Conv-MaxPool blocks (32, 64, 128 filters), Dense 128, softmax.

    550,570 parameters on 32x32x3 with 10 classes. Needs inputs of at least 8x8
    (three 2x2 poolings). Every initializer gets an explicit seed derived from
    ``seed``: Keras otherwise draws initializer seeds from Python's global
    ``random``, which Flower's server threads use too, so the same seed would
    not always give the same initial model.
    """
    import keras
    from keras import layers

    if len(input_shape) != 3 or min(input_shape[:2]) < 8:
        raise ModelError(f"the seed CNN needs (H, W, C) inputs of at least 8x8, got {input_shape}")
    seeds = iter(np.random.SeedSequence(seed).generate_state(8))

    def glorot() -> keras.initializers.Initializer:
        return keras.initializers.GlorotUniform(seed=int(next(seeds)))

    model = keras.Sequential(name="seed_cnn")
    model.add(keras.Input(shape=input_shape))
    for filters in (32, 64, 128):
        for _ in range(2):
            model.add(
                layers.Conv2D(
                    filters, (3, 3), padding="same", activation="relu", kernel_initializer=glorot()
                )
            )
        model.add(layers.MaxPool2D((2, 2)))
    model.add(layers.Flatten())
    model.add(layers.Dense(128, activation="relu", kernel_initializer=glorot()))
    model.add(layers.Dense(num_classes, activation="softmax", kernel_initializer=glorot()))
    return model


def resolve_builder(spec: str) -> Callable[[tuple[int, ...], int], keras.Model]:
    """The builder named by ``package.module:function``."""
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
    """A freshly initialised, compiled model; the seed CNN gives the same weights for a seed.

    A builder named in ``model`` is called as ``builder(input_shape, num_classes)``;
    to be reproducible under Flower it should seed its initializers itself.
    """
    import keras

    keras.utils.set_random_seed(seed)
    if not spec:
        return compile_for_training(build_seed_cnn(tuple(input_shape), num_classes, seed))
    return compile_for_training(resolve_builder(spec)(tuple(input_shape), num_classes))


@functools.lru_cache(maxsize=2)
def cached_model(spec: str, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """One compiled model per process and architecture, reused by every fit and evaluation.

    Rebuilding or recompiling per fit costs seconds and retraces tf.functions;
    callers set the weights and reset the optimizer instead.
    """
    return build_model(spec, input_shape, num_classes, seed=0)


def make_training_reproducible() -> None:
    """Same weights, data and seed give the same update, bit for bit, in this process.

    Deterministic ops and one thread per op. One thread also fits Flower's
    one-CPU-per-client simulation, where more threads per actor only
    oversubscribe the cores. Later calls are no-ops.

    oneDNN (faster CPU kernels that round differently) is left as TensorFlow
    chooses it when imported: by the CPU, or by ``TF_ENABLE_ONEDNN_OPTS`` in
    the environment. Flower's simulation imports TensorFlow in its Ray actors
    before any gcfl code runs there, so gcfl cannot choose for them; choosing
    only elsewhere (or only in processes started after some point) would make
    a run's processes, or a run and its resume, compute different bits.
    """
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # TensorFlow already initialised in this process (a reused actor)


def onednn_enabled() -> bool:
    """Whether TensorFlow runs oneDNN kernels in this process (False if it cannot tell).

    False while TensorFlow is not imported: probing would import it, and so
    make the choice before the caller could set ``TF_ENABLE_ONEDNN_OPTS``.
    """
    if "tensorflow" not in sys.modules:
        return False
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # a TensorFlow build without this private probe
        return False
    return bool(_pywrap_util_port.IsMklEnabled())


def optimizer_state(model: keras.Model) -> list[keras.Variable]:
    """The optimizer's variables that a fresh fit starts from zero: all but the lr.

    Training zeroes them inside its compiled step (one op instead of one eager
    assignment per variable); ``reset_optimizer`` zeroes them eagerly.
    """
    return [v for v in model.optimizer.variables if v.name != "learning_rate"]


def set_learning_rate(model: keras.Model, lr: float) -> float:
    """Set the optimizer's lr in place; returns it as read back (float32, so not always ``lr``)."""
    optimizer = model.optimizer
    optimizer.learning_rate = lr
    return float(optimizer.learning_rate.numpy())


def reset_optimizer(model: keras.Model, lr: float) -> float:
    """Zero the optimizer's step count and moments in place and set its lr.

    Returns the lr read back from the optimizer, which is what training uses
    (float32, so not always bit-equal to the requested value).
    """
    for variable in optimizer_state(model):
        variable.assign(np.zeros(variable.shape, dtype=variable.dtype))
    return set_learning_rate(model, lr)
