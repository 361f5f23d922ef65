"""What the training stages share: seeding, the fit loop with DVCLive, and saving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from dvclive import Live
from dvclive.keras import DVCLiveCallback

from stages import paths
from stages.common import atomic_path
from stages.config import TrainConfig


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow; with ``deterministic``, make TensorFlow's ops deterministic too, so
    two runs agree to the bit. That is cheap on a CPU, slow on a GPU, and some GPU ops have no deterministic
    kernel at all (they raise): hence ``train.deterministic``."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def set_precision(cfg: TrainConfig) -> None:
    """Make the layers built from here on compute in ``train.precision``; variables stay float32.

    Call it before building a model: a layer takes the policy in force when it is made.
    """
    keras.mixed_precision.set_global_policy(cfg.precision)


def distribution(cfg: TrainConfig) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy ``train.strategy`` names; build, compile and fit inside its ``scope()``.

    ``mirrored`` keeps one replica per local GPU (on a machine without one, per logical CPU device, as the
    tests make two) and splits each batch between them: the batch size in params.yaml is the global one,
    and the gradients of the replicas are summed, so the training is the one-device training, faster.
    ``auto`` is ``mirrored`` on a machine with more than one GPU, else the default single device;
    ``one_device`` pins everything to the first GPU, or the CPU.
    """
    gpus = tf.config.list_logical_devices("GPU")
    devices = gpus or tf.config.list_logical_devices("CPU")
    if cfg.strategy == "mirrored" or (cfg.strategy == "auto" and len(gpus) > 1):
        strategy = tf.distribute.MirroredStrategy([device.name for device in devices])
    elif cfg.strategy == "one_device":
        strategy = tf.distribute.OneDeviceStrategy(devices[0].name)
    else:
        strategy = tf.distribute.get_strategy()
    print(f"train.strategy {cfg.strategy}: {strategy.num_replicas_in_sync} replica(s), {type(strategy).__name__}")
    return strategy


def compile_binary(model: keras.Model, learning_rate: float, jit_compile: bool = False) -> None:
    """RMSprop on binary cross-entropy, reporting accuracy, as the book trains every model.

    Under ``mixed_float16`` Keras wraps the optimizer in a LossScaleOptimizer itself.
    """
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )


def fit(
    model: keras.Model,
    x,
    y=None,
    *,
    validation,
    stage: str,
    epochs: int,
    patience: int | None,
    batch_size: int | None = None,
    notes: dict[str, Any] | None = None,
) -> dict[str, list[float]]:
    """Fit ``model`` on a dataset ``x`` or arrays ``x``, ``y``; log each epoch with DVCLive in ``metrics/<stage>/``.

    The weights of the epoch with the lowest validation loss are restored at the end (the book keeps that
    epoch with ModelCheckpoint); ``patience`` stops early, None never does. ``notes`` go into the summary
    (``metrics/<stage>/metrics.json``) as they are, to say how the model was trained.
    """
    live = Live(str(paths.live_dir(stage)), dvcyaml=False, save_dvc_exp=False, report=None)
    keep_best = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=patience or epochs, restore_best_weights=True
    )
    history = model.fit(
        x,
        y,
        validation_data=validation,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=y is not None,  # a tf.data dataset shuffles itself
        callbacks=[keep_best, DVCLiveCallback(live=live)],
        verbose=1,
    ).history
    best = int(np.argmin(history["val_loss"]))
    live.summary["best"] = {
        "epoch": best + 1,
        "loss": history["loss"][best],
        "accuracy": history["accuracy"][best],
        "val_loss": history["val_loss"][best],
        "val_accuracy": history["val_accuracy"][best],
    }
    live.summary.update(notes or {})
    live.make_summary()
    return history


def save_model(model: keras.Model, path: Path) -> None:
    """Save a ``.keras`` file atomically, so an interrupted stage leaves no model that looks finished."""
    with atomic_path(path) as tmp:
        model.save(tmp)
