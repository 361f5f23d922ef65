"""stages.export: the SavedModel and TFLite files compute what the Keras model computes, and serve raw pixels;
stages.model_cards: the cards and metrics/export.json score what export kept."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dogs_vs_cats import export, paths
from dogs_vs_cats.datasets import image_dataset, resized_pixels
from dogs_vs_cats.exported import score
from dogs_vs_cats.models import built_under, load_saved
from runtime.errors import PipelineError
from stages.export import FLOAT16_TOLERANCE, TOLERANCE, disk_space_named, export_one
from tests.conftest import LEARNABLE, REPO, inside


@pytest.fixture(scope="module")
def exported(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """The shared pipeline's fine-tuned model exported once, with what the stage checked."""
    folder = tmp_path_factory.mktemp("export")
    with inside(trained):
        test = image_dataset("test", LEARNABLE["image.side"], 16)
        checked = score(export_one(load_saved(Path("models/finetuned.keras")), test, paths.export_files(folder)), 0.5)
    return folder, checked


def _test_batch(trained: Path) -> tuple[np.ndarray, np.ndarray]:
    """The test split's pixels as training feeds them, and the Keras model's P(dog) for them."""
    with inside(trained):
        images = image_dataset("test", LEARNABLE["image.side"], 64)
        pixels = np.concatenate([x.numpy() for x, _ in images])
        return pixels, load_saved(Path("models/finetuned.keras")).predict(pixels, verbose=0)


@pytest.mark.slow
def test_each_exported_file_computes_the_keras_models_outputs(trained: Path, exported) -> None:
    folder, checked = exported
    pixels, expected = _test_batch(trained)
    assert checked.test_images == len(pixels) == 2 * LEARNABLE["sample.test_per_class"]
    assert checked.float32_max_abs_difference <= 1e-5
    served = export.load_saved_model(paths.export_files(folder).saved_model)
    np.testing.assert_allclose(np.asarray(served.serve(pixels)), expected, atol=1e-5)
    lite = export.LiteModel((paths.export_files(folder).tflite).read_bytes())
    np.testing.assert_allclose(lite(pixels), expected, atol=1e-5)
    # float16 weights: close, not equal, and half the file.
    lite16 = export.LiteModel((paths.export_files(folder).tflite_float16).read_bytes())
    np.testing.assert_allclose(lite16(pixels), expected, atol=0.05)
    assert (
        checked.float16_bytes < 0.6 * checked.float32_bytes == 0.6 * (paths.export_files(folder).tflite).stat().st_size
    )
    accuracy = float(np.mean((lite16(pixels)[:, 0] >= 0.5) == np.repeat([0, 1], len(pixels) // 2)))
    assert checked.float16_accuracy == pytest.approx(accuracy)


@pytest.mark.slow
def test_the_saved_model_serves_raw_photos_the_same_answer_every_call(trained: Path, exported) -> None:
    """TF Serving's view: pixels straight from the files, resized, no preprocessing by the caller; the model
    infers (no augmentation, no dropout), so the same batch gets the same answer twice and Keras' answer."""
    folder, _ = exported
    files = sorted((trained / "data/sample/test").rglob("*.jpg"))[:8]
    size = LEARNABLE["image.side"]
    raw = np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size)), dtype="float32") for f in files])
    served = export.load_saved_model(paths.export_files(folder).saved_model)
    first, second = np.asarray(served.serve(raw)), np.asarray(served.serve(raw))
    np.testing.assert_array_equal(first, second)
    keras_model = load_saved(trained / "models/finetuned.keras")
    np.testing.assert_allclose(first, keras_model.predict(raw, verbose=0), atol=1e-5)
    assert first.shape == (8, 1) and ((first >= 0) & (first <= 1)).all()


def test_a_model_trained_in_bfloat16_is_exported_in_float32_with_its_weights(tmp_path: Path) -> None:
    # Nested, as the fine-tuned model nests the extractor and the head, and loaded from disk: a loaded model's
    # nested models kept bfloat16 through clone_model, and the TFLite converter refused their operations.
    with built_under("mixed_bfloat16"):
        inner_in = keras.Input((6, 6, 3))
        inner = keras.Model(inner_in, keras.layers.Conv2D(4, 3, activation="relu")(inner_in), name="extractor")
        inputs = keras.Input((6, 6, 3))
        flat = keras.layers.Flatten()(inner(inputs))
        model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", dtype="float32")(flat))
    model.compile(optimizer="rmsprop", loss="binary_crossentropy")
    model.save(tmp_path / "model.keras")
    loaded = load_saved(tmp_path / "model.keras")
    clone = export.in_float32(loaded)
    assert {layer.compute_dtype for layer in _layers(clone)} == {"float32"}
    assert {layer.compute_dtype for layer in _layers(loaded)} == {"float32", "bfloat16"}  # the original is left be
    for ours, theirs in zip(clone.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    x = np.random.default_rng(0).uniform(0, 255, (4, 6, 6, 3)).astype("float32")
    np.testing.assert_allclose(clone.predict(x, verbose=0), model.predict(x, verbose=0), atol=0.05)
    export.saved_model(clone, tmp_path / "saved")
    assert export.tflite(tmp_path / "saved")  # built-in float32 ops only
    # Only the weights travel: the optimizer's slots would be stored in the SavedModel too.
    assert model.optimizer is not None and getattr(export.in_float32(model), "optimizer", None) is None


def _layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [leaf for layer in model.layers for leaf in (_layers(layer) if isinstance(layer, keras.Model) else [layer])]


def _dense(value: float = 0.1) -> keras.Model:
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(inputs))
    model.set_weights([np.full((4, 1), value, "float32"), np.zeros(1, "float32")])
    return model


