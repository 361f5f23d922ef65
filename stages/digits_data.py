"""Stage ``digits_data@<dataset>``: MNIST or Fashion-MNIST as uint8 arrays, split into train, validation, test.

``digits.data.source`` says where the images come from: Keras' download, a local copy or, with no network,
offline stand-ins (``dogs_vs_cats/digits_sources.py``). ``digits.data.validation`` training images, picked with
``seed``, become the validation split; the official test split is written apart and only ``digits_evaluate``
reads it.
"""

from __future__ import annotations

from runtime.program import chosen_name, run, start_program

start_program(__name__)  # first: the imports below take seconds (TensorFlow's), and Ctrl-C during them ends in one line

import sys

from dogs_vs_cats import digits_sources, paths
from dogs_vs_cats.classes import DIGITS_DATASETS
from dogs_vs_cats.config import load_params
from dogs_vs_cats.digits_io import save_splits, split_validation


def main() -> None:
    dataset = chosen_name(sys.argv[1:], DIGITS_DATASETS, "stages.digits_data")
    params = load_params()
    train, test = digits_sources.load(dataset, params.digits.data)
    train, validation = split_validation(train, params.digits.data.validation, params.seed)
    save_splits(paths.digits_data_dir(dataset), {"train": train, "validation": validation, "test": test})
    counts = ", ".join(
        f"{name} {len(s.y)}" for name, s in (("train", train), ("validation", validation), ("test", test))
    )
    print(f"digits_data: {dataset} from {params.digits.data.source}: {counts}")


if __name__ == "__main__":
    run(main)
