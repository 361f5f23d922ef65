"""train.precision, train.jit_compile and train.deterministic: each builds, trains, saves and loads on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

from dogs_vs_cats import export, paths
from dogs_vs_cats.costs import precision_of
from dogs_vs_cats.datasets import image_dataset
from dogs_vs_cats.models import load_saved
from dogs_vs_cats.stats import mcnemar
from stages import finetune, train_baseline, train_frozen, train_head
from stages.export import export_one
from tests.conftest import LEARNABLE, REPO, inside, write_params


@pytest.mark.parametrize("precision", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_only_float16_gets_loss_scaling(precision: str) -> None:
    """float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs none."""
    from dogs_vs_cats.config import HeadConfig
    from dogs_vs_cats.models import build_head, built_under
    from dogs_vs_cats.training import compile_binary

    with built_under(precision):
        model = build_head((4,), HeadConfig(False, 8, 0.0, 1e-3, 4, 1, None))
        compile_binary(model, 1e-3)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "mixed_float16")


def test_jit_compile_stays_on_only_where_xla_can_and_determinism_is_off(capsys) -> None:
    """XLA where every layer supports it and TensorFlow's op determinism is off; else the model trains without
    it, and one line says why where Keras would warn ("Model doesn't support jit_compile=True"). So with
    train.deterministic: true, the default, train.jit_compile: true changes nothing."""
    from tensorflow.python.framework import config as tf_config  # Keras' own tests toggle it this way

    from dogs_vs_cats.augmentation import augmentation
    from dogs_vs_cats.config import AugmentConfig, HeadConfig
    from dogs_vs_cats.models import build_head
    from dogs_vs_cats.training import compile_binary

    def head() -> keras.Model:
        return build_head((4,), HeadConfig(False, 8, 0.0, 1e-3, 4, 1, None))

    was_deterministic = tf_config.is_op_determinism_enabled()
    try:
        tf_config.disable_op_determinism()
        dense = head()
        compile_binary(dense, 1e-3, jit_compile=True)
        assert dense.jit_compile  # dense layers: XLA compiles the step
        inputs = keras.Input((8, 8, 3))
        augmented_inputs = augmentation(AugmentConfig("horizontal", 0.1, 0.1), 0)(inputs)
        augmented = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(augmented_inputs)))
        with warnings.catch_warnings():  # Keras would warn "doesn't support `jit_compile=True`": one line instead
            warnings.simplefilter("error")
            compile_binary(augmented, 1e-3, jit_compile=True)
            assert not augmented.jit_compile  # random augmentation layers: no XLA
            tf_config.enable_op_determinism()
            deterministic = head()
            compile_binary(deterministic, 1e-3, jit_compile=True)
            assert not deterministic.jit_compile  # op determinism: no XLA either
        said = capsys.readouterr().out.splitlines()
        assert said == [
            f"train.jit_compile: {augmented.name} trains without XLA, as its layers include some XLA cannot "
            "compile (random augmentation)",
            f"train.jit_compile: {deterministic.name} trains without XLA, as train.deterministic is true (XLA has "
            "no deterministic kernels for every op)",
        ]
    finally:
        (tf_config.enable_op_determinism if was_deterministic else tf_config.disable_op_determinism)()


@pytest.mark.parametrize(
    ("precision", "jit_compile", "compute"),
    [("mixed_float16", False, "float16"), ("mixed_bfloat16", True, "bfloat16")],  # float32: every other test
)
def test_every_precision_trains_saves_and_loads(
    copy_of_trained: Path, precision: str, jit_compile: bool, compute: str
) -> None:
    # bfloat16 fine-tunes through the cached frozen blocks, float16 end to end: both paths reach export.
    overrides = {
        "train.precision": precision,
        "train.jit_compile": jit_compile,
        "finetune.cache_frozen": precision == "mixed_bfloat16",
    }
    write_params(copy_of_trained / "params.yaml", {**LEARNABLE, **overrides, "baseline.epochs": 1, "head.epochs": 1})
    # A few training images are enough to build, train and save under a policy: float16 is emulated on a CPU.
    for split, kept in (("train", 16), ("validation", 8)):
        for folder in (copy_of_trained / "data/sample" / split).iterdir():
            for extra in sorted(folder.iterdir())[kept:]:
                extra.unlink()
    try:
        with inside(copy_of_trained):
            for stage in (train_baseline, train_head, train_frozen, finetune):
                stage.main()
    finally:
        keras.mixed_precision.set_global_policy("float32")  # the policy is global: leave it as other tests expect
    for stage in ("train_baseline", "train_head", "train_frozen", "finetune"):
        assert json.loads((copy_of_trained / f"metrics/{stage}/metrics.json").read_text())["policy"] == precision
    for name in ("baseline", "head", "frozen", "finetuned"):
        model = load_saved(copy_of_trained / f"models/{name}.keras")  # as the stages load it: no warning
        assert model.outputs[0].dtype == "float32", name  # the sigmoid stays float32 under mixed precision
        assert precision_of(model) == precision, name  # what evaluate and predict say it computes in
        convolutions_or_dense = [
            layer for layer in _layers(model) if isinstance(layer, keras.layers.Dense | keras.layers.Conv2D)
        ]
        assert convolutions_or_dense[0].compute_dtype == compute, name  # the policy reached the hidden layers
        inputs = np.zeros((2, *model.input_shape[1:]), "float32")
        assert np.isfinite(model.predict(inputs, verbose=0)).all()
    # Through export: the TFLite converter refused the bfloat16 and float16 operations of the nested extractor
    # and head, which a float32 rebuild of the outer model alone missed.
    with inside(copy_of_trained):
        trained = load_saved(Path("models/finetuned.keras"))
        test = image_dataset("test", LEARNABLE["image.side"], 16)
        kept = export_one(trained, test, paths.export_files(copy_of_trained / "export"))
        pixels = np.concatenate([x.numpy() for x, _ in test])
    served = export.load_saved_model(paths.export_files(copy_of_trained / "export").saved_model)
    # The card quotes the difference from the model it scores, the one trained in mixed precision, not from
    # its float32 rebuild (about 1e-7): rounding to 8 or 11 bits of mantissa shows.
    expected = np.abs(np.asarray(served.serve(pixels)) - trained.predict(pixels, verbose=0)).max()
    assert kept.float32_max_abs_difference == pytest.approx(expected, rel=1e-3)
    assert kept.float32_max_abs_difference > 1e-5, kept


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
        "from dogs_vs_cats.training import seed_everything; "
        "seed_everything(1, deterministic=False); print(on()); "
        "seed_everything(1, deterministic=True); print(on())"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.stdout.split() == ["False", "True"], result.stderr[-1500:]


def test_extract_features_runs_the_base_in_bfloat16_and_stores_float32(
    trained: Path, copy_of_trained: Path, capsys: pytest.CaptureFixture
) -> None:
    from dogs_vs_cats.datasets import load_features
    from stages import extract_features

    write_params(copy_of_trained / "params.yaml", {**LEARNABLE, "train.precision": "mixed_bfloat16"})
    try:
        with inside(copy_of_trained):
            extract_features.main()
            bf16 = load_features("validation")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert "train.precision mixed_bfloat16: layers compute in bfloat16" in capsys.readouterr().out
    with inside(trained):
        fp32 = load_features("validation")
    assert bf16.features.dtype == np.float32 and list(bf16.files) == list(fp32.files)
    # The same random base (seeded), computed in bfloat16: the same features to bfloat16's few digits.
    assert not np.array_equal(bf16.features, fp32.features)
    correlation = np.corrcoef(bf16.features.reshape(-1), fp32.features.reshape(-1))[0, 1]
    assert correlation > 0.99, correlation
    base = keras.models.load_model(copy_of_trained / "models/base.keras")
    first_conv = next(layer for layer in _layers(base) if isinstance(layer, keras.layers.Conv2D))
    assert first_conv.compute_dtype == "bfloat16"


FRESH_PER_CLASS = 200  # generated images a class that no stage has seen: one point of accuracy is 4 images
FRESH_SEED = 7_919  # apart from the synthetic archive's seeds


def _fresh_images(root: Path, size: int) -> Path:
    """``FRESH_PER_CLASS`` new generated cats and dogs in ``root/test/<class>/``, drawn as the archive's are."""
    from dogs_vs_cats.classes import CLASS_NAMES
    from dogs_vs_cats.synthetic import JPEG_QUALITY, draw_animal

    for label_index, label in enumerate(CLASS_NAMES):
        (root / "test" / label).mkdir(parents=True)
        for number in range(FRESH_PER_CLASS):
            rng = np.random.default_rng([FRESH_SEED, label_index, number])
            draw_animal(label, size, rng).save(root / "test" / label / f"{label}.{number}.jpg", quality=JPEG_QUALITY)
    return root


