"""The digits study's networks, augmentation, schedule and input pipeline.

``digits.network: lenet5`` is LeCun et al.'s LeNet-5 (1998), first of the lecture's classic convnets: 5x5
convolutions of 6, 16 and 120 maps with tanh, average pooling, Dense 84, on the 28x28 digits padded to 32x32 as
the paper's input was (every map of C3 sees every map of S2, as Keras' Conv2D does; the paper's partial table
saved 1998's arithmetic). ``book`` is the course's network (Chollet, listing 8.1): Conv2D 32 -> MaxPool ->
Conv2D 64 -> MaxPool -> Conv2D 128 -> Flatten -> Dense 10, trained with RMSprop in the book. ``strong`` is the
homework's: two blocks of two 3x3 convolutions with batch normalization, max pooling and dropout, then a
batch-normalized Dense 128; with augmentation (small rotations, shifts and zooms, never flips), Adam and a cosine
schedule it is the kind of network the homework's 99.5-99.7 % asks for (what each reached here: docs/digits.md).
Images stay uint8 in memory and are batched by ``tf.data``; scaling to [0, 1] and augmentation are layers inside
the saved model.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from dogs_vs_cats.augmentation import augmentation
from dogs_vs_cats.config import DigitsConfig
from dogs_vs_cats.digits_io import CLASSES, SIDE, Split

BN_MOMENTUM = 0.9  # Keras' 0.99 needs thousands of steps to settle; small offline sets have a few hundred


def build_network(cfg: DigitsConfig, seed: int) -> keras.Model:
    """The ``digits.network`` model: 28x28x1 pixels (0-255) in, ten class probabilities out (float32)."""
    inputs = keras.Input((SIDE, SIDE, 1), name="pixels")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = augmentation(cfg.augment, seed, fill_value=0.0)(x)  # the background is black
    if cfg.network == "lenet5":
        x = keras.layers.ZeroPadding2D(2)(x)  # 32x32, as the paper's input
        x = keras.layers.Conv2D(6, 5, activation="tanh", name="c1")(x)
        x = keras.layers.AveragePooling2D(2, name="s2")(x)
        x = keras.layers.Conv2D(16, 5, activation="tanh", name="c3")(x)
        x = keras.layers.AveragePooling2D(2, name="s4")(x)
        x = keras.layers.Conv2D(120, 5, activation="tanh", name="c5")(x)  # 5x5 kernels on 5x5 maps: 1x1 out
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(84, activation="tanh", name="f6")(x)
        x = keras.layers.Dropout(cfg.dropout)(x) if cfg.dropout else x
    elif cfg.network == "book":
        for filters in (32, 64):
            x = keras.layers.Conv2D(filters, 3, activation="relu")(x)
            x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.Conv2D(128, 3, activation="relu")(x)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dropout(cfg.dropout)(x) if cfg.dropout else x
    else:
        for filters in (32, 64):
            for _ in range(2):
                x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
                x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
                x = keras.layers.ReLU()(x)
            x = keras.layers.MaxPooling2D(2)(x)
            x = keras.layers.Dropout(cfg.dropout)(x)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(128, use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.Dropout(cfg.dropout)(x)
    # float32 whatever train.precision is, so probabilities and the loss keep their precision.
    outputs = keras.layers.Dense(CLASSES, activation="softmax", dtype="float32", name="classes")(x)
    return keras.Model(inputs, outputs, name=f"digits_{cfg.network}")


def learning_rate(cfg: DigitsConfig, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """``digits.schedule`` over the run's steps: Keras' own schedules, so the saved model loads in safe mode."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=total)
    if cfg.schedule == "step":
        boundaries = [total // 2, (3 * total) // 4]
        rates = [cfg.learning_rate, cfg.learning_rate / 10, cfg.learning_rate / 100]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, rates)
    return cfg.learning_rate


def compile_digits(model: keras.Model, cfg: DigitsConfig, steps_per_epoch: int, jit_compile: bool = False) -> None:
    rate = learning_rate(cfg, steps_per_epoch)
    optimizer = keras.optimizers.Adam(rate) if cfg.optimizer == "adam" else keras.optimizers.RMSprop(rate)
    model.compile(
        optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=jit_compile
    )


def examples(split: Split) -> tf.data.Dataset:
    """``(pixels, label)`` pairs one by one from uint8 arrays held in memory, pixels as float32 (training: see
    ``training.fit``)."""
    dataset = tf.data.Dataset.from_tensor_slices((split.x[..., np.newaxis], split.y))
    return dataset.map(lambda x, y: (tf.cast(x, tf.float32), y))


def batches(split: Split, batch_size: int) -> tf.data.Dataset:
    """``(pixels, label)`` batches in order from uint8 arrays held in memory, pixels as float32."""
    return examples(split).batch(batch_size).prefetch(tf.data.AUTOTUNE)
