"""train.strategy: mirrored over two devices is what it says, and trains as one device does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import LEARNABLE, REPO, call_stage, write_params

# Two logical CPU devices, made before TensorFlow starts; then one stage, as `python -m` runs it (one stage
# a process, as DVC runs them: two MirroredStrategy instances in one process share collective keys).
TWO_CPUS = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import importlib
from runtime.program import run
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
        # Two replicas add a batch's gradients in another order: the first epoch agrees to rounding (1e-5 on
        # the baseline), and RMSprop amplifies it step by step (7e-4 at epoch 2, 0.6441 against 0.6437).
        np.testing.assert_allclose(two[0], one[0], rtol=1e-4)
        np.testing.assert_allclose(two, one, rtol=2e-3)
