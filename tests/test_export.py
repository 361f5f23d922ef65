"""stages.export: the SavedModel and TFLite files compute what the Keras model computes, and serve raw pixels."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from dogs_vs_cats import export
from dogs_vs_cats.datasets import image_dataset
from dogs_vs_cats.models import built_under, load_saved
from stages.export import TOLERANCE, export_one
from tests.conftest import LEARNABLE, inside


@pytest.fixture(scope="module")
def exported(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """The shared pipeline's fine-tuned model exported once, with what the stage checked."""
    folder = tmp_path_factory.mktemp("export")
    with inside(trained):
        test = image_dataset("test", LEARNABLE["image.size"], 16, shuffle=False, seed=0)
        checked = export_one(load_saved(Path("models/finetuned.keras")), test, folder, 0.5)
    return folder, checked


def _test_batch(trained: Path) -> tuple[np.ndarray, np.ndarray]:
    """The test split's pixels as training feeds them, and the Keras model's P(dog) for them."""
    with inside(trained):
        images = image_dataset("test", LEARNABLE["image.size"], 64, shuffle=False, seed=0)
        pixels = np.concatenate([x.numpy() for x, _ in images])
        return pixels, load_saved(Path("models/finetuned.keras")).predict(pixels, verbose=0)


@pytest.mark.slow
def test_each_exported_file_computes_the_keras_models_outputs(trained: Path, exported) -> None:
    folder, checked = exported
    pixels, expected = _test_batch(trained)
    assert checked.test_images == len(pixels) == 2 * LEARNABLE["sample.test_per_class"]
    assert checked.float32_max_abs_difference <= 1e-5
    served = export.load_saved_model(folder / export.SAVED_MODEL)
    np.testing.assert_allclose(np.asarray(served.serve(pixels)), expected, atol=1e-5)
    lite = export.LiteModel((folder / export.TFLITE).read_bytes())
    np.testing.assert_allclose(lite(pixels), expected, atol=1e-5)
    # float16 weights: close, not equal, and half the file.
    lite16 = export.LiteModel((folder / export.TFLITE_FLOAT16).read_bytes())
    np.testing.assert_allclose(lite16(pixels), expected, atol=0.05)
    assert checked.float16_bytes < 0.6 * checked.float32_bytes == 0.6 * (folder / export.TFLITE).stat().st_size
    accuracy = float(np.mean((lite16(pixels)[:, 0] >= 0.5) == np.repeat([0, 1], len(pixels) // 2)))
    assert checked.float16_accuracy == pytest.approx(accuracy)


@pytest.mark.slow
def test_the_saved_model_serves_raw_photos_the_same_answer_every_call(trained: Path, exported) -> None:
    """TF Serving's view: pixels straight from the files, resized, no preprocessing by the caller; the model
    infers (no augmentation, no dropout), so the same batch gets the same answer twice and Keras' answer."""
    folder, _ = exported
    files = sorted((trained / "data/sample/test").rglob("*.jpg"))[:8]
    size = LEARNABLE["image.size"]
    raw = np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size)), dtype="float32") for f in files])
    served = export.load_saved_model(folder / export.SAVED_MODEL)
    first, second = np.asarray(served.serve(raw)), np.asarray(served.serve(raw))
    np.testing.assert_array_equal(first, second)
    keras_model = load_saved(trained / "models/finetuned.keras")
    np.testing.assert_allclose(first, keras_model.predict(raw, verbose=0), atol=1e-5)
    assert first.shape == (8, 1) and ((first >= 0) & (first <= 1)).all()


def test_a_model_trained_in_bfloat16_is_exported_in_float32_with_its_weights() -> None:
    with built_under("mixed_bfloat16"):
        inputs = keras.Input((6, 6, 3))
        hidden = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
        outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32")(keras.layers.Flatten()(hidden))
        model = keras.Model(inputs, outputs)
    clone = export.in_float32(model)
    assert {layer.compute_dtype for layer in clone.layers} == {"float32"}
    for ours, theirs in zip(clone.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    x = np.random.default_rng(0).uniform(0, 255, (4, 6, 6, 3)).astype("float32")
    np.testing.assert_allclose(clone.predict(x, verbose=0), model.predict(x, verbose=0), atol=0.05)
    assert export.in_float32(clone) is clone  # a float32 model is exported as it is


def test_an_export_that_computes_something_else_stops_the_stage(tmp_path: Path, monkeypatch) -> None:
    from dogs_vs_cats.common import PipelineError

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(inputs))
    real = export.LiteModel.__call__
    monkeypatch.setattr(export.LiteModel, "__call__", lambda self, batch: real(self, batch) + 2 * TOLERANCE)
    test = [(np.ones((3, 4), "float32"), np.array([0, 1, 1]))]
    with pytest.raises(PipelineError, match=r"the exported model's outputs differ from the Keras model's by 0\.0002"):
        export_one(model, test, tmp_path, 0.5)
