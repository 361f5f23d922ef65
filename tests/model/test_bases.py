"""Every pretrained base: builds, extracts features of the documented shape, round-trips, fine-tunes end to end."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from dogs_vs_cats import costs, gradcam
from dogs_vs_cats.config import ConfigError, FeaturesConfig
from dogs_vs_cats.datasets import image_dataset
from dogs_vs_cats.models import BASES, base_of, build_extractor, unfreeze
from stages import download, extract_features, finetune, sample, train_head
from tests.conftest import TINY, inside, write_params

# What the README's table says, at the default image.side of 180.
DOCUMENTED = {
    "vgg16": ((5, 5, 512), 14_714_688, ["block5_conv1", "block5_conv2", "block5_conv3", "block5_pool"]),
    "xception": (
        (6, 6, 2048),
        20_861_480,
        [
            "block14_sepconv1",
            "block14_sepconv1_bn",
            "block14_sepconv1_act",
            "block14_sepconv2",
            "block14_sepconv2_bn",
            "block14_sepconv2_act",
        ],
    ),
    "resnet50": (
        (6, 6, 2048),
        23_587_712,
        [
            "conv5_block3_1_conv",
            "conv5_block3_1_bn",
            "conv5_block3_1_relu",
            "conv5_block3_2_conv",
            "conv5_block3_2_bn",
            "conv5_block3_2_relu",
            "conv5_block3_3_conv",
            "conv5_block3_3_bn",
            "conv5_block3_add",
            "conv5_block3_out",
        ],
    ),
    "efficientnetv2b0": ((6, 6, 1280), 5_919_312, None),
}


# vgg16 runs end to end in test_pipeline; the others here.
END_TO_END = ["xception", "resnet50", "efficientnetv2b0"]


def test_the_documented_bases_are_the_supported_ones() -> None:
    assert set(DOCUMENTED) == set(BASES)


@pytest.mark.parametrize("base", sorted(BASES))
def test_base_builds_with_documented_shape_size_and_top_block(base: str) -> None:
    shape, params, top = DOCUMENTED[base]
    extractor = build_extractor(180, FeaturesConfig(base, "none"))
    assert extractor.output_shape[1:] == shape
    assert extractor.count_params() == params
    names = unfreeze(extractor, "top")
    if top is not None:
        assert names == top
    assert all(name.startswith(BASES[base].top_block) for name in names)
    trainable = {w.path.split("/")[0] for w in extractor.trainable_weights}
    assert trainable and all(name in names for name in trainable)


# Each other base extracts, saves and loads in test_pipeline_runs_end_to_end_with_each_base.
@pytest.mark.parametrize("base", sorted(set(BASES) - set(END_TO_END)))
def test_base_extracts_features_and_survives_save_and_load(base: str, tmp_path: Path) -> None:
    size = max(32, BASES[base].min_size)
    extractor = build_extractor(size, FeaturesConfig(base, "none"))
    pixels = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    features = extractor.predict(pixels, verbose=0)
    assert features.shape[0] == 2 and features.shape[1:] == extractor.output_shape[1:]
    extractor.save(tmp_path / "base.keras")
    loaded = keras.models.load_model(tmp_path / "base.keras")
    np.testing.assert_allclose(loaded.predict(pixels, verbose=0), features, rtol=1e-4, atol=1e-5)
    assert base_of(loaded).name == BASES[base].model_name


def test_an_image_below_the_base_minimum_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"image\.side 64 is below xception.s minimum 71"):
        build_extractor(64, FeaturesConfig("xception", "none"))


def test_an_unknown_base_lists_the_valid_ones(tmp_path: Path) -> None:
    from dogs_vs_cats.config import load_params

    write_params(tmp_path / "params.yaml", {"features.base": "alexnet"})
    with pytest.raises(ConfigError) as error:
        load_params(tmp_path / "params.yaml")
    assert str(error.value) == (
        f"{tmp_path / 'params.yaml'}: features.base is 'alexnet'; "
        "use one of vgg16, xception, resnet50, efficientnetv2b0"
    )


@pytest.mark.slow
@pytest.mark.parametrize("base", END_TO_END)
def test_pipeline_runs_end_to_end_with_each_base(base: str, tmp_path: Path) -> None:
    # The baseline does not depend on the base. The tiny sample (64 images) is enough to show each stage works
    # with the base: nothing here asks that it learns.
    size = max(32, BASES[base].min_size)
    write_params(tmp_path / "params.yaml", {**TINY, "features.base": base, "image.side": size, "head.epochs": 1})
    with inside(tmp_path):
        for stage in (download, sample, extract_features, train_head, finetune):
            stage.main()
        # What evaluate does with a base, without the models that do not depend on it: Grad-CAM through
        # the nested base, and the cost of the base and of the fine-tuned model.
        tuned = keras.models.load_model("models/finetuned.keras")
        test = image_dataset("test", size, 8)
        pixels = next(iter(test))[0].numpy()
        maps, dog = gradcam.heatmaps(tuned, pixels)
        # The saved base, loaded, computes the features extract_features stored.
        loaded = keras.models.load_model("models/base.keras")
        stored = np.load("data/features/test.npz")["features"]
        reloaded = loaded.predict(image_dataset("test", size, TINY["image.batch_size"]), verbose=0)
        base_cost = costs.totals(costs.layer_costs(loaded))
    np.testing.assert_allclose(reloaded, stored, rtol=1e-4, atol=1e-5)
    assert base_of(loaded).name == BASES[base].model_name
    assert json.loads((tmp_path / "metrics/features.json").read_text())["base"] == base
    assert base_of(tuned.get_layer("extractor")).name == BASES[base].model_name
    assert maps.shape == (8, size, size) and np.isfinite(maps).all() and 0.0 <= maps.min() <= maps.max() <= 1.0
    assert ((dog >= 0) & (dog <= 1)).all()
    cost = costs.totals(costs.layer_costs(tuned))
    assert cost["params"] == tuned.count_params() and base_cost["params"] < cost["params"]
    assert 0 < base_cost["gmacs"] < cost["gmacs"]
