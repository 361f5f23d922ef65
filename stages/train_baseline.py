"""Stage ``train_baseline``: the book's small convnet trained from scratch, with augmentation and dropout."""

from __future__ import annotations

from stages import paths
from stages.common import run
from stages.config import load_params
from stages.datasets import training_images
from stages.models import augmentation, build_baseline
from stages.training import compile_binary, distribution, fit, save_model, seed_everything, set_precision

STAGE = "train_baseline"


def main() -> None:
    params = load_params()
    image, cfg, train_cfg = params.image, params.baseline, params.train
    strategy = distribution(train_cfg, STAGE)  # before any TensorFlow op, as multi_worker needs
    seed_everything(params.seed, train_cfg.deterministic)
    set_precision(train_cfg)
    with strategy.scope():
        model = build_baseline(image.size, cfg, augmentation(params.augment, params.seed))
        train, validation = training_images(image.size, image.batch_size, params.seed)
        compile_binary(model, cfg.learning_rate, train_cfg.jit_compile)
        model.summary()
        fit(model, train, validation=validation, stage=STAGE, epochs=cfg.epochs, patience=cfg.patience)
        save_model(model, paths.BASELINE_MODEL)


if __name__ == "__main__":
    run(main)
