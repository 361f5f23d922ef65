"""Training across machines (``train.strategy: multi_worker``): TF_CONFIG, a bounded wait, and the loop.

Keras 3's fit fails under MultiWorkerMirroredStrategy (keras-team/keras#20585: "Attempt to convert a value
(PerReplica...)"), so a stage that trains across machines passes ``strategy`` to ``training.distribution``
and ``fit_binary_across_workers`` to ``training.fit``; today that is ``train_head``. Only it depends on this
module, so a change here re-runs no other stage.
"""

from __future__ import annotations

import functools
import json
import os
import re
import select
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from dvclive import Live

from dogs_vs_cats.common import PipelineError, remove_stale_temps


def strategy() -> tf.distribute.Strategy:
    """``MultiWorkerMirroredStrategy`` over TF_CONFIG's cluster, made before anything starts TensorFlow's runtime;
    then tells the waiting parent (``run_as_worker``) that the cluster formed."""
    check_tf_config()
    made = tf.distribute.MultiWorkerMirroredStrategy()
    _say_ready()
    return made


_TF_CONFIG_HELP = 'set it on every machine (docs/experiments-and-scaling.md, "One run on several machines")'


def check_tf_config() -> dict:
    """``TF_CONFIG`` as ``multi_worker`` needs it (a cluster of ``host:port`` lists, this machine's task in it), or
    a PipelineError naming what is wrong."""

    def wrong(problem: str) -> PipelineError:
        return PipelineError(f"train.strategy is multi_worker but TF_CONFIG {problem}; {_TF_CONFIG_HELP}")

    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except ValueError:
        raise wrong("is not a JSON object") from None
    if not isinstance(config, dict):
        raise wrong("is not a JSON object")
    cluster = config.get("cluster")
    if not cluster:
        raise wrong("names no cluster")
    addresses = cluster.values() if isinstance(cluster, dict) else [None]
    if not all(
        isinstance(a, list) and a and all(isinstance(x, str) and ADDRESS.fullmatch(x) for x in a) for a in addresses
    ):
        raise wrong(
            'has a "cluster" that is not a task type to host:port list map, e.g. {"worker": ["h1:2222", "h2:2222"]}'
        )
    task = config.get("task")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise wrong(
            f'names no "task" of this machine: use {{"type": one of {", ".join(map(repr, cluster))}, "index": N}}'
        )
    index, count = task.get("index", 0), len(cluster[task["type"]])
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
        raise wrong(
            f"has task index {index!r}, but its cluster has {count} {task['type']} task(s): use 0 to {count - 1}"
        )
    return config


ADDRESS = re.compile(r"[^\s:/]+:\d{1,5}|\[[0-9a-fA-F:.]+\]:\d{1,5}")
# Set for the child process that ``run_as_worker`` starts: the pipe it says "ready" on once the cluster formed.
_READY_FD = "DOGS_VS_CATS_WORKER_READY_FD"


def is_worker_process() -> bool:
    """Whether this process is the child ``run_as_worker`` started (which trains), not its parent (which waits)."""
    return _READY_FD in os.environ


def run_as_worker(stage: str, outputs: tuple[Path, ...], timeout: float) -> None:
    """Run this ``multi_worker`` stage as a child process and wait for it, so that the wait has a bound and a
    signal stops it. Inside TensorFlow neither holds: waiting for the cluster, it keeps the GIL (no Python
    thread or signal handler runs), and it catches SIGTERM itself. Here the child must say the cluster formed
    within ``timeout`` seconds; SIGINT or SIGTERM kill it at once and remove its temp ``outputs``; its exit
    status becomes this process's."""
    cluster = check_tf_config()["cluster"]
    print(
        f"{stage}: waiting up to {timeout:g} s for the {sum(map(len, cluster.values()))} tasks of TF_CONFIG's cluster"
    )
    sys.stdout.flush()
    read, write = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-m", f"stages.{stage}"], env={**os.environ, _READY_FD: str(write)}, pass_fds=(write,)
    )
    os.close(write)
    try:
        if not select.select([read], [], [], timeout)[0]:
            raise PipelineError(
                f"train.strategy is multi_worker, but the cluster of TF_CONFIG did not form within "
                f"train.cluster_timeout ({timeout:g} s): start {stage} on every machine it names, or check their "
                "addresses"
            )
        code = child.wait()  # said ready, or ended before (its own error line is printed)
    finally:
        os.close(read)
        if child.poll() is None:
            child.kill()  # SIGKILL: TensorFlow would swallow a SIGTERM
            child.wait()
            for output in outputs:
                remove_stale_temps(output)
    if code:
        raise SystemExit(code)


