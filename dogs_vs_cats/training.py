"""What the training stages share: seeding, the fit loop with DVCLive and checkpoints, and saving."""

from __future__ import annotations

import contextlib
import functools
import glob
import math
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
from dogs_vs_cats.checkpoints import Checkpoint, State, computation_key
from dogs_vs_cats.config import Params, TrainConfig, TrainingPlan
from dogs_vs_cats.costs import leaf_layers, precision_of, takes_images
from dogs_vs_cats.memory import check_fits
from runtime.errors import PipelineError
from runtime.files import atomic_path, write_json
from runtime.progress import keras_verbosity


@contextlib.contextmanager
def training_session(params: Params, stage: str) -> Iterator[Checkpoint | None]:
    """What every training stage opens with, in this order: the ``train.strategy``, the seed,
    ``train.precision`` for the layers built next; then the strategy's scope, inside which the stage builds,
    compiles, fits and saves. It yields the checkpoint of the DVC stage ``stage``'s computation for ``fit``
    (None when another process trains it now, or where no ``dvc.yaml`` says what shapes it); the checkpoint
    goes when the session ends well, after the stage saved its model, and stays when it does not, so the
    next run resumes."""
    strategy = distribution(params.train, stage)
    seed_everything(params.seed, params.train.deterministic)
    set_precision(params.train)
    key = computation_key(stage, {"tensorflow": tf.__version__, "keras": keras.__version__})
    if key is not None and isinstance(strategy, tf.distribute.OneDeviceStrategy):
        # Resumed under it (initial_epoch > 0), Keras validated on part of the validation split, with an
        # "input ran out of data" warning each epoch; auto and mirrored resume bit for bit.
        print(f"{stage}: train.strategy one_device keeps no checkpoints (a resumed run would validate on part of "
              "the validation split); auto or mirrored resume after a kill")  # fmt: skip
        key = None
    checkpoint = Checkpoint(stage, key) if key is not None else None
    if checkpoint is not None and not checkpoint.open():
        checkpoint = None
    try:
        with strategy.scope():
            yield checkpoint
    except BaseException:
        if checkpoint is not None:
            checkpoint.close()
        raise
    if checkpoint is not None:
        checkpoint.remove()


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
    """RMSprop on binary cross-entropy, reporting accuracy, as the book trains every model; XLA where
    ``jit_compile`` asks for it and it can be had (``xla``).

    Under ``mixed_float16`` Keras wraps the optimizer in a LossScaleOptimizer itself.
    """
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        jit_compile=xla(model, jit_compile),
    )


def xla(model: keras.Model, wanted: bool) -> bool:
    """Whether ``model`` compiles its training step with XLA: ``wanted`` (``train.jit_compile``), unless Keras
    would refuse it, which it does with a warning: under TensorFlow's op determinism (``train.deterministic``)
    or with a layer XLA cannot compile (the random augmentation layers). Then one line says why."""
    if not wanted:
        return False
    from tensorflow.python.framework.config import is_op_determinism_enabled  # no public getter; Keras reads it so

    if is_op_determinism_enabled():
        why = "train.deterministic is true (XLA has no deterministic kernels for every op)"
    elif not all(layer.supports_jit for layer in leaf_layers(model)):
        why = "its layers include some XLA cannot compile (random augmentation)"
    else:
        return True
    print(f"train.jit_compile: {model.name} trains without XLA, as {why}")
    return False


