"""The digits study's data as the stages hand it on: uint8 splits of 28x28 images under data/digits/, the
validation split held out of the training images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dogs_vs_cats import paths
from runtime.errors import PipelineError
from runtime.files import atomic_path, npz_arrays

SIDE = 28  # pixels; both datasets' images are 28x28 grayscale
CLASSES = 10


@dataclass(frozen=True)
class Split:
    """Images (N x 28 x 28, uint8, white on black) and their labels (N, uint8, 0 to 9)."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        assert self.x.shape == (len(self.y), SIDE, SIDE) and self.x.dtype == np.uint8 and self.y.dtype == np.uint8


def load_split(dataset: str, split: str) -> Split:
    """One split written by ``digits_data``; one of other images, no images or labels past 9 is one line."""
    path = paths.digits_data_dir(dataset) / f"{split}.npz"
    again = f"run dvc repro -f -s digits_data@{dataset}"
    x, y = npz_arrays(path, ("x", "y"), again)
    if not (
        y.ndim == 1
        and len(y) > 0
        and x.shape == (len(y), SIDE, SIDE)
        and x.dtype == y.dtype == np.uint8
        and (y < CLASSES).all()
    ):
        raise PipelineError(
            f"{path}: not {SIDE}x{SIDE} uint8 images with labels 0 to {CLASSES - 1}, at least one; {again}"
        )
    return Split(x, y)


def split_validation(train: Split, count: int, seed: int) -> tuple[Split, Split]:
    """``count`` training images, picked with ``seed``, held out for validation."""
    if count >= len(train.y):
        raise PipelineError(
            f"{paths.PARAMS}: digits.data.validation is {count}, but there are only {len(train.y)} training "
            "images; use fewer"
        )
    order = np.random.default_rng(seed).permutation(len(train.y))
    keep, held = np.sort(order[count:]), np.sort(order[:count])
    return Split(train.x[keep], train.y[keep]), Split(train.x[held], train.y[held])


def save_splits(folder: Path, splits: dict[str, Split]) -> None:
    """``<folder>/<split>.npz`` with ``x`` and ``y``, all at once: an interrupted run leaves no folder."""
    with atomic_path(folder, replace=True) as tmp:
        tmp.mkdir()
        for name, split in splits.items():
            np.savez(tmp / f"{name}.npz", x=split.x, y=split.y)
