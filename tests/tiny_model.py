"""A small model builder for tests of the ``model`` run-config key."""

import keras


def build(input_shape, num_classes):
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(num_classes, activation="softmax"),
        ],
        name="tiny",
    )
