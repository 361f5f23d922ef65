"""A training stage killed after any epoch resumes there on its next run, bit for bit, and never from a
checkpoint of other params or inputs."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from dogs_vs_cats import checkpoints
from tests.conftest import LEARNABLE, REPO, inside, run_stage, write_params

STAGE = "train_baseline"
EPOCHS = 4
# Fewer images than LEARNABLE's: nothing here asks that it learns, and an epoch still lasts far longer than a poll.
SETTINGS = {
    **LEARNABLE,
    "data.synthetic.per_class": 80,
    "sample.train_per_class": 60,
    "sample.validation_per_class": 10,
    "sample.test_per_class": 5,
    "baseline.epochs": EPOCHS,
    "baseline.patience": None,
}


@pytest.fixture(scope="module")
def sampled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with dvc.yaml (what keys a checkpoint), the LEARNABLE params and the sampled images."""
    from stages import download, sample

    root = tmp_path_factory.mktemp("sampled")
    shutil.copy(REPO / "dvc.yaml", root)
    write_params(root / "params.yaml", SETTINGS)
    with inside(root):
        download.main()
        sample.main()
    return root


def project(sampled: Path, tmp_path: Path, name: str, **overrides) -> Path:
    folder = tmp_path / name
    shutil.copytree(sampled, folder)
    write_params(folder / "params.yaml", {**SETTINGS, **overrides})
    return folder


def results(folder: Path) -> tuple[list[bytes], bytes, bytes]:
    """The saved model's weights, the curves and the summary, as bytes."""
    model = keras.models.load_model(folder / "models/baseline.keras")
    live = folder / "metrics" / STAGE
    weights = [np.asarray(w).tobytes() for w in model.get_weights()]
    return weights, (live / "curves.csv").read_bytes(), (live / "metrics.json").read_bytes()


def saved_epoch(store: Path) -> int:
    found = list(store.glob(f"{STAGE}.*/state.npz"))
    if not found:
        return 0
    try:
        with np.load(found[0], allow_pickle=False) as data:
            return json.loads(str(data["meta"]))["epoch"]
    except (OSError, ValueError, KeyError):
        return 0  # replaced while read: the next poll sees it


def killed_after(folder: Path, store: Path, epoch: int, signum: int = signal.SIGKILL) -> int:
    """Start the stage, kill it with ``signum`` as soon as a checkpoint of ``epoch`` or later is there (the
    next epoch has begun: the kill lands in its middle); the epoch it had kept."""
    env = {**os.environ, "PYTHONPATH": str(REPO), checkpoints.ENVIRONMENT: str(store)}
    process = subprocess.Popen(
        [sys.executable, "-m", f"stages.{STAGE}"], cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while (kept := saved_epoch(store)) < epoch:
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signum)
    process.communicate(timeout=60)
    assert process.returncode != 0
    return kept


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's checkpoint folder, where the stages it runs keep theirs."""
    monkeypatch.setenv(checkpoints.ENVIRONMENT, str(tmp_path / "checkpoints"))
    return tmp_path / "checkpoints"


@pytest.mark.slow
def test_a_run_killed_twice_ends_bit_for_bit_as_a_run_never_killed(sampled: Path, tmp_path: Path, store: Path) -> None:
    straight = project(sampled, tmp_path, "straight")
    done = run_stage(STAGE, straight)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{STAGE}: each epoch kept in {store}/{STAGE}." in done.stdout
    assert not any(store.iterdir())  # a stage that ended well keeps no checkpoint

    killed = project(sampled, tmp_path, "killed")
    first = killed_after(killed, store, 1)  # SIGKILL: an OOM kill, a lost machine
    second = killed_after(killed, store, first + 1, signal.SIGTERM)
    assert 1 <= first < second < EPOCHS
    resumed = run_stage(STAGE, killed)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{STAGE}: resuming after epoch {second} of {EPOCHS}, from {store}/{STAGE}." in resumed.stdout
    epochs = [line.split()[1] for line in resumed.stdout.splitlines() if line.startswith("epoch ")]
    assert epochs == [f"{n}/{EPOCHS}" for n in range(second + 1, EPOCHS + 1)]  # only the epochs left
    want, got = results(straight), results(killed)
    assert got[0] == want[0]  # every weight, to the bit
    assert got[1:] == want[1:]  # curves.csv and metrics.json, byte for byte
    assert not any(store.iterdir())