def _scores(folder: Path, images) -> dict[str, np.ndarray]:
    """P(dog) on ``images`` of the baseline and of the head on the base's features, as ``folder`` trained them."""
    base, baseline, head = (keras.models.load_model(folder / f"models/{n}.keras") for n in ("base", "baseline", "head"))
    return {
        "baseline": baseline.predict(images, verbose=0)[:, 0],
        "head": head.predict(base.predict(images, verbose=0), verbose=0)[:, 0],
    }


@pytest.mark.slow
def test_bfloat16_loses_no_significant_accuracy(trained: Path, copy_of_trained: Path, tmp_path) -> None:
    from dogs_vs_cats.datasets import image_dataset
    from stages import extract_features

    write_params(copy_of_trained / "params.yaml", {**LEARNABLE, "train.precision": "mixed_bfloat16"})
    try:
        with inside(copy_of_trained):
            for stage in (train_baseline, extract_features, train_head):
                stage.main()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for stage in ("train_baseline", "train_head"):
        summary = json.loads((copy_of_trained / f"metrics/{stage}/metrics.json").read_text())
        assert summary["policy"] == "mixed_bfloat16", stage  # the metrics say which precision trained it
        assert json.loads((trained / f"metrics/{stage}/metrics.json").read_text())["policy"] == "float32"
    fresh = _fresh_images(tmp_path / "fresh", LEARNABLE["data.synthetic.side"])
    images = image_dataset("test", LEARNABLE["image.side"], 50, root=fresh)
    labels = np.concatenate([y.numpy() for _, y in images]).reshape(-1)
    fp32_scores, bf16_scores = _scores(trained, images), _scores(copy_of_trained, images)
    fp32, bf16 = (
        {name: float(np.mean((p > 0.5) == labels)) for name, p in s.items()} for s in (fp32_scores, bf16_scores)
    )
    print(f"fresh images, accuracy float32 {fp32}, mixed_bfloat16 {bf16}")
    for name in fp32:  # two trainings, not one model twice
        assert np.abs(fp32_scores[name] - bf16_scores[name]).max() > 1e-3, name
    assert min(fp32.values()) >= 0.75  # models that learned, so that the comparison means something
    # One point is 4 of 400 images, within what bfloat16's kernels move on another CPU (AMX's and AVX-512's
    # differ): the bound is the paired McNemar test evaluate uses, "no significant loss", and two points.
    for name in fp32:
        right_fp32, right_bf16 = (fp32_scores[name] > 0.5) == labels, (bf16_scores[name] > 0.5) == labels
        verdict = mcnemar(right_fp32, right_bf16)
        assert bf16[name] >= fp32[name] - 0.02 and not verdict["significant"], (name, fp32, bf16, verdict)
