"""Model builders. They build and return a model, nothing else: compiling, fitting and saving happen in
the stages. Preprocessing is a layer inside every model, so a saved model takes raw RGB pixels (0-255)
and training, evaluation and prediction cannot drift apart.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from dogs_vs_cats import paths
from dogs_vs_cats.config import (
    Base,
    BaselineConfig,
    ConfigError,
    FeaturesConfig,
    FrozenConfig,
    HeadConfig,
)
from runtime.errors import PipelineError, one_line
from runtime.files import input_file
from runtime.program import signals_deferred

PACKAGE = "dogs_vs_cats"
IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)  # caffe-style VGG16/ResNet50 preprocessing
TORCH_MEAN, TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ImagenetPreprocess(keras.layers.Layer):
    """Raw RGB pixels to what an ImageNet base expects, as ``keras.applications.*.preprocess_input`` does.

    A layer rather than a call to ``preprocess_input`` on a symbolic tensor, which Keras 3 cannot
    serialize (keras#19145). Modes: ``caffe`` (RGB to BGR, minus the ImageNet mean), ``tf`` (to -1..1),
    ``torch`` (0..1, then the ImageNet mean and std), ``none``.
    """

    MODES = ("caffe", "tf", "torch", "none")

    def __init__(self, mode: str = "caffe", **kwargs) -> None:
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, not {mode!r}")
        self.mode = mode

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)
        if self.mode == "caffe":
            return keras.ops.flip(x, axis=-1) - keras.ops.convert_to_tensor(IMAGENET_MEAN_BGR, x.dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor(TORCH_MEAN, x.dtype)
            std = keras.ops.convert_to_tensor(TORCH_STD, x.dtype)
            return (x / 255.0 - mean) / std
        return x

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


def preprocess_mode(preprocess_input: Callable) -> str:
    """The ImagenetPreprocess mode that does what a ``keras.applications`` module's ``preprocess_input`` does: the
    one that gives the same numbers on a few random pixels. Keras names a module's mode only inside its code."""
    probe = np.random.default_rng(0).uniform(0, 255, (1, 2, 2, 3)).astype("float32")
    expected = np.asarray(preprocess_input(probe.copy()))  # some modify their argument in place
    for mode in ImagenetPreprocess.MODES:
        actual = keras.ops.convert_to_numpy(ImagenetPreprocess(mode, dtype="float32")(probe))
        if actual.shape == expected.shape and np.allclose(actual, expected, rtol=1e-5, atol=1e-4):
            return mode
    raise ValueError(f"{preprocess_input.__module__}.preprocess_input matches no ImagenetPreprocess mode")


@dataclass(frozen=True)
class BaseSpec:
    """A pretrained convolutional base from ``keras.applications`` and what goes with it."""

    build: Callable[..., keras.Model]
    model_name: str  # the name Keras gives the model, to recognise it inside a saved extractor
    preprocess: str  # an ImagenetPreprocess mode
    min_size: int  # smallest input side Keras accepts without the top
    top_block: tuple[str, ...]  # layer-name prefixes of the last block: what ``finetune.unfreeze: top`` trains


BASES: dict[str, BaseSpec] = {
    "vgg16": BaseSpec(keras.applications.VGG16, "vgg16", "caffe", 32, ("block5",)),
    "xception": BaseSpec(keras.applications.Xception, "xception", "tf", 71, ("block14",)),
    "resnet50": BaseSpec(keras.applications.ResNet50, "resnet50", "caffe", 32, ("conv5_block3",)),
    # EfficientNetV2 rescales and normalizes inside the Keras model: it takes raw 0-255 pixels.
    "efficientnetv2b0": BaseSpec(
        keras.applications.EfficientNetV2B0, "efficientnetv2-b0", "none", 32, ("block6h", "top_")
    ),
}


@dataclass(frozen=True)
class ImagenetNetwork:
    """A whole network of ``keras.applications``, ImageNet top included (``predict --imagenet``)."""

    build: Callable[..., keras.Model]
    preprocess_input: Callable  # its module's; ImagenetPreprocess does the same (preprocess_mode)
    side: int  # the input side it was trained at


# The networks Keras trained at another input side than DEFAULT_SIDE, and that side. Keras states it only in its
# code (each constructor's ``default_size``); tests/model/test_imagenet_networks.py checks every network against it.
DEFAULT_SIDE = 224
NATIVE_SIDES = {
    "EfficientNetB1": 240,
    "EfficientNetB2": 260,
    "EfficientNetB3": 300,
    "EfficientNetB4": 380,
    "EfficientNetB5": 456,
    "EfficientNetB6": 528,
    "EfficientNetB7": 600,
    "EfficientNetV2B1": 240,
    "EfficientNetV2B2": 260,
    "EfficientNetV2B3": 300,
    "EfficientNetV2S": 384,
    "EfficientNetV2M": 480,
    "EfficientNetV2L": 480,
    "InceptionResNetV2": 299,
    "InceptionV3": 299,
    "NASNetLarge": 331,
    "Xception": 299,
}


def _imagenet_networks() -> dict[str, ImagenetNetwork]:
    """Every network ``keras.applications`` ships, by its constructor's name in lower case (``resnet101v2``).

    The constructors are its capitalized names; the module that defines one has its ``preprocess_input``.
    """
    networks = {}
    for name in sorted(dir(keras.applications)):
        if name[:1].isupper():
            build = getattr(keras.applications, name)
            preprocess_input = sys.modules[build.__module__].preprocess_input
            networks[name.lower()] = ImagenetNetwork(build, preprocess_input, NATIVE_SIDES.get(name, DEFAULT_SIDE))
    return networks


IMAGENET_NETWORKS = _imagenet_networks()


def conv_output_size(size: int, cfg: BaselineConfig) -> int:
    """Side of the last feature map: each conv shrinks by kernel-1 with ``valid`` padding, each pool halves."""
    for index in range(len(cfg.filters)):
        if cfg.padding == "valid":
            size -= cfg.kernel_size - 1
        if index < len(cfg.filters) - 1:
            size //= 2
    return size


def build_baseline(image_size: int, cfg: BaselineConfig, augment: keras.Sequential) -> keras.Model:
    """The book's convnet from scratch: Conv2D + MaxPooling2D blocks, Flatten, Dropout, a sigmoid unit."""
    if conv_output_size(image_size, cfg) < 1:
        raise ConfigError(
            f"{paths.PARAMS}: baseline.filters has {len(cfg.filters)} {cfg.padding} convolutions, too many for "
            f"image.side {image_size}; set baseline.padding: same, a larger image.side, or fewer filters"
        )
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = augment(inputs)
    x = keras.layers.Rescaling(1.0 / 255)(x)
    for index, filters in enumerate(cfg.filters):
        x = keras.layers.Conv2D(filters, cfg.kernel_size, padding=cfg.padding, activation="relu")(x)
        if index < len(cfg.filters) - 1:  # the book pools after every convolution but the last
            x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(cfg.dropout)(x)
    # float32 whatever train.precision: a float16 sigmoid saturates to exactly 0 or 1 and the loss to inf.
    outputs = keras.layers.Dense(1, activation="sigmoid", name="dog_probability", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="baseline")


def build_extractor(image_size: int, cfg: FeaturesConfig) -> keras.Model:
    """Preprocessing + the pretrained convolutional base without its top: raw pixels in, features out."""
    spec = BASES[cfg.base]
    if image_size < spec.min_size:
        raise ConfigError(f"{paths.PARAMS}: image.side {image_size} is below {cfg.base}'s minimum {spec.min_size}")
    base = _pretrained(spec.build, cfg.base, cfg.weights, include_top=False, input_shape=(image_size, image_size, 3))
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = ImagenetPreprocess(spec.preprocess, name="preprocess")(inputs)
    # training=False keeps any BatchNorm in the base in inference mode, even while fine-tuning.
    outputs = base(x, training=False)
    return keras.Model(inputs, outputs, name="extractor")


def build_imagenet_classifier(name: str, weights: str) -> keras.Model:
    """Preprocessing + the whole network ``name`` of IMAGENET_NETWORKS with its 1,000-class ImageNet top, at the
    side it was trained at; ``weights`` as ``features.weights`` says."""
    spec = IMAGENET_NETWORKS[name]
    shape = (spec.side, spec.side, 3)
    # input_shape even at the native side: MobileNetV3 with random weights would otherwise take any side.
    network = _pretrained(spec.build, name, weights, include_top=True, input_shape=shape)
    inputs = keras.Input(shape, name="image")
    preprocess = ImagenetPreprocess(preprocess_mode(spec.preprocess_input), name="preprocess")
    outputs = network(preprocess(inputs), training=False)
    return keras.Model(inputs, outputs, name=f"{name}_imagenet")


def _pretrained(
    build: Callable[..., keras.Model], name: str, weights: str, include_top: bool, input_shape: tuple[int, int, int]
) -> keras.Model:
    """``build`` (a ``keras.applications`` constructor) makes network ``name`` with ``weights`` (as
    ``features.weights`` says); every way its weights can fail becomes one ConfigError."""
    kind = "full" if include_top else "notop"
    weights = _weights_argument(weights, name, kind)
    try:
        return build(include_top=include_top, weights=weights, input_shape=input_shape)
    except Exception as error:
        # Keras raises a bare Exception for a failed download and ValueError/OSError for a bad file.
        if "URL fetch failure" in str(error):
            raise ConfigError(
                f"{paths.PARAMS}: features.weights is imagenet, but Keras could not download {name}'s weights "
                "(no network?); set features.weights to a local .h5 file, or none for random weights"
            ) from None
        if weights not in (None, "imagenet"):
            raise ConfigError(
                f"{paths.PARAMS}: features.weights {weights} is not a {name} {kind} weights file "
                f"({type(error).__name__}: {str(error).splitlines()[0][:160]}); give the right .h5 file"
            ) from None
        raise


def _weights_argument(weights: str, name: str, kind: str) -> str | None:
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(
            f"{paths.PARAMS}: features.weights {weights} does not exist; use imagenet, none or the path of "
            f"{name}'s {kind} .h5 weights file"
        )
    return os.fspath(path)


def rebuilt_extractor(saved: keras.Model, image_size: int, base: Base) -> keras.Model:
    """The extractor ``saved`` built anew under the dtype policy now in force, with its weights.

    A loaded model keeps the precision it was saved with; fine-tuning under ``train.precision`` needs
    the base's layers made again.
    """
    extractor = build_extractor(image_size, FeaturesConfig(base, "none"))
    extractor.set_weights(saved.get_weights())
    return extractor


def base_of(extractor: keras.Model) -> keras.Model:
    """The pretrained base nested inside an extractor."""
    (base,) = [layer for layer in extractor.layers if isinstance(layer, keras.Model)]
    return base


def build_head(
    feature_shape: tuple[int, ...], cfg: HeadConfig | FrozenConfig, stats: tuple[np.ndarray, np.ndarray] | None = None
) -> keras.Model:
    """The dense classifier trained on extracted features: Flatten, Dense, Dropout, a sigmoid unit (``head:``'s
    layers, or the frozen-base model's own, ``frozen:``).

    With ``cfg.normalize``, ``stats`` (per-feature mean and variance of the training features) standardize
    the features first. The book needs no such layer: ImageNet features are well scaled. A random base's
    features are not (tiny, nearly constant), and the head would not learn from them in a few epochs.
    """
    inputs = keras.Input(feature_shape, name="features")
    x = keras.layers.Flatten(name="flatten")(inputs)
    if cfg.normalize:
        if stats is None:
            raise ValueError("head.normalize needs the training features' mean and variance")
        x = keras.layers.Normalization(mean=stats[0], variance=stats[1], name="standardize")(x)
    x = keras.layers.Dense(cfg.units, activation="relu", name="dense")(x)
    x = keras.layers.Dropout(cfg.dropout, name="dropout")(x)
    # float32 whatever train.precision: a float16 sigmoid saturates to exactly 0 or 1 and the loss to inf.
    outputs = keras.layers.Dense(1, activation="sigmoid", name="dog_probability", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="head")


def build_frozen(extractor: keras.Model, head: keras.Model, augment: keras.Sequential) -> keras.Model:
    """The frozen-base model ``train_frozen`` trains (its stage freezes the extractor): ``_end_to_end``."""
    return _end_to_end(extractor, head, augment, name="frozen")


def build_finetuned(extractor: keras.Model, head: keras.Model, augment: keras.Sequential) -> keras.Model:
    """The fine-tuned model ``finetune`` trains (its stage unfreezes the extractor's top): ``_end_to_end``."""
    return _end_to_end(extractor, head, augment, name="finetuned")


def _end_to_end(extractor: keras.Model, head: keras.Model, augment: keras.Sequential, name: str) -> keras.Model:
    """Augmentation, then the extractor, then the head: one model from raw pixels to P(dog)."""
    inputs = keras.Input(extractor.input_shape[1:], name="image")
    x = augment(inputs)
    x = extractor(x)
    outputs = head(x)
    return keras.Model(inputs, outputs, name=name)


def split_frozen(extractor: keras.Model, head: keras.Model) -> tuple[keras.Model, keras.Model]:
    """``(frozen, rest)``: raw pixels to the input of the base's first trainable layer, and from there
    through the rest of the base and the head to P(dog). Call after ``unfreeze``.

    ``rest(frozen(x))`` is the fine-tuned model without augmentation, and ``rest`` shares its layers with
    ``extractor`` and ``head``: training ``rest`` trains them. The frozen part never changes, so its output
    can be computed once per image (``finetune.cache_frozen``).
    """
    base = base_of(extractor)
    first = next(layer for layer in base.layers if layer.trainable and layer.weights)
    cut = first.input
    try:
        rest_of_base = keras.Model(cut, base.output, name=f"{base.name}_unfrozen")
    except ValueError as error:  # a skip connection around the cut: the rest needs more than one input
        raise ConfigError(
            f"{paths.PARAMS}: finetune.cache_frozen cannot cut {base.name} before {first.name} "
            f"({str(error).splitlines()[0][:120]}); unfreeze whole blocks (finetune.unfreeze: top) or set it false"
        ) from None
    pixels = keras.Input(extractor.input_shape[1:], name="image")
    # training=False as in build_extractor: the frozen part runs in inference mode, BatchNorm included.
    frozen_base = keras.Model(base.input, cut, name=f"{base.name}_frozen")
    frozen = keras.Model(pixels, frozen_base(extractor.get_layer("preprocess")(pixels), training=False), name="frozen")
    activations = keras.Input(cut.shape[1:], name="activations")
    rest = keras.Model(activations, head(rest_of_base(activations, training=False)), name="unfrozen")
    return frozen, rest


def unfreeze(extractor: keras.Model, which: str) -> list[str]:
    """Make trainable exactly the base's layers named by ``which``; return their names.

    ``which`` is ``top`` (the base's last block, see BASES) or comma-separated layer-name prefixes.
    The model must be compiled after this: Keras reads ``trainable`` when it compiles.
    """
    base = base_of(extractor)
    if which == "top":
        (spec,) = [spec for spec in BASES.values() if spec.model_name == base.name]
        prefixes = spec.top_block
    else:
        prefixes = tuple(prefix.strip() for prefix in which.split(",") if prefix.strip())
    extractor.trainable = True
    names = []
    for layer in base.layers:
        layer.trainable = layer.name.startswith(prefixes)
        if layer.trainable:
            names.append(layer.name)
    if not any(layer.weights for layer in base.layers if layer.trainable):
        blocks = list(dict.fromkeys(layer.name.split("_")[0] for layer in base.layers if layer.weights))
        raise ConfigError(
            f"{paths.PARAMS}: finetune.unfreeze {which!r} matches no layer with weights in {base.name}; "
            f"use top or a layer-name prefix such as {', '.join(blocks[-3:])}"
        )
    return names


@contextmanager
def built_under(precision: str) -> Iterator[None]:
    """Layers made inside compute in ``precision`` (a Keras dtype policy, e.g. ``mixed_bfloat16``); the global
    policy in force before comes back after, whatever happens inside."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def load_saved(path: Path) -> keras.Model:
    """A model saved by a stage, to predict with; importing this module registered its custom layers, and safe
    mode stays on. Uncompiled: no stage trains a loaded model further with its optimizer, and compiling it here
    would rebuild the optimizer under the global policy, not the model's (a ``mixed_float16`` model's loss
    scaling lost, with a warning). ``saved_optimizer`` names the optimizer it was trained with."""
    path = input_file(path, "run dvc repro, or name a .keras file a stage saved")
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise PipelineError(f"{path}: not a .keras model file (a zip); name one a stage saved, e.g. models/*.keras")
    try:
        with signals_deferred():  # Keras catches everything while it reads the weights, Ctrl-C too
            return keras.models.load_model(path, compile=False)
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as error:  # a truncated or edited file
        reason = one_line(error)
        raise PipelineError(f"{path}: cannot load the model ({reason}); save it again with dvc repro") from None


def saved_optimizer(path: Path) -> str | None:
    """The class name of the optimizer a model ``load_saved`` can read was compiled with (``RMSprop``), from
    the archive's compile config; None for a model saved uncompiled."""
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    optimizer = (config.get("compile_config") or {}).get("optimizer")
    return optimizer.get("class_name") if isinstance(optimizer, dict) else None