@pytest.mark.slow
def test_a_checkpoint_of_other_params_is_set_aside_never_resumed(sampled: Path, tmp_path: Path, store: Path) -> None:
    folder = project(sampled, tmp_path, "changed")
    killed_after(folder, store, 1)
    (old,) = store.iterdir()
    write_params(folder / "params.yaml", {**SETTINGS, "baseline.dropout": 0.25})  # shapes train_baseline
    rerun = run_stage(STAGE, folder)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming" not in rerun.stdout
    assert f"{STAGE}: set aside the checkpoint of other params or inputs, {old}" in rerun.stdout
    first_epoch = next(line for line in rerun.stdout.splitlines() if line.startswith("epoch "))
    assert first_epoch.startswith(f"epoch 1/{EPOCHS} ")
    assert not old.exists() and not any(store.iterdir())


def _saved(store: Path, stage: str = STAGE, best: float | None = 0.5) -> checkpoints.Checkpoint:
    """A checkpoint of ``stage`` holding one small epoch, its lock released."""
    checkpoint = checkpoints.Checkpoint(stage, "0123456789abcdef" * 4)
    assert checkpoint.open()
    weights = [np.ones(3, "float32")]
    kept = weights if best is not None else None
    checkpoint.save(checkpoints.State(1, weights, kept, best, best_epoch=0, wait=0, stopped=False, history={}))
    checkpoint.close()
    return checkpoint


def test_an_unreadable_checkpoint_is_set_aside_in_one_line_and_a_best_less_one_loads(store: Path, capsys) -> None:
    checkpoint = _saved(store, best=None)  # early stopping had no best yet: still a checkpoint to resume
    state = checkpoint.load()
    assert state is not None and state.best_weights is None and state.epoch == 1
    path = checkpoint.folder / "state.npz"
    whole = path.read_bytes()
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0xFF
    for damaged in (whole[: len(whole) // 2], b"", bytes(flipped)):  # truncated, empty, a bad CRC
        path.write_bytes(damaged)
        assert checkpoint.load() is None
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(
        line.startswith(f"{STAGE}: set aside an unreadable checkpoint, {path} (") for line in lines
    )


def test_only_checkpoints_are_set_aside_never_the_users_files_beside_them(store: Path, capsys) -> None:
    other = _saved(store)  # another computation's checkpoint of the same stage, nobody training it
    notes = store / f"{STAGE}.notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("precious")
    (store / f"{STAGE}.txt").write_text("mine")
    (store / f"{STAGE}.fedcba9876543210").mkdir()
    (store / f"{STAGE}.fedcba9876543210/thesis.tex").write_text("mine too")
    mine = checkpoints.Checkpoint(STAGE, "f" * 64)
    assert mine.open()
    mine.close()
    assert not other.folder.exists()
    assert (notes / "todo.txt").read_text() == "precious" and (store / f"{STAGE}.txt").read_text() == "mine"
    assert (store / f"{STAGE}.fedcba9876543210/thesis.tex").exists()
    assert capsys.readouterr().out.splitlines() == [
        f"{STAGE}: set aside the checkpoint of other params or inputs, {other.folder}"
    ]


def test_one_device_keeps_no_checkpoints(store: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from dogs_vs_cats import training
    from dogs_vs_cats.config import load_params

    params = load_params(REPO / "params.yaml")
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, strategy="one_device"))
    monkeypatch.setattr(training, "computation_key", lambda stage, versions: "0" * 64)
    with training.training_session(params, STAGE) as checkpoint:
        assert checkpoint is None
    assert f"{STAGE}: train.strategy one_device keeps no checkpoints" in capsys.readouterr().out
    assert not store.exists() or not any(store.iterdir())


def test_a_stage_that_fails_before_its_first_epoch_leaves_no_folder(store: Path) -> None:
    checkpoint = checkpoints.Checkpoint(STAGE, "1" * 64)
    assert checkpoint.open() and checkpoint.folder.is_dir()
    checkpoint.close()  # as training_session does when the stage fails: no epoch was kept
    assert not checkpoint.folder.exists()
    kept = _saved(store)
    assert (kept.folder / "state.npz").is_file()  # one that kept an epoch stays, to resume