def fit(
    model: keras.Model,
    train: tf.data.Dataset | tuple[np.ndarray, np.ndarray],
    *,
    validation,
    log_dir: Path,
    plan: TrainingPlan,
    batch_size: int,
    batch_key: str,
    seed: int,
    checkpoint: Checkpoint | None = None,
    notes: dict[str, Any] | None = None,
) -> dict[str, list[float]]:
    """Fit ``model`` on ``train``, unbatched ``(x, y)`` examples read in the same order each time (a cached
    dataset) or a pair of arrays, in batches of ``batch_size``; log each epoch with DVCLive in ``log_dir``.

    First, whether it fits: ``model`` at ``batch_size`` (the params key ``batch_key``), with the decoded images
    its datasets keep in memory, against the memory this process can use, or one line with what would fit.
    Each epoch shuffles ``train`` by ``seed`` and its own number alone, so epoch 7 sees the same batches
    whether the run started at epoch 1 or resumed at 7. A NaN or infinite loss stops it at once, in one line.

    At most ``plan.epochs`` epochs; the weights of the epoch with the lowest validation loss are restored at
    the end (the book keeps that epoch with ModelCheckpoint); ``plan.patience`` stops early, None never does.
    With a ``checkpoint``, each finished epoch is kept there (weights, optimizer, random seeds' states, early
    stopping, curves) and a run killed after epoch k resumes from it at epoch k + 1: on the CPU with
    ``train.deterministic`` its results are bit for bit those of a run never killed.
    The summary (``<log_dir>/metrics.json``, ``training_summary``) holds the kept epoch and, as they are, the
    ``notes`` that say how the model was trained, and ``policy``, the dtype policy the model computed in
    (``train.precision``): accuracy is not traded for speed unseen.
    """
    epochs, patience = plan.epochs, plan.patience
    side_key = "image.side" if takes_images(model) else None
    images_kept = sum(getattr(data, "cached_bytes", 0) for data in (train, validation))  # filled in epoch 1
    check_fits(model, batch_size, batch_key, f"training {log_dir.name}", side_key=side_key, images_kept=images_kept)
    examples = train if isinstance(train, tf.data.Dataset) else tf.data.Dataset.from_tensor_slices(train)
    count = int(examples.cardinality())
    variables = _state_variables(model)
    state = _resumable(checkpoint, variables, epochs)
    name = log_dir.name
    if state is not None:
        for variable, value in zip(variables, state.variables, strict=True):
            variable.assign(value)
        print(f"{name}: resuming after epoch {state.epoch} of {epochs}, from {checkpoint.folder}")
    first = state.epoch if state else 0
    # DVCLive writes into a temp folder that replaces the last run's only when training ends well: an
    # interrupted or failed run leaves the previous metrics, not half of new ones.
    with atomic_path(log_dir, replace=True) as live_dir:
        live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
        live.step = first + 1  # DVCLive counts from 0; the curves' step is the epoch, counted from 1 as best.epoch is
        print(f"{name}: at most {epochs} epochs over {count:,} images and {_amount(validation)}")
        if state is not None and (state.stopped or first >= epochs):
            history = state.history  # it had ended; only its model was not saved
            if state.best_weights is not None:
                model.set_weights(state.best_weights)
        else:
            keep_best = keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=patience or epochs, restore_best_weights=True
            )
            curves = Curves(state.history if state else {})
            # A NaN or infinite loss stays so: stop at that batch rather than hours later, and keep no such epoch.
            callbacks = [StopOnNonFinite(), keep_best, curves]
            if checkpoint is not None:  # after keep_best: it keeps what keep_best decided
                callbacks.append(Checkpointing(checkpoint, keep_best, curves.history, variables, state))
            train_batches = shuffled_epochs(examples, count, batch_size, seed, first, epochs)
            _keras_fit(model, train_batches, math.ceil(count / batch_size), validation, first, epochs, live, callbacks)
            history = curves.history
        diverged = next((key for key in ("loss", "val_loss") if not np.isfinite(history[key][-1])), None)
        if diverged:
            float16 = " or train.precision float32" if precision_of(model) == "mixed_float16" else ""
            raise PipelineError(
                f"{name}: {diverged} is {history[diverged][-1]} at epoch {len(history[diverged])}, the training "
                f"diverged and nothing was saved; lower {plan.section}.learning_rate{float16}"
            )
        write_json(Path(live.metrics_file), training_summary(history, precision_of(model), notes or {}))
        write_curves(history, paths.curves_file(live_dir))
        # DVCLive's per-metric TSVs hold the same numbers, one file (so one plot in `dvc plots show`) each.
        shutil.rmtree(live_dir / "plots", ignore_errors=True)
    return history


def _state_variables(model: keras.Model) -> list:
    """Every variable a fit changes that the next epochs depend on: the model's (its random seeds' states too)
    and its optimizer's (built now, as fit would)."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    return [*model.variables, *model.optimizer.variables]


def _resumable(checkpoint: Checkpoint | None, variables: list, epochs: int) -> State | None:
    """The checkpoint's state if it is one of this model; set aside otherwise."""
    state = checkpoint.load() if checkpoint else None
    if state is None:
        return None
    shapes = [tuple(v.shape) for v in variables]
    if [a.shape for a in state.variables] != shapes or state.epoch > epochs:
        print(f"{checkpoint.stage}: set aside a checkpoint of another model, {checkpoint.folder}")
        return None
    return state


