"""train.strategy: mirrored over two devices is what it says, and trains as one device does."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from dogs_vs_cats.datasets import load_features
from tests.conftest import LEARNABLE, REPO, call_stage, inside, write_params

# Two logical CPU devices, made before TensorFlow starts; then one stage, as `python -m` runs it (one stage
# a process, as DVC runs them: two MirroredStrategy instances in one process share collective keys).
TWO_CPUS = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import importlib
from dogs_vs_cats.common import run
run(importlib.import_module(f"stages.{sys.argv[1]}").main)
"""
# No dropout and no augmentation: their random draws differ per replica; the arithmetic must not.
SAME_MATH = {
    "image.batch_size": 64,  # few steps: RMSprop amplifies rounding differences step by step
    "head.batch_size": 64,
    "baseline.epochs": 2,
    "baseline.dropout": 0.0,
    "head.epochs": 2,
    "head.dropout": 0.0,
    "augment.flip": "none",
    "augment.rotation": 0.0,
    "augment.zoom": 0.0,
}
SAYS = {"one_device": "1 replica(s), OneDeviceStrategy", "mirrored": "2 replica(s), MirroredStrategy"}


def losses(root: Path, stage: str, split: str = "train") -> np.ndarray:
    """The loss of each epoch on ``split`` (train or validation), as the stage's curves.csv logged it."""
    curves = pd.read_csv(root / f"metrics/{stage}/curves.csv")
    return curves.loc[curves["split"] == split, "loss"].to_numpy()


@pytest.mark.slow
def test_mirrored_over_two_devices_gives_the_one_device_loss_curve(trained: Path, tmp_path: Path) -> None:
    for strategy, says in SAYS.items():
        root = tmp_path / strategy
        for folder in ("data/sample", "data/features"):
            shutil.copytree(trained / folder, root / folder)
        write_params(root / "params.yaml", {**LEARNABLE, **SAME_MATH, "train.strategy": strategy})
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        for stage, model in (("train_baseline", "baseline"), ("train_head", "head")):
            if strategy == "mirrored":
                command = [sys.executable, "-c", TWO_CPUS, stage]
                result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
            else:  # one device needs no logical devices: this process will do
                result = call_stage(stage, root)
            assert result.returncode == 0, result.stderr[-2000:]
            assert f"train.strategy {strategy}: {says}" in result.stdout
            assert (root / f"models/{model}.keras").is_file()
    for stage in ("train_baseline", "train_head"):
        one, two = losses(tmp_path / "one_device", stage), losses(tmp_path / "mirrored", stage)
        assert len(one) == len(two) == 2
        np.testing.assert_allclose(two, one, rtol=1e-4)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


# One global batch per epoch (the whole training set) and no dropout: the loop's curve is then fit's,
# whatever order each shuffles in, and patience stops both at the same epoch.
FULL_BATCH = {
    "head.batch_size": 2 * LEARNABLE["sample.train_per_class"],
    "head.dropout": 0.0,
    "head.epochs": 12,
    "head.patience": 2,
}


