"""Data augmentation for both studies: Keras preprocessing layers, active only while training."""

from __future__ import annotations

import keras

from dogs_vs_cats.config import AugmentConfig, DigitsAugmentConfig


def augmentation(
    cfg: AugmentConfig | DigitsAugmentConfig, seed: int, fill_value: float | None = None
) -> keras.Sequential:
    """Random flip, rotation, shift and zoom, each as ``cfg`` sets it (a study without one never moves it).

    Outside the image, ``fill_value`` fills with that constant (the digits' black background), None with
    Keras' reflection. Each layer has its own seed, so turning one off leaves the others' draws as they were.
    """
    fill = {} if fill_value is None else {"fill_mode": "constant", "fill_value": fill_value}
    flip, shift = getattr(cfg, "flip", "none"), getattr(cfg, "shift", 0.0)
    layers: list[keras.layers.Layer] = []
    if flip != "none":
        layers.append(keras.layers.RandomFlip(flip, seed=seed))
    if cfg.rotation > 0:
        layers.append(keras.layers.RandomRotation(cfg.rotation, seed=seed + 1, **fill))
    if shift > 0:
        layers.append(keras.layers.RandomTranslation(shift, shift, seed=seed + 3, **fill))
    if cfg.zoom > 0:
        layers.append(keras.layers.RandomZoom(cfg.zoom, seed=seed + 2, **fill))
    return keras.Sequential(layers or [keras.layers.Identity()], name="augmentation")