def test_a_model_that_outputs_nan_is_never_exported(tmp_path: Path) -> None:
    # max(0.0, nan) is 0.0 and nan > tolerance is False: a NaN model passed every check.
    test = [(np.ones((3, 4), "float32"), np.array([0, 1, 1]))]
    with pytest.raises(PipelineError, match=r"outputs on its test split are not all finite; train it again"):
        export_one(_dense(float("nan")), test, paths.export_files(tmp_path))


def test_the_float16_file_is_held_to_its_tolerance(tmp_path: Path, monkeypatch) -> None:
    other = tmp_path / "other"
    export.saved_model(_dense(-0.3), other)
    real = export.tflite
    monkeypatch.setattr(export, "tflite", lambda saved, float16=False: real(other if float16 else saved, float16))
    test = [(np.ones((3, 4), "float32"), np.array([0, 1, 1]))]
    (tmp_path / "out").mkdir()
    with pytest.raises(PipelineError, match=rf"exported float16 outputs differ .* \(more than {FLOAT16_TOLERANCE}\)"):
        export_one(_dense(), test, paths.export_files(tmp_path / "out"))


def test_a_healthy_export_prints_no_warning_and_no_tflite_info(tmp_path: Path, capfd) -> None:
    # Uneven batches traced Keras' predict step twice a model (TensorFlow's retracing warning by the third
    # model) and TFLite's XNNPACK delegate announced itself on stderr.
    rng = np.random.default_rng(0)
    test = [(rng.uniform(0, 1, (n, 4)).astype("float32"), rng.integers(0, 2, n)) for n in (8, 8, 3)]
    capfd.readouterr()
    for n in range(4):
        (tmp_path / str(n)).mkdir()
        export_one(_dense(0.1 * n), test, paths.export_files(tmp_path / str(n)))
    err = capfd.readouterr().err
    assert "retracing" not in err and "XNNPACK" not in err and "WARNING" not in err, err


def test_export_takes_one_exported_models_name_and_needs_its_model_first(workdir: Path) -> None:
    from tests.conftest import call_stage

    for args in ((), ("cifar10",), ("mnist", "fashion_mnist")):
        result = call_stage("export", workdir, args)
        assert (result.returncode, result.stderr) == (
            1,
            "error: usage: python -m stages.export {cats_dogs,mnist,fashion_mnist}\n",
        ), args
    result = call_stage("export", workdir, ("mnist",))
    assert result.returncode == 1 and result.stderr.startswith("error: models/digits/mnist.keras: ")
    assert result.stderr.count("\n") == 1 and not (workdir / "models/export").exists()
    # Another model in the fine-tuned model's place (a digits one), then the right kind without test images.
    digits = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    (workdir / "models").mkdir()
    digits.save(workdir / "models/finetuned.keras")
    assert call_stage("export", workdir, ("cats_dogs",)).stderr == (
        "error: models/finetuned.keras: takes (28, 28, 1) and gives (10,), not what the cats_dogs model takes and "
        "gives; run dvc repro -f -s finetune\n"
    )
    keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(1)]).save(
        workdir / "models/finetuned.keras"
    )
    for label in ("cat", "dog"):
        (workdir / "data/sample/test" / label).mkdir(parents=True)
    result = call_stage("export", workdir, ("cats_dogs",))
    assert (result.returncode, result.stderr.count("\n")) == (1, 1), result.stderr
    assert result.stderr.startswith("error: data/sample") and "run dvc repro -f -s sample" in result.stderr
    assert not (workdir / "models/export").exists()


def test_missing_or_damaged_metrics_stop_model_cards_before_any_card(workdir: Path) -> None:
    from tests.conftest import call_stage

    metrics = workdir / "metrics"
    (metrics / "finetune").mkdir(parents=True)
    (metrics / "evaluate.json").write_text(
        '{"test_images": 4, "finetuned": {"accuracy": 0.5, "accuracy_ci95": {"low": 0.4, "high": 0.6}, "log_loss": 0.7,'
        ' "params": 10, "gmacs": 0.1, "roc_auc": null}}'
    )
    (metrics / "finetune/metrics.json").write_text('{"best": {"epoch": 1, "loss"')
    result = call_stage("model_cards", workdir)
    assert result.returncode == 1
    assert result.stderr.startswith("error: metrics/finetune/metrics.json: cannot read it (")
    assert result.stderr.rstrip().endswith("run dvc repro -f -s finetune") and result.stderr.count("\n") == 1
    (metrics / "finetune/metrics.json").write_text('{"best": {"loss": 0.1}}')
    result = call_stage("model_cards", workdir)
    assert result.stderr == (
        "error: metrics/finetune/metrics.json: best.epoch is None, not a number; run dvc repro -f -s finetune\n"
    )
    assert not (workdir / "models/export").exists()


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        tf.errors.ResourceExhaustedError(None, None, "models/export/x/variables.data: No space left on device"),
    ],
)
def test_a_full_disk_is_one_line(error: Exception) -> None:
    with pytest.raises(PipelineError) as raised, disk_space_named(Path("models/export/mnist"), "run it again"):
        raise error
    assert str(raised.value) == "models/export/mnist: no space left on the device; free some, then run it again"


