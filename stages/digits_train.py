"""Stage ``digits_train@<dataset>``: a convnet for MNIST or Fashion-MNIST, the course's or the homework's.

The networks (``digits.network: book``, the course's; ``strong``, the homework's) are
``dogs_vs_cats.digits_model``'s.
"""

from __future__ import annotations

from runtime.program import chosen_name, run, start_program

start_program(__name__)  # first: the imports below take seconds (TensorFlow's), and Ctrl-C during them ends in one line

import math
import sys

from dogs_vs_cats import paths
from dogs_vs_cats.classes import DIGITS_DATASETS
from dogs_vs_cats.config import load_params
from dogs_vs_cats.digits_io import load_split
from dogs_vs_cats.digits_model import batches, build_network, compile_digits, examples
from dogs_vs_cats.training import fit, save_model, training_session, xla


def main() -> None:
    dataset = chosen_name(sys.argv[1:], DIGITS_DATASETS, "stages.digits_train")
    params = load_params()
    cfg = params.digits
    train, validation = load_split(dataset, "train"), load_split(dataset, "validation")
    with training_session(params, f"digits_train@{dataset}") as checkpoint:
        model = build_network(cfg, params.seed)
        compile_digits(model, cfg, math.ceil(len(train.y) / cfg.batch_size), xla(model, params.train.jit_compile))
        model.summary()
        fit(
            model,
            examples(train),
            validation=batches(validation, cfg.batch_size),
            log_dir=paths.digits_live_dir(dataset),
            plan=cfg.plan,
            batch_size=cfg.batch_size,
            batch_key="digits.batch_size",
            seed=params.seed,
            checkpoint=checkpoint,
            notes={"network": cfg.network, "train_images": len(train.y), "validation_images": len(validation.y)},
        )
        save_model(model, paths.digits_model(dataset))


if __name__ == "__main__":
    run(main)