@pytest.mark.slow
def test_multi_worker_trains_the_head_as_fit_does_and_only_the_chief_writes(trained: Path, tmp_path: Path) -> None:
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    workers = []
    for index in range(2):
        root = tmp_path / f"worker{index}"  # each worker its own copy of the data, as on its own machine
        shutil.copytree(trained / "data/features", root / "data/features")
        write_params(root / "params.yaml", {**LEARNABLE, **FULL_BATCH, "train.strategy": "multi_worker"})
        task = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CONFIG": json.dumps(task)}
        command = [sys.executable, "-m", "stages.train_head"]
        workers.append(subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    # Meanwhile, the same head with Keras' fit in this process.
    alone = tmp_path / "alone"
    shutil.copytree(trained / "data/features", alone / "data/features")
    write_params(alone / "params.yaml", {**LEARNABLE, **FULL_BATCH})
    result = call_stage("train_head", alone)
    assert result.returncode == 0, result.stderr[-2000:]
    try:
        results = [worker.communicate(timeout=240) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, (out, err) in zip(workers, results, strict=True):
        assert worker.returncode == 0, err.decode()[-2000:]
        assert "train.strategy multi_worker: 2 replica(s), MultiWorkerMirroredStrategy" in out.decode()
    chief, other = tmp_path / "worker0", tmp_path / "worker1"
    assert not (other / "models").exists() and not (other / "metrics").exists()
    # The same curves (the loss reduction, the replicas' gradient sum), the same early stop and best epoch.
    stopped = len(losses(alone, "train_head"))
    assert stopped < FULL_BATCH["head.epochs"]  # patience did stop it, so the comparison covers stopping
    for split in ("train", "validation"):
        np.testing.assert_allclose(losses(chief, "train_head", split), losses(alone, "train_head", split), rtol=1e-3)
    summaries = [json.loads((root / "metrics/train_head/metrics.json").read_text()) for root in (chief, alone)]
    assert summaries[0]["best"]["epoch"] == summaries[1]["best"]["epoch"]
    # The best epoch's weights were restored: the saved models score the validation features alike.
    with inside(chief):
        validation = load_features("validation")
    dog = [
        keras.models.load_model(root / "models/head.keras").predict(validation.features, verbose=0)
        for root in (chief, alone)
    ]
    np.testing.assert_allclose(dog[0], dog[1], atol=1e-3)


ONE = '{"worker": ["127.0.0.1:1"]}'


@pytest.mark.parametrize(
    ("stage", "tf_config", "error"),
    [
        ("train_baseline", '{"cluster": {"worker": ["127.0.0.1:1"]}}', "which only train_head supports"),
        ("train_head", "", "TF_CONFIG names no cluster; set it on every machine"),
        ("train_head", "{not json", "TF_CONFIG is not a JSON object"),
        ("train_head", '["127.0.0.1:1"]', "TF_CONFIG is not a JSON object"),
        ("train_head", '{"cluster": "127.0.0.1:1"}', 'has a "cluster" that is not a task type to host:port'),
        ("train_head", '{"cluster": {"worker": ["no port"]}}', 'has a "cluster" that is not a task type to host:port'),
        ("train_head", '{"cluster": {"worker": ["127.0.0.1:1"]}}', 'names no "task" of this machine'),
        ("train_head", f'{{"cluster": {ONE}, "task": {{"type": "chief"}}}}', 'names no "task" of this machine'),
        ("train_head", f'{{"cluster": {ONE}, "task": {{"type": "worker", "index": 1}}}}', "has task index 1, but its"),
        ("train_head", f'{{"cluster": {ONE}, "task": {{"type": "worker", "index": "0"}}}}', "has task index '0', but"),
    ],
)
def test_multi_worker_refuses_what_it_cannot_run_in_one_line(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str, tf_config: str, error: str
) -> None:
    for folder in ("data/sample", "data/features"):
        shutil.copytree(trained / folder, tmp_path / folder)
    write_params(tmp_path / "params.yaml", {**LEARNABLE, "train.strategy": "multi_worker"})
    monkeypatch.setenv("TF_CONFIG", tf_config)
    result = call_stage(stage, tmp_path)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: ") and "multi_worker" in line and error in line
    assert not (tmp_path / "models").exists() and not (tmp_path / "metrics").exists()


def _worker(root: Path, cluster: dict, index: int) -> subprocess.Popen:
    """``python -m stages.train_head`` as worker ``index`` of ``cluster``, its output unbuffered and piped."""
    task = {"cluster": cluster, "task": {"type": "worker", "index": index}}
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CONFIG": json.dumps(task), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "stages.train_head"]
    return subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _read_until(process: subprocess.Popen, text: str, seconds: float) -> None:
    """Read ``process``'s stdout until a line holds ``text``; fail after ``seconds``."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            if text in lines.get(timeout=left):
                return
        except queue.Empty:
            break
    raise AssertionError(f"no {text!r} within {seconds} s")


def _one_worker_of_two(trained: Path, root: Path, overrides: dict) -> tuple[dict, list[int]]:
    shutil.copytree(trained / "data/features", root / "data/features")
    write_params(root / "params.yaml", {**LEARNABLE, "train.strategy": "multi_worker", **overrides})
    ports = _free_ports(2)
    return {"worker": [f"127.0.0.1:{port}" for port in ports]}, ports


@pytest.mark.slow
def test_a_chief_whose_peer_never_starts_gives_up_at_the_timeout_in_one_line(trained: Path, tmp_path: Path) -> None:
    cluster, _ = _one_worker_of_two(trained, tmp_path, {"train.cluster_timeout": 3})
    started = time.monotonic()
    chief = _worker(tmp_path, cluster, 0)
    out, err = chief.communicate(timeout=60)
    assert chief.returncode == 1, err[-2000:]
    assert err.strip().splitlines()[-1] == (
        "error: train.strategy is multi_worker, but the cluster of TF_CONFIG did not form within "
        "train.cluster_timeout (3 s): start train_head on every machine it names, or check their addresses"
    )
    assert "train_head: waiting up to 3 s for the 2 tasks of TF_CONFIG's cluster" in out
    assert time.monotonic() - started < 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "params.yaml"]


@pytest.mark.slow
def test_sigterm_ends_a_chief_waiting_for_its_cluster_within_seconds(trained: Path, tmp_path: Path) -> None:
    cluster, ports = _one_worker_of_two(trained, tmp_path, {})
    chief = _worker(tmp_path, cluster, 0)
    try:
        _read_until(chief, "waiting up to 300 s", 60)
        deadline = time.monotonic() + 60
        while socket.socket().connect_ex(("127.0.0.1", ports[0])) != 0:  # its server is up: TensorFlow waits
            assert time.monotonic() < deadline, "the chief's server never started"
            time.sleep(0.2)
        (child,) = map(int, Path(f"/proc/{chief.pid}/task/{chief.pid}/children").read_text().split())
        stopped = time.monotonic()
        chief.send_signal(signal.SIGTERM)
        _, err = chief.communicate(timeout=10)
    finally:
        chief.kill()
    assert time.monotonic() - stopped < 5
    assert chief.returncode == 143 and err.strip().splitlines()[-1] == "error: terminated"
    assert not Path(f"/proc/{child}").exists()  # the process inside TensorFlow is gone too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "params.yaml"]


@pytest.mark.slow
def test_when_a_peer_dies_mid_run_the_chief_stops_in_one_line_and_keeps_the_last_metrics(
    trained: Path, tmp_path: Path
) -> None:
    chief_root, other_root = tmp_path / "chief", tmp_path / "other"
    cluster, _ = _one_worker_of_two(trained, chief_root, {"head.epochs": 100000, "head.patience": None})
    _one_worker_of_two(trained, other_root, {"head.epochs": 100000, "head.patience": None})
    last_run = chief_root / "metrics/train_head"
    last_run.mkdir(parents=True)
    (last_run / "metrics.json").write_text('{"step": 4}\n')
    chief, other = _worker(chief_root, cluster, 0), _worker(other_root, cluster, 1)
    try:
        _read_until(chief, "epoch 3/100000", 120)
        other.send_signal(signal.SIGTERM)
        assert other.wait(timeout=10) == 143
        _, err = chief.communicate(timeout=60)
    finally:
        chief.kill()
        other.kill()
    assert chief.returncode == 1
    assert err.strip().splitlines()[-1].startswith("error: multi_worker training stopped: a worker of TF_CONFIG's")
    assert [p.name for p in last_run.parent.iterdir()] == ["train_head"]  # no temp folder left beside it
    assert [p.name for p in last_run.iterdir()] == ["metrics.json"]
    assert (last_run / "metrics.json").read_text() == '{"step": 4}\n'
    assert not (chief_root / "models/head.keras").exists()