def shuffled_epochs(examples: tf.data.Dataset, count: int, batch_size: int, seed: int, first: int, last: int):
    """Epochs ``first`` to ``last - 1`` (from 0) of ``examples`` in batches, each shuffled by ``seed`` and its
    number alone: no shuffle state runs from one epoch into the next, so a resumed run reads what the first
    run would have read."""
    batches = [
        examples.shuffle(count, seed=seed * 1_000_003 + number, reshuffle_each_iteration=False).batch(batch_size)
        for number in range(first, last)
    ]
    return functools.reduce(tf.data.Dataset.concatenate, batches).prefetch(tf.data.AUTOTUNE)


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


def _keras_fit(model, train, steps: int, validation, first: int, epochs: int, live: Live, callbacks: list) -> None:
    """Keras' fit from epoch ``first`` (0 for a new run) with ``callbacks``, logged to ``live``, one line an
    epoch, the curves so far where ``tools.watch`` finds them."""
    name = Path(live.dir).name
    curves = next(c for c in callbacks if isinstance(c, Curves))
    watched = WatchedCurves(name, curves.history)
    try:
        model.fit(
            train,
            validation_data=validation,
            epochs=epochs,
            initial_epoch=first,
            steps_per_epoch=steps,
            shuffle=False,  # shuffled_epochs shuffles
            callbacks=[*callbacks, DVCLiveCallback(live=live), EpochClock(epochs), watched],
            # Piped, EpochClock's line is the epoch's one line; on a terminal it follows Keras' live bar.
            verbose=1 if keras_verbosity() == 1 else 0,
        )
    finally:
        watched.path.unlink(missing_ok=True)


class Curves(keras.callbacks.Callback):
    """Every epoch's numbers, after those of the run this one resumes (``history``)."""

    def __init__(self, history: dict[str, list[float]]) -> None:
        super().__init__()
        self.history = {key: list(values) for key, values in history.items()}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))


class StopOnNonFinite(keras.callbacks.Callback):
    """Keras' ``TerminateOnNaN`` without its printed line: ``fit`` says what happened, in one."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.model.stop_training = True


class Checkpointing(keras.callbacks.Callback):
    """Keep each finished epoch in ``checkpoint``; when resuming from ``state``, put early stopping back
    where it stood (it resets itself as training begins, so this one comes after it)."""

    def __init__(self, checkpoint: Checkpoint, keep_best, history: dict, variables: list, state: State | None):
        super().__init__()
        self.checkpoint, self.keep_best, self.history, self.variables = checkpoint, keep_best, history, variables
        self.state, self.said = state, False

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.state is not None:
            best, state = self.keep_best, self.state
            best.best, best.best_epoch, best.wait, best.best_weights = (
                state.best,
                state.best_epoch,
                state.wait,
                state.best_weights,
            )

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not all(np.isfinite(value) for value in (logs or {}).values()):
            return  # a diverged epoch: fit fails, and a rerun must not go on from it
        best = self.keep_best
        size = self.checkpoint.save(
            State(
                epoch=epoch + 1,
                variables=[np.asarray(v.numpy()) for v in self.variables],
                best_weights=best.best_weights,
                best=None if best.best is None else float(best.best),
                best_epoch=int(best.best_epoch),
                wait=int(best.wait),
                stopped=bool(self.model.stop_training),
                history=self.history,
            )
        )
        if not self.said:
            self.said = True
            print(f"{self.checkpoint.stage}: each epoch kept in {self.checkpoint.folder} ({size / 1e6:.0f} MB)")


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

    def __init__(self, name: str, history: dict[str, list[float]]) -> None:
        super().__init__()
        self.name, self.path, self.history = name, paths.watched_curves(name, os.getpid()), history

    def on_train_begin(self, logs: dict | None = None) -> None:
        for old in paths.WATCH_DIR.glob(f"{glob.escape(self.name)}.*.csv"):
            pid = old.name[len(self.name) + 1 : -len(".csv")]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                old.unlink(missing_ok=True)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
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
