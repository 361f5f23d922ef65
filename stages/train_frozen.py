"""Stage ``train_frozen``: the book's third model, a new head on the frozen pretrained base, trained end to end
on augmented images.

Chollet trains four models: from scratch, a head on cached features (fast, but no augmentation), this one,
and fine-tuning. Here every image goes through the whole frozen base each epoch, so augmentation works,
at the cost of the base's forward pass per image per epoch. Its head is built as ``train_head`` builds its
own, from ``frozen.units``, ``frozen.dropout`` and ``frozen.normalize`` (with the training features'
statistics), and starts from scratch.
"""

from __future__ import annotations

from stages import models, paths
from stages.common import run
from stages.config import load_params
from stages.datasets import feature_stats, load_features, training_images
from stages.training import compile_binary, distribution, fit, save_model, seed_everything, set_precision

STAGE = "train_frozen"


def main() -> None:
    params = load_params()
    image, cfg, train_cfg = params.image, params.frozen, params.train
    strategy = distribution(train_cfg, STAGE)  # before any TensorFlow op, as multi_worker needs
    seed_everything(params.seed, train_cfg.deterministic)
    set_precision(train_cfg)
    with strategy.scope():
        extractor = models.rebuilt_extractor(models.load_saved(paths.BASE_MODEL), image.size, params.features.base)
        extractor.trainable = False
        stats = feature_stats(load_features("train").features) if cfg.normalize else None
        head = models.build_head(extractor.output_shape[1:], cfg, stats)
        model = models.build_finetune(extractor, head, models.augmentation(params.augment, params.seed), name="frozen")
        compile_binary(model, cfg.learning_rate, train_cfg.jit_compile)
        model.summary(show_trainable=True)
        train, validation = training_images(image.size, image.batch_size, params.seed)
        fit(
            model,
            train,
            validation=validation,
            stage=STAGE,
            epochs=cfg.epochs,
            patience=cfg.patience,
            notes={"augmented": params.augment.active()},
        )
        save_model(model, paths.FROZEN_MODEL)


if __name__ == "__main__":
    run(main)
