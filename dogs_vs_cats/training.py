"""What the training stages share: seeding, the fit loop with DVCLive, and saving."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from dvclive import Live
from dvclive.keras import DVCLiveCallback

from dogs_vs_cats import paths
from dogs_vs_cats.common import PipelineError, atomic_path, keras_verbosity, write_json
from dogs_vs_cats.config import Params, Schedule, TrainConfig
from dogs_vs_cats.costs import precision_of, takes_images
from dogs_vs_cats.memory import check_fits


@contextlib.contextmanager
def training_session(params: Params, stage: str) -> Iterator[tf.distribute.Strategy]:
    """What every training stage opens with, in this order: the ``train.strategy``, the seed,
    ``train.precision`` for the layers built next; then the strategy's scope, inside which the stage builds,
    compiles, fits and saves."""
    strategy = distribution(params.train, stage)
    seed_everything(params.seed, params.train.deterministic)
    set_precision(params.train)
    with strategy.scope():
        yield strategy


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow; with ``deterministic``, make TensorFlow's ops deterministic too, so
    two runs agree to the bit. That is cheap on a CPU, slow on a GPU, and some GPU ops have no deterministic
    kernel at all (they raise): hence ``train.deterministic``."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def set_precision(cfg: TrainConfig) -> None:
    """Make the layers built from here on compute in ``train.precision``; variables stay float32.

    Call it before building a model: a layer takes the policy in force when it is made. Says so once.
    """
    keras.mixed_precision.set_global_policy(cfg.precision)
    policy = keras.mixed_precision.global_policy()
    print(
        f"train.precision {cfg.precision}: layers compute in {policy.compute_dtype}, variables {policy.variable_dtype}"
    )


def distribution(cfg: TrainConfig, stage: str) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy ``train.strategy`` names; build, compile and fit inside its ``scope()``.

    ``mirrored`` keeps one replica per local GPU (on a machine without one, per logical CPU device, as the
    tests make two) and splits each batch between them: the batch size in params.yaml is the global one,
    and the gradients of the replicas are summed, so the training is the one-device training, faster.
    ``auto`` is ``mirrored`` on a machine with more than one GPU, else the default single device;
    ``one_device`` pins everything to the first GPU, or the CPU. Many machines run many experiments instead
    (docs/experiments-and-scaling.md).
    """
    gpus = tf.config.list_logical_devices("GPU")
    devices = gpus or tf.config.list_logical_devices("CPU")
    if cfg.strategy == "mirrored" or (cfg.strategy == "auto" and len(gpus) > 1):
        strategy = tf.distribute.MirroredStrategy([device.name for device in devices])
    elif cfg.strategy == "one_device":
        strategy = tf.distribute.OneDeviceStrategy(devices[0].name)
    else:
        strategy = tf.distribute.get_strategy()
    where = f"on {', '.join(device.name for device in gpus)}" if gpus else "on the CPU (no GPU)"
    name = type(strategy).__name__
    print(f"train.strategy {cfg.strategy}: {strategy.num_replicas_in_sync} replica(s), {name}, {where}")
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
    log_dir: Path,
    schedule: Schedule,
    batch_size: int,
    batch_key: str,
    notes: dict[str, Any] | None = None,
) -> dict[str, list[float]]:
    """Fit ``model`` on a dataset ``x`` or arrays ``x``, ``y``; log each epoch with DVCLive in ``log_dir``.

    First, whether it fits: ``model`` at ``batch_size`` (the params key ``batch_key``; a dataset ``x`` is
    batched so already), with the decoded images its datasets keep in memory, against the memory this
    process can use, or one line with what would fit.

    At most ``schedule.epochs`` epochs; the weights of the epoch with the lowest validation loss are restored at
    the end (the book keeps that epoch with ModelCheckpoint); ``schedule.patience`` stops early, None never does.
    The summary (``<log_dir>/metrics.json``, ``training_summary``) holds the kept epoch and, as they are, the
    ``notes`` that say how the model was trained, and ``policy``, the dtype policy the model computed in
    (``train.precision``): accuracy is not traded for speed unseen.
    """
    epochs, patience = schedule.epochs, schedule.patience
    side_key = "image.side" if takes_images(model) else None
    images_kept = sum(getattr(data, "cached_bytes", 0) for data in (x, validation))  # filled as epoch 1 reads
    check_fits(model, batch_size, batch_key, f"training {log_dir.name}", side_key=side_key, images_kept=images_kept)
    if y is None:
        batch_size = None  # the dataset's own batches
    # DVCLive writes into a temp folder that replaces the last run's only when training ends well: an
    # interrupted or failed run leaves the previous metrics, not half of new ones.
    with atomic_path(log_dir, replace=True) as live_dir:
        live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
        live.step = 1  # DVCLive counts from 0; the curves' step is the epoch, counted from 1 as best.epoch is
        history = _keras_fit(model, x, y, validation, epochs, patience, batch_size, live)
        diverged = next((key for key in ("loss", "val_loss") if not np.isfinite(history[key][-1])), None)
        if diverged:
            float16 = " or train.precision float32" if precision_of(model) == "mixed_float16" else ""
            raise PipelineError(
                f"{log_dir.name}: {diverged} is {history[diverged][-1]} at epoch {len(history[diverged])}, the "
                f"training diverged and nothing was saved; lower {schedule.section}.learning_rate{float16}"
            )
        write_json(Path(live.metrics_file), training_summary(history, precision_of(model), notes or {}))
        write_curves(history, paths.curves_file(live_dir))
        # DVCLive's per-metric TSVs hold the same numbers, one file (so one plot in `dvc plots show`) each.
        shutil.rmtree(live_dir / "plots", ignore_errors=True)
    return history


