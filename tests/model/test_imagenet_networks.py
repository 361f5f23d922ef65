"""The networks ``predict --imagenet`` runs: every one ``keras.applications`` ships, with its own constructor,
preprocessing and input side, checked against Keras without building a single one (all 40 at their sides take
minutes; tests/pipeline/test_predict_networks.py builds one per family)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import keras
import numpy as np
import pytest
from keras.src.applications import imagenet_utils

from dogs_vs_cats.models import BASES, IMAGENET_NETWORKS, ImagenetPreprocess, preprocess_mode

# Every function keras.applications offers is a network's constructor (its submodules are modules, not functions).
CONSTRUCTORS = {name: member for name, member in vars(keras.applications).items() if inspect.isfunction(member)}
# Keras builds these at any side, so none is asked of obtain_input_shape; their ImageNet weights are for 224x224
# (keras/src/applications/mobilenet_v3.py warns when the side differs).
SIDE_NOT_ASKED = {"MobileNetV3Large": 224, "MobileNetV3Small": 224}


def test_there_are_networks_to_check() -> None:
    # A negative control: the checks below pass vacuously if keras.applications were read wrong.
    assert {"VGG16", "ResNet50V2", "MobileNetV3Small", "ConvNeXtTiny", "EfficientNetB7", "NASNetLarge"} <= set(
        CONSTRUCTORS
    )
    assert len(CONSTRUCTORS) >= 40


def test_every_network_has_an_entry_named_in_lower_case() -> None:
    assert sorted(IMAGENET_NETWORKS) == sorted(name.lower() for name in CONSTRUCTORS)
    for name, constructor in CONSTRUCTORS.items():
        assert IMAGENET_NETWORKS[name.lower()].build is constructor, name


def test_every_network_preprocesses_as_its_module_does() -> None:
    for name, constructor in CONSTRUCTORS.items():
        module = getattr(keras.applications, constructor.__module__.rsplit(".", 1)[-1])  # keras.applications.resnet
        assert IMAGENET_NETWORKS[name.lower()].preprocess_input is module.preprocess_input, name


class _Asked(Exception):
    """Raised in place of building a network: what Keras was about to build it at."""


def _native_side(constructor: Callable, monkeypatch: pytest.MonkeyPatch) -> int | None:
    """The side ``constructor`` builds at when given none (its ``default_size``), or None when it asks nothing of
    ``obtain_input_shape``; no layer is made either way."""

    def asked(input_shape, default_size, *args, **kwargs):
        raise _Asked(default_size)

    def input_layer(*args, **kwargs):
        raise _Asked(None)

    with monkeypatch.context() as patch:
        patch.setattr(imagenet_utils, "obtain_input_shape", asked)
        patch.setattr(keras.src.layers, "Input", input_layer)
        with pytest.raises(_Asked) as stopped:
            constructor(weights=None)
    return stopped.value.args[0]


def test_every_network_runs_at_the_side_keras_trained_it_at(monkeypatch: pytest.MonkeyPatch) -> None:
    sides = {}
    for name, constructor in CONSTRUCTORS.items():
        native = _native_side(constructor, monkeypatch)
        if native is None:
            assert name in SIDE_NOT_ASKED, f"{name} asks Keras for no default side: which does it load weights for?"
            native = SIDE_NOT_ASKED[name]
        sides[name] = (IMAGENET_NETWORKS[name.lower()].side, native)
    assert {name: ours for name, (ours, _) in sides.items()} == {name: native for name, (_, native) in sides.items()}
    assert {ours for ours, _ in sides.values()} >= {224, 240, 260, 299, 300, 331, 380, 384, 456, 480, 528, 600}


def test_every_networks_preprocessing_is_a_mode_of_the_layer() -> None:
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    modes = {}
    for name, network in IMAGENET_NETWORKS.items():
        modes[name] = preprocess_mode(network.preprocess_input)
        layer = ImagenetPreprocess(modes[name])
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(layer(pixels)), network.preprocess_input(pixels.copy()), rtol=1e-5, atol=1e-4
        )
    # Those that preprocess inside the network get raw 0-255 pixels; the others each their module's mode.
    assert {name for name, mode in modes.items() if mode == "none"} == {
        name for name in modes if name.startswith(("convnext", "efficientnet", "mobilenetv3"))
    }
    assert modes["densenet121"] == "torch" and modes["resnet50v2"] == "tf" and modes["vgg19"] == "caffe"


def test_an_unknown_preprocessing_is_a_bug_not_a_guess() -> None:
    with pytest.raises(ValueError, match="matches no ImagenetPreprocess mode"):
        preprocess_mode(lambda x: x / 255.0)


def test_the_feature_bases_agree_with_the_registry() -> None:
    for name, spec in BASES.items():
        assert spec.build is IMAGENET_NETWORKS[name].build
        assert spec.preprocess == preprocess_mode(IMAGENET_NETWORKS[name].preprocess_input), name
