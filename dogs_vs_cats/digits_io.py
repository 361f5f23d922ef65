"""The digits study's data as the stages hand it on: uint8 splits of 28x28 images under data/digits/."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dogs_vs_cats import paths
from dogs_vs_cats.classes import DIGITS_DATASETS
from runtime.errors import PipelineError
from runtime.files import input_file

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
    """One split written by ``digits_data``."""
    path = input_file(paths.digits_data_dir(dataset) / f"{split}.npz", f"run dvc repro digits_data@{dataset}")
    with np.load(path, allow_pickle=False) as data:
        return Split(data["x"], data["y"])


def dataset_arg(argv: list[str], stage: str) -> str:
    """The one command-line argument of a digits ``stage``: which dataset."""
    if len(argv) != 1 or argv[0] not in DIGITS_DATASETS:
        raise PipelineError(f"usage: python -m stages.{stage} {{{','.join(DIGITS_DATASETS)}}}")
    return argv[0]
