"""Stage ``train_baseline``: the book's small convnet trained from scratch, with augmentation and dropout."""

from __future__ import annotations

from runtime.program import run, start_program

start_program(__name__)  # first: the imports below take seconds (TensorFlow's), and Ctrl-C during them ends in one line

from dogs_vs_cats import paths
from dogs_vs_cats.augmentation import augmentation
from dogs_vs_cats.config import load_params
from dogs_vs_cats.datasets import training_images
from dogs_vs_cats.models import build_baseline
from dogs_vs_cats.training import compile_binary, fit, save_model, training_session

STAGE = "train_baseline"


def main() -> None:
    params = load_params()
    image, cfg = params.image, params.baseline
    with training_session(params, STAGE) as checkpoint:
        model = build_baseline(image.side, cfg, augmentation(params.augment, params.seed))
        train, validation = training_images(image.side, image.batch_size)
        compile_binary(model, cfg.learning_rate, params.train.jit_compile)
        model.summary()
        fit(
            model,
            train,
            validation=validation,
            log_dir=paths.live_dir(STAGE),
            plan=cfg.plan,
            batch_size=image.batch_size,
            batch_key="image.batch_size",
            seed=params.seed,
            checkpoint=checkpoint,
        )
        save_model(model, paths.BASELINE_MODEL)


if __name__ == "__main__":
    run(main, no_arguments=True)
