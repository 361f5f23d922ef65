"""The generated cats and dogs: told apart by shape and texture, not by any global statistic of the pixels.

That a convnet does learn them is tests/model/test_training.py's baseline test, on the same generator."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from dogs_vs_cats.classes import CLASS_NAMES
from dogs_vs_cats.synthetic import draw_animal

PER_CLASS = 300
NEAR_CHANCE = 0.62  # 600 scored images: chance is 0.5 with a standard error of 0.02


def _pooled(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each image's mean and standard deviation per channel (6 numbers), and its label (1 = dog)."""
    rows, labels = [], []
    for label_index, label in enumerate(CLASS_NAMES):
        for number in range(PER_CLASS):
            pixels = np.asarray(draw_animal(label, 40, np.random.default_rng([seed, label_index, number])), float)
            rows.append(np.concatenate([pixels.mean(axis=(0, 1)), pixels.std(axis=(0, 1))]))
            labels.append(label_index)
    return np.array(rows), np.array(labels)


def test_no_global_pixel_statistic_tells_cats_from_dogs() -> None:
    # A nearest-mean-colour classifier (the cue the old generator gave away: it scored 1.0) and a linear model
    # on pooled mean and contrast, fitted on one draw and scored on another, both stay near chance.
    train, train_labels = _pooled(seed=0)
    test, test_labels = _pooled(seed=1)
    means = [train[train_labels == k, :3].mean(axis=0) for k in (0, 1)]
    nearest = np.argmin([np.linalg.norm(test[:, :3] - mean, axis=1) for mean in means], axis=0)
    assert np.mean(nearest == test_labels) <= NEAR_CHANCE
    scale = StandardScaler().fit(train)
    linear = LogisticRegression(max_iter=1000).fit(scale.transform(train), train_labels)
    assert linear.score(scale.transform(test), test_labels) <= NEAR_CHANCE