def training_summary(history: dict[str, list[float]], policy: str, notes: dict[str, Any]) -> dict[str, Any]:
    """What the saved model is: the kept (``best``) epoch's numbers, counted from 1, how many epochs ran, the
    ``policy`` and the ``notes``. It replaces DVCLive's summary, whose last-epoch numbers describe weights
    that early stopping threw away (the curves keep every epoch), so ``dvc exp show`` lists only these."""
    best = int(np.argmin(history["val_loss"]))
    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    return {
        "best": {"epoch": best + 1, **{key: float(history[key][best]) for key in keys}},
        "epochs": len(history["loss"]),
        "policy": policy,
        **notes,
    }


def write_curves(history: dict[str, list[float]], path: Path) -> None:
    """Keras' ``history`` as one long table, ``epoch`` (from 1, as ``best.epoch``), ``split`` (train or
    validation), ``loss`` and ``accuracy``: the one file `dvc plots` draws a training run's curves from
    (.dvc/plots/curves.json)."""
    epochs = np.arange(1, len(history["loss"]) + 1)
    prefixes = {"train": "", "validation": "val_"}  # Keras' names for the two splits' numbers
    table = pd.concat(
        pd.DataFrame({"epoch": epochs, "split": split, **{m: history[prefix + m] for m in ("loss", "accuracy")}})
        for split, prefix in prefixes.items()
    )
    table.to_csv(path, index=False)


def _keras_fit(model, x, y, validation, epochs: int, patience: int | None, batch_size: int | None, live: Live):
    """Keras' fit, logged to ``live``, keeping the best epoch's weights."""
    keep_best = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=patience or epochs, restore_best_weights=True
    )
    # A NaN or infinite loss stays so: stop at that batch rather than hours later (fit then says it diverged).
    diverged = keras.callbacks.TerminateOnNaN()
    name = Path(live.dir).name
    print(f"{name}: at most {epochs} epochs over {_amount(x)} and {_amount(validation)}")
    watched = WatchedCurves(name)
    try:
        return model.fit(
            x,
            y,
            validation_data=validation,
            epochs=epochs,
            batch_size=batch_size,
            shuffle=y is not None,  # a tf.data dataset shuffles itself
            callbacks=[diverged, keep_best, DVCLiveCallback(live=live), EpochClock(epochs), watched],
            # Piped, EpochClock's line is the epoch's one line; on a terminal it follows Keras' live bar.
            verbose=1 if keras_verbosity() == 1 else 0,
        ).history
    finally:
        watched.path.unlink(missing_ok=True)


def _amount(data: Any) -> str:
    """How much ``data`` holds: images (arrays, an ``image_dataset``'s files) or, for other datasets, batches."""
    if isinstance(data, tuple):
        data = data[0]
    if hasattr(data, "file_paths"):
        return f"{len(data.file_paths):,} images"
    if hasattr(data, "__len__"):
        return f"{len(data):,} images"
    return f"{int(data.cardinality()):,} batches"


EPOCH_NUMBERS = ("loss", "accuracy", "val_loss", "val_accuracy")  # Keras' logs, in the order a reader wants


class EpochClock(keras.callbacks.Callback):
    """One line an epoch: its numbers, how long it took and how long the rest of the stage may take (the mean
    epoch so far times the epochs left; early stopping may end it sooner)."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs, self.started, self.durations = epochs, 0.0, []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.durations.append(time.monotonic() - self.started)
        left = (self.epochs - epoch - 1) * float(np.mean(self.durations))
        logs = logs or {}
        numbers = " ".join(f"{key} {logs[key]:.4f}" for key in EPOCH_NUMBERS if key in logs)
        print(
            f"epoch {epoch + 1}/{self.epochs} in {duration(self.durations[-1])}: {numbers}; "
            + (f"about {duration(left)} left" if epoch + 1 < self.epochs else "the last"),
            flush=True,
        )


class WatchedCurves(keras.callbacks.Callback):
    """The curves so far, rewritten whole after every epoch where ``python -m tools.watch`` reads them
    (``paths.watched_curves``: scratch space, never a declared output; the caller removes the file when fit
    ends). A file left by a killed run of the same name is removed when the next one starts."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name, self.path, self.history = name, paths.watched_curves(name, os.getpid()), {}

    def on_train_begin(self, logs: dict | None = None) -> None:
        for old in paths.WATCH_DIR.glob(f"{glob.escape(self.name)}.*.csv"):
            pid = old.name[len(self.name) + 1 : -len(".csv")]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                old.unlink(missing_ok=True)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for key in EPOCH_NUMBERS:
            self.history.setdefault(key, []).append(float((logs or {}).get(key, np.nan)))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")  # not *.csv: a reader never sees half a file
        write_curves(self.history, partial)
        os.replace(partial, self.path)


def duration(seconds: float) -> str:
    """``seconds`` as a person reads a wait: 42 s, 5.0 min, 3 h 55 min."""
    if seconds < 90:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min"


def save_model(model: keras.Model, path: Path) -> None:
    """Save a ``.keras`` file atomically, so an interrupted stage leaves no model that looks finished."""
    with atomic_path(path, replace=True) as tmp:
        model.save(tmp)
