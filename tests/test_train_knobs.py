"""train.precision, train.jit_compile and train.deterministic: each builds, trains, saves and loads on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from stages import finetune, train_baseline, train_frozen, train_head
from tests.conftest import LEARNABLE, REPO, inside, write_params


@pytest.mark.parametrize(
    ("precision", "jit_compile", "compute"),
    [("mixed_float16", False, "float16"), ("mixed_bfloat16", True, "bfloat16")],  # float32: every other test
)
def test_every_precision_trains_saves_and_loads(
    copy_of_trained: Path, precision: str, jit_compile: bool, compute: str
) -> None:
    overrides = {"train.precision": precision, "train.jit_compile": jit_compile}
    write_params(copy_of_trained / "params.yaml", {**LEARNABLE, **overrides, "baseline.epochs": 1, "head.epochs": 1})
    try:
        with inside(copy_of_trained):
            for stage in (train_baseline, train_head, train_frozen, finetune):
                stage.main()
    finally:
        keras.mixed_precision.set_global_policy("float32")  # the policy is global: leave it as other tests expect
    for name in ("baseline", "head", "frozen", "finetuned"):
        model = keras.models.load_model(copy_of_trained / f"models/{name}.keras")
        assert model.outputs[0].dtype == "float32", name  # the sigmoid stays float32 under mixed precision
        convolutions_or_dense = [
            layer for layer in _layers(model) if isinstance(layer, keras.layers.Dense | keras.layers.Conv2D)
        ]
        assert convolutions_or_dense[0].compute_dtype == compute, name  # the policy reached the hidden layers
        inputs = np.zeros((2, *model.input_shape[1:]), "float32")
        assert np.isfinite(model.predict(inputs, verbose=0)).all()


def _layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer, nested models opened."""
    out = []
    for layer in model.layers:
        out += _layers(layer) if isinstance(layer, keras.Model) else [layer]
    return out


def test_deterministic_false_leaves_op_determinism_off() -> None:
    # Once on, op determinism cannot be turned off in a process: look in a fresh one.
    code = (
        "from tensorflow.python.framework.config import is_op_determinism_enabled as on; "
        "from stages.training import seed_everything; "
        "seed_everything(1, deterministic=False); print(on()); "
        "seed_everything(1, deterministic=True); print(on())"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.stdout.split() == ["False", "True"], result.stderr[-1500:]