def test_other_write_errors_stay_tracebacks() -> None:
    with pytest.raises(PermissionError), disk_space_named(Path("models/export/mnist"), "run it again"):
        raise PermissionError(errno.EACCES, "Permission denied")


def test_an_export_that_computes_something_else_stops_the_stage(tmp_path: Path, monkeypatch) -> None:
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(inputs))
    real = export.LiteModel.__call__
    monkeypatch.setattr(export.LiteModel, "__call__", lambda self, batch: real(self, batch) + 2 * TOLERANCE)
    test = [(np.ones((3, 4), "float32"), np.array([0, 1, 1]))]
    with pytest.raises(PipelineError, match=r"the exported tflite outputs differ from the Keras model's by 0\.0002"):
        export_one(model, test, paths.export_files(tmp_path))


EXPORT_ONE = """
import sys
from pathlib import Path
from runtime import tf_log
from dogs_vs_cats import export
from dogs_vs_cats.models import load_saved
export.saved_model(export.in_float32(load_saved(Path(sys.argv[1]))), Path(sys.argv[2]))
"""


def test_the_same_model_gives_the_same_saved_model_bytes_each_weight_once(tmp_path: Path) -> None:
    # Keras' ExportArchive wrote its variables in a different order each run (a rerun always showed export
    # modified) and stored each weight twice, as a Keras variable and as its TensorFlow value. Then the
    # float32 rebuild's random layers (augmentation, dropout) drew fresh seed states, which were saved too.
    import subprocess
    import sys

    from tests.conftest import REPO

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3)(keras.layers.RandomFlip()(inputs)))
    head_in = keras.Input(x.shape[1:])
    head = keras.Model(head_in, keras.layers.Dense(1)(keras.layers.Dropout(0.5)(head_in)), name="head")
    keras.Model(inputs, head(x)).save(tmp_path / "model.keras")
    for run in ("first", "second"):  # as the export stage runs: a fresh process loads the saved model
        subprocess.run(
            [sys.executable, "-c", EXPORT_ONE, str(tmp_path / "model.keras"), str(tmp_path / run)],
            check=True,
            capture_output=True,
            cwd=REPO,
        )
    files = sorted(path.relative_to(tmp_path / "first") for path in (tmp_path / "first").rglob("*") if path.is_file())
    assert len(files) >= 4
    for name in files:
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name
    checkpoint = tf.train.load_checkpoint(str(tmp_path / "first/variables/variables"))
    shapes = checkpoint.get_variable_to_shape_map()
    stored = [shape for key, shape in shapes.items() if not key.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")]
    assert sum(int(np.prod(shape)) for shape in stored) == 3 * 3 * 3 * 4 + 4 + 144 + 1  # the weights, no seed
    served = export.load_saved_model(tmp_path / "first")
    assert served.serve(np.ones((2, 8, 8, 3), "float32")).shape == (2, 1)


def test_the_snippet_in_docs_export_md_serves_a_photo_resized_as_the_pipeline_does(tmp_path: Path, capsys) -> None:
    """docs/export.md's Python, run as written against a small SavedModel that the stage's own function wrote: for
    a photo larger than the model's input (so that each resize filter gives other pixels), it prints what the Keras
    model says of the pipeline's resize of the photo."""
    (snippet,) = re.findall(r"^```python\n(.*?)^```", (REPO / "docs/export.md").read_text(), re.M | re.S)
    side = 12
    inputs = keras.Input((side, side, 3))
    pixels = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    initializer = keras.initializers.RandomUniform(-0.1, 0.1, seed=0)
    model = keras.Model(inputs, keras.layers.Dense(1, "sigmoid", kernel_initializer=initializer)(pixels))
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 45, 3), dtype=np.uint8))
    with inside(tmp_path):
        saved = Path("models/export/cats_dogs/saved_model")
        export.saved_model(model, saved)
        Path("models/export/mnist").mkdir(parents=True)
        Path("models/export/mnist/model.tflite").write_bytes(export.tflite(saved))
        photo.save("my_cat.png")  # lossless: the test compares resizes, not two JPEG decoders' rounding
        exec(compile(snippet.replace("my_cat.jpg", "my_cat.png"), "docs/export.md", "exec"), {})
    printed = float(capsys.readouterr().out.strip().strip("[]"))
    expected = model.predict(resized_pixels(photo, side)[np.newaxis], verbose=0)[0, 0]
    assert printed == pytest.approx(float(expected), abs=1e-5)
