"""Builders: shapes and sizes of the book's models, preprocessing inside them, save/load, freezing."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import keras
import numpy as np
import pytest
from keras.src.saving import saving_lib

from dogs_vs_cats.augmentation import augmentation
from dogs_vs_cats.config import AugmentConfig, BaselineConfig, ConfigError, FeaturesConfig, HeadConfig, load_params
from dogs_vs_cats.models import (
    ImagenetPreprocess,
    base_of,
    build_baseline,
    build_extractor,
    build_finetuned,
    build_head,
    load_saved,
    unfreeze,
)
from runtime import program
from runtime.program import run
from tests.conftest import REPO

BOOK = load_params(REPO / "params.yaml")
RANDOM_VGG16 = FeaturesConfig("vgg16", "none")
NO_AUGMENT = AugmentConfig("none", 0.0, 0.0)
NO_AUGMENT_LAYERS = augmentation(NO_AUGMENT, 0)
VGG16_NOTOP_PARAMS = 14_714_688  # keras.applications.VGG16(include_top=False).count_params()


def _pixels(n: int = 4, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


@pytest.mark.parametrize(
    ("mode", "reference"),
    [
        ("caffe", keras.applications.vgg16.preprocess_input),
        ("tf", keras.applications.xception.preprocess_input),
        ("torch", lambda x: keras.applications.imagenet_utils.preprocess_input(x, mode="torch")),
    ],
)
def test_preprocess_layer_matches_keras_preprocess_input(mode: str, reference) -> None:
    pixels = _pixels()
    expected = reference(pixels.copy())
    actual = keras.ops.convert_to_numpy(ImagenetPreprocess(mode)(pixels))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-4)


def test_book_baseline_has_the_books_shape_and_size() -> None:
    model = build_baseline(BOOK.image.side, BOOK.baseline, augmentation(BOOK.augment, 0))
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 64, 128, 256, 256]
    assert convs[-1].output.shape[1:] == (7, 7, 256)
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers) == 4
    assert model.count_params() == 991_041  # the book's model.summary(), listing 8.7
    assert model.output_shape == (None, 1)


def test_baseline_too_deep_for_the_image_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"too many for image.side 32; set baseline.padding: same"):
        build_baseline(32, BOOK.baseline, augmentation(NO_AUGMENT, 0))
    same = BaselineConfig((32, 64, 128, 256, 256), 3, "same", 0.5, 1e-3, 1, None)
    assert build_baseline(32, same, augmentation(NO_AUGMENT, 0)).output_shape == (None, 1)


def test_extractor_is_vgg16_without_top() -> None:
    # At 180 px (the book's size) tests/model/test_bases.py checks its shape and size with every other base.
    extractor = build_extractor(32, RANDOM_VGG16)
    assert extractor.output_shape[1:] == (1, 1, 512)
    assert extractor.count_params() == VGG16_NOTOP_PARAMS
    reference = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    assert [w.shape for w in base_of(extractor).weights] == [w.shape for w in reference.weights]


def test_book_head_on_180px_features() -> None:
    head = build_head((5, 5, 512), BOOK.head)
    assert head.count_params() == 5 * 5 * 512 * 256 + 256 + 256 + 1
    assert head.output_shape == (None, 1)


def test_local_weights_file_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keras.utils.set_random_seed(1)
    source = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    monkeypatch.chdir(tmp_path)  # local weights live under data/weights/, relative to the repository root
    path = Path("data/weights/vgg16_notop.weights.h5")
    path.parent.mkdir(parents=True)
    source.save_weights(path)
    extractor = build_extractor(32, FeaturesConfig("vgg16", str(path)))
    for loaded, saved in zip(base_of(extractor).get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(loaded, saved)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist; use imagenet, none or the path"), (b"not hdf5", "is not a vgg16 notop weights file")],
)
def test_missing_or_wrong_weights_file_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes | None, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    path = Path("data/weights/weights.h5")
    path.parent.mkdir(parents=True)
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as error:
        build_extractor(32, FeaturesConfig("vgg16", str(path)))
    assert f"features.weights {path} " in str(error.value)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_imagenet_without_network_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []

    def offline(*args, **kwargs):
        asked.append(kwargs.get("origin") or args[1])
        raise Exception("URL fetch failure on https://example.invalid/notop.h5: None -- name resolution")

    monkeypatch.setattr("keras.src.utils.file_utils.get_file", offline)
    with pytest.raises(ConfigError, match="Keras could not download vgg16's weights"):
        build_extractor(32, FeaturesConfig("vgg16", "imagenet"))
    # The patch reached the download Keras makes (else this passes only because the machine is offline).
    assert len(asked) == 1 and asked[0].endswith("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")


def test_unfreeze_trains_exactly_the_top_block() -> None:
    extractor = build_extractor(32, RANDOM_VGG16)
    names = unfreeze(extractor, "block5")
    assert names == ["block5_conv1", "block5_conv2", "block5_conv3", "block5_pool"]
    trainable = {w.path.split("/")[0] for w in extractor.trainable_weights}
    assert trainable == {"block5_conv1", "block5_conv2", "block5_conv3"}
    assert unfreeze(extractor, "top") == names  # VGG16's top block is block5
    assert unfreeze(extractor, "block4, block5")[:4] == ["block4_conv1", "block4_conv2", "block4_conv3", "block4_pool"]
    with pytest.raises(ConfigError, match=r"finetune.unfreeze 'block9' matches no layer .* block3, block4, block5"):
        unfreeze(extractor, "block9")


def _round_trip(model: keras.Model, inputs: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # safe_mode stays on
    np.testing.assert_allclose(loaded.predict(inputs, verbose=0), model.predict(inputs, verbose=0), rtol=1e-5)


def test_every_model_survives_save_and_load(tmp_path: Path) -> None:
    pixels = _pixels(size=32)
    small = BaselineConfig((8, 16), 3, "same", 0.5, 1e-3, 1, None)
    _round_trip(build_baseline(32, small, augmentation(BOOK.augment, 0)), pixels, tmp_path)
    extractor = build_extractor(32, RANDOM_VGG16)
    _round_trip(extractor, pixels, tmp_path)
    features = extractor.predict(pixels, verbose=0)
    flat = features.reshape(len(features), -1)
    head = build_head(features.shape[1:], HeadConfig(True, 8, 0.5, 1e-3, 4, 1, None), (flat.mean(0), flat.var(0)))
    _round_trip(head, features, tmp_path)
    _round_trip(build_finetuned(extractor, head, augmentation(BOOK.augment, 0)), pixels, tmp_path)


@pytest.mark.parametrize("then_fails", [False, True])
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_keras_reads_the_weights_ends_the_program(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    signum: int,
    status: int,
    then_fails: bool,
) -> None:
    # Keras reads model.weights.h5 inside a bare `except:` with a fallback reader: a signal raised there was
    # swallowed, and export, evaluate, finetune or predict went on to exit 0.
    path = tmp_path / "m.keras"
    build_baseline(32, BaselineConfig((8,), 3, "same", 0.5, 1e-3, 1, None), NO_AUGMENT_LAYERS).save(path)
    reader = saving_lib.is_memory_sufficient

    def interrupted_read(model: keras.Model) -> bool:
        os.kill(os.getpid(), signum)  # arrives while Keras' bare except is on the stack
        if then_fails:  # and the load fails after it: the signal still decides how the program ends
            raise ValueError("a weight of the wrong shape")
        return reader(model)

    monkeypatch.setattr(saving_lib, "is_memory_sufficient", interrupted_read)
    loaded = []
    with pytest.raises(SystemExit) as ended:
        run(lambda: loaded.append(load_saved(path)))
    assert ended.value.code == status and not loaded
    assert capsys.readouterr().err.count("\n") == 1
    assert signal.getsignal(signal.SIGINT) is program._end_at_once  # not the deferring one: run's, for the teardown
    signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(saving_lib, "is_memory_sufficient", reader)
    assert load_saved(path).count_params() > 0  # the control: the same file loads


@pytest.mark.parametrize(
    ("signum", "raised"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, program.Terminated)]
)
def test_a_deferred_signal_waits_for_the_block_then_ends_it_with_runs_handlers_back(signum: int, raised: type) -> None:
    handlers = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: program._terminate}  # what run() sets
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        finished = []
        with pytest.raises(raised), program.signals_deferred():
            os.kill(os.getpid(), signum)
            finished.append(True)  # the block runs to its end first
        assert finished == [True]
        assert all(signal.getsignal(sig) is handler for sig, handler in handlers.items())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_augmentation_is_active_only_in_training() -> None:
    augment = augmentation(AugmentConfig("horizontal", 0.1, 0.2), 0)
    pixels = _pixels(size=32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(augment(pixels, training=False)), pixels)
    assert not np.allclose(keras.ops.convert_to_numpy(augment(pixels, training=True)), pixels)


def test_finetune_model_starts_as_head_on_extractor() -> None:
    pixels = _pixels(size=32)
    extractor = build_extractor(32, RANDOM_VGG16)
    features = extractor.predict(pixels, verbose=0)
    flat = features.reshape(len(features), -1)
    head = build_head(features.shape[1:], HeadConfig(True, 8, 0.5, 1e-3, 4, 1, None), (flat.mean(0), flat.var(0)))
    model = build_finetuned(extractor, head, augmentation(BOOK.augment, 0))
    np.testing.assert_allclose(model.predict(pixels, verbose=0), head.predict(features, verbose=0), rtol=1e-5)


def test_image_models_are_told_from_feature_models_by_their_input() -> None:
    from dogs_vs_cats.classes import predicted_labels
    from dogs_vs_cats.costs import takes_images

    images = keras.Model(inputs := keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D()(inputs))
    features = keras.Model(inputs := keras.Input((1, 1, 512)), keras.layers.Flatten()(inputs))  # 4-D, not RGB
    assert takes_images(images) and not takes_images(features)
    assert predicted_labels(np.array([0.2, 0.5, 0.7]), 0.5).tolist() == [0, 1, 1]
    assert predicted_labels(np.array([0.2, 0.5, 0.7]), 0.6).tolist() == [0, 0, 1]


def test_one_augmentation_serves_both_studies() -> None:
    # The digits shift into a black background; the photos reflect at their edges (Keras' default).
    from dogs_vs_cats.config import DigitsAugmentConfig

    white = np.full((4, 28, 28, 1), 255.0, dtype="float32")
    digits = augmentation(DigitsAugmentConfig(0.0, 0.3, 0.0), 0, fill_value=0.0)
    assert [type(layer).__name__ for layer in digits.layers] == ["RandomTranslation"]
    assert np.asarray(digits(white, training=True)).min() == 0.0
    assert np.array_equal(np.asarray(digits(white, training=False)), white)  # inactive outside training
    photos = augmentation(AugmentConfig("horizontal", 0.1, 0.2), 0)
    assert [type(layer).__name__ for layer in photos.layers] == ["RandomFlip", "RandomRotation", "RandomZoom"]
    assert np.asarray(photos(white, training=True)).min() > 250.0
