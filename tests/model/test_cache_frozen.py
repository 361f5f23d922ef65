"""finetune.cache_frozen: the frozen blocks run once, the rest trains on their output, and nothing else changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from dogs_vs_cats.config import FeaturesConfig, load_params
from dogs_vs_cats.datasets import image_dataset, load_features
from dogs_vs_cats.models import base_of, build_extractor, build_finetuned, build_head, split_frozen, unfreeze
from stages import finetune
from tests.conftest import LEARNABLE, REPO, inside, write_params


@pytest.mark.parametrize(
    ("base", "size", "first"), [("vgg16", 32, "block5_conv1"), ("resnet50", 32, "conv5_block3_1_conv")]
)
def test_the_split_model_computes_what_the_whole_model_computes(base: str, size: int, first: str) -> None:
    keras.utils.set_random_seed(3)
    extractor = build_extractor(size, FeaturesConfig(base, "none"))
    params = load_params(REPO / "params.yaml")
    head = build_head(extractor.output_shape[1:], params.head)
    whole = build_finetuned(extractor, head, keras.Sequential([keras.layers.Identity()]))
    unfreeze(extractor, "top")
    frozen, rest = split_frozen(extractor, head)
    assert frozen.output_shape[1:] == base_of(extractor).get_layer(first).input.shape[1:]
    pixels = np.random.default_rng(0).uniform(0, 255, (3, size, size, 3)).astype("float32")
    np.testing.assert_allclose(
        rest.predict(frozen.predict(pixels, verbose=0), verbose=0),
        whole.predict(pixels, verbose=0),
        rtol=1e-4,
        atol=1e-6,
    )
    # Only the unfrozen layers and the head train; every one of them is in rest, sharing its variables.
    assert {id(v) for v in rest.trainable_variables} == {id(v) for v in whole.trainable_variables}
    assert frozen.trainable_variables == []


NO_AUGMENTATION = {"augment.flip": "none", "augment.rotation": 0.0, "augment.zoom": 0.0}


def _finetuned(folder: Path, overrides: dict) -> keras.Model:
    write_params(folder / "params.yaml", {**LEARNABLE, **overrides})
    with inside(folder):
        finetune.main()
    return keras.models.load_model(folder / "models/finetuned.keras")


def test_cached_fine_tuning_trains_the_top_block_as_the_normal_path_does(
    trained: Path, copy_of_trained: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tuned = _finetuned(copy_of_trained, {"finetune.cache_frozen": True})
    summary = json.loads((copy_of_trained / "metrics/finetune/metrics.json").read_text())
    assert (summary["cache_frozen"], summary["augmented"]) == (True, False)
    assert json.loads((trained / "metrics/finetune/metrics.json").read_text())["augmented"] is True

    base = keras.models.load_model(trained / "models/base.keras").get_layer("vgg16")
    tuned_base = tuned.get_layer("extractor").get_layer("vgg16")
    for layer in base.layers:
        if layer.weights:
            after = tuned_base.get_layer(layer.name).get_weights()
            same = all(np.array_equal(b, a) for b, a in zip(layer.get_weights(), after, strict=True))
            assert same == (not layer.name.startswith("block5")), layer.name

    # The same work the normal way (augmentation off, as caching implies) learns as well on the same images.
    normal_folder = tmp_path_factory.mktemp("normal")
    shutil.copytree(copy_of_trained / "data", normal_folder / "data")
    shutil.copytree(trained / "models", normal_folder / "models")
    normal = _finetuned(normal_folder, {"finetune.cache_frozen": False, **NO_AUGMENTATION})
    # Both lower the training loss from where the head alone left it (the saved features are the untuned base's),
    # by a like amount: a fine-tuning that trained nothing, or trained away from the labels, fails here.
    with inside(copy_of_trained):
        dataset = image_dataset("train", 32, 64)
        labels = np.concatenate([y.numpy() for _, y in dataset]).reshape(-1, 1)
        features = load_features("train")
    head = keras.models.load_model(trained / "models/head.keras")
    untuned = float(
        keras.losses.binary_crossentropy(features.labels.reshape(-1, 1), head.predict(features.features, verbose=0))
        .numpy()
        .mean()
    )
    loss = {
        name: float(keras.losses.binary_crossentropy(labels, model.predict(dataset, verbose=0)).numpy().mean())
        for name, model in (("cached", tuned), ("normal", normal))
    }
    gains = {name: untuned - value for name, value in loss.items()}
    assert min(gains.values()) > 0 and max(gains.values()) <= 2 * min(gains.values()), (untuned, loss)
