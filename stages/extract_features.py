"""Stage ``extract_features``: run the pretrained base once over every split and keep its features.

Features stream to disk a batch at a time, so a split of any size (all 25,000 images, a large base) needs
the memory of one batch. The extractor (preprocessing + base) is saved too, so ``finetune`` starts from
exactly the weights that produced the features: with ``features.weights: none`` a rebuilt random base would
be another network.
"""

from __future__ import annotations

from runtime.program import run, start_program

start_program(__name__)  # first: the imports below take seconds (TensorFlow's), and Ctrl-C during them ends in one line

import time

from dogs_vs_cats import paths
from dogs_vs_cats.classes import SPLITS
from dogs_vs_cats.config import load_params
from dogs_vs_cats.datasets import extract_split, image_dataset
from dogs_vs_cats.models import build_extractor
from dogs_vs_cats.training import save_model, seed_everything, set_precision
from runtime.files import write_json


def main() -> None:
    params = load_params()
    seed_everything(params.seed, params.train.deterministic)  # fixes the random base when features.weights is none
    set_precision(params.train)  # the base computes in train.precision; the features are stored as float32
    extractor = build_extractor(params.image.side, params.features)
    counted, seconds = 0, 0.0
    for split in SPLITS:
        start = time.perf_counter()
        dataset = image_dataset(split, params.image.side, params.image.batch_size)
        images = extract_split(extractor, dataset, paths.features_file(split))
        seconds += time.perf_counter() - start
        counted += images
        print(f"extract_features: {split}: {images} images, features of shape {extractor.output_shape[1:]}")
    save_model(extractor, paths.BASE_MODEL)
    # The rate goes to the log, not to the metrics: it is this machine's speed, not a result to compare.
    print(f"extract_features: {counted} images in {seconds:.1f} s, {counted / seconds:.2f} images/s")
    write_json(
        paths.FEATURES_METRICS,
        {"base": params.features.base, "images": counted, "feature_shape": list(extractor.output_shape[1:])},
    )


if __name__ == "__main__":
    run(main, no_arguments=True)