def _say_ready() -> None:
    fd = os.environ.pop(_READY_FD, None)
    if fd is not None:
        os.write(int(fd), b"ready")
        os.close(int(fd))


def _one_line_when_a_peer_fails(loop: Callable[..., dict]) -> Callable[..., dict]:
    """A worker that dies or stops answering fails the collective ops: one line, not TensorFlow's traceback."""

    @functools.wraps(loop)
    def guarded(*args: Any) -> dict:
        try:
            return loop(*args)
        except tf.errors.OpError as error:
            reason = (error.message or type(error).__name__).strip().splitlines()[0][:200]
            raise PipelineError(
                f"multi_worker training stopped: a worker of TF_CONFIG's cluster failed ({reason}); "
                "start every worker again"
            ) from None

    return guarded


@_one_line_when_a_peer_fails
def fit_binary_across_workers(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray],
    epochs: int,
    patience: int | None,
    batch_size: int,
    live: Live | None,
) -> dict[str, list[float]]:
    """``training.fit``'s loop for a binary classifier on arrays (binary cross-entropy, P >= 0.5 called 1) under
    ``MultiWorkerMirroredStrategy``, in TensorFlow's custom-loop form, as Keras' fit
    cannot (keras-team/keras#20585): each epoch shuffles the training set with the global seed (the same
    order on every worker), splits each global batch of ``batch_size`` between the replicas, sums their
    gradients, and logs what ``fit`` logs; the best epoch's weights are restored, ``patience`` stops early.
    Every worker scores the whole validation set with the same weights, so all agree on when to stop.
    """
    strategy = tf.distribute.get_strategy()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train = (
        tf.data.Dataset.from_tensor_slices((x, np.asarray(y, dtype=np.float32).reshape(-1, 1)))
        .shuffle(len(x), reshuffle_each_iteration=True)
        .batch(batch_size)
        .with_options(options)
    )
    batches = strategy.experimental_distribute_dataset(train)
    loss = keras.losses.BinaryCrossentropy(reduction=None)
    model.optimizer.build(model.trainable_variables)  # its slots, mirrored, before the first step

    @tf.function
    def train_step(features: tf.Tensor, labels: tf.Tensor) -> list[tf.Tensor]:
        def replica_step(features: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, ...]:
            with tf.GradientTape() as tape:
                dog = tf.cast(model(features, training=True), tf.float32)
                losses = loss(labels, dog)
                mean = tf.nn.compute_average_loss(losses)  # over the global batch: the replicas' gradients sum
            model.optimizer.apply_gradients(
                zip(tape.gradient(mean, model.trainable_variables), model.trainable_variables, strict=True)
            )
            right = tf.reduce_sum(tf.cast((dog >= 0.5) == (labels >= 0.5), tf.float32))
            return tf.reduce_sum(losses), right, tf.cast(tf.shape(labels)[0], tf.float32)

        totals = strategy.run(replica_step, args=(features, labels))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, total, axis=None) for total in totals]

    def scores(features: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
        dog = np.concatenate(
            [model(features[i : i + batch_size], training=False).numpy() for i in range(0, len(features), batch_size)]
        ).astype(np.float32)
        labels = np.asarray(labels, dtype=np.float32).reshape(-1, 1)
        return float(np.mean(loss(labels, dog))), float(np.mean((dog >= 0.5) == (labels >= 0.5)))

    history: dict[str, list[float]] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    best, best_weights, waited = np.inf, model.get_weights(), 0
    for epoch in range(epochs):
        summed, right, seen = 0.0, 0.0, 0.0
        for features, labels in batches:
            step = [float(value) for value in train_step(features, labels)]
            summed, right, seen = summed + step[0], right + step[1], seen + step[2]
        val_loss, val_accuracy = scores(*validation)
        logs = {"loss": summed / seen, "accuracy": right / seen, "val_loss": val_loss, "val_accuracy": val_accuracy}
        print(f"epoch {epoch + 1}/{epochs}: " + ", ".join(f"{name} {value:.4f}" for name, value in logs.items()))
        for name, value in logs.items():
            history[name].append(value)
            if live is not None:
                live.log_metric(f"eval/{name[4:]}" if name.startswith("val_") else f"train/{name}", value)
        if live is not None:
            live.next_step()
        if val_loss < best:
            best, best_weights, waited = val_loss, model.get_weights(), 0
        else:
            waited += 1
            if patience is not None and waited >= patience:
                break
    if live is not None:
        live.end()  # as DVCLiveCallback ends training
    model.set_weights(best_weights)
    return history
