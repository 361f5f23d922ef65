"""Stage ``train_frozen``: the book's third model, a new head on the frozen pretrained base, trained end to end
on augmented images.

Chollet trains four models: from scratch, a head on cached features (fast, but no augmentation), this one,
and fine-tuning. Here every image goes through the whole frozen base each epoch, so augmentation works,
at the cost of the base's forward pass per image per epoch. Its head is built as ``train_head`` builds its
own, from ``frozen.units``, ``frozen.dropout`` and ``frozen.normalize`` (with the training features'
statistics), and starts from scratch.
"""

from __future__ import annotations

from runtime.program import run, start_program

start_program(__name__)  # first: the imports below take seconds (TensorFlow's), and Ctrl-C during them ends in one line

from dogs_vs_cats import models, paths
from dogs_vs_cats.augmentation import augmentation
from dogs_vs_cats.config import load_params
from dogs_vs_cats.datasets import feature_stats, load_features, training_images
from dogs_vs_cats.training import compile_binary, fit, save_model, training_session

STAGE = "train_frozen"


def main() -> None:
    params = load_params()
    image, cfg = params.image, params.frozen
    with training_session(params, STAGE) as checkpoint:
        extractor = models.rebuilt_extractor(models.load_saved(paths.BASE_MODEL), image.side, params.features.base)
        extractor.trainable = False
        stats = feature_stats(load_features("train").features) if cfg.normalize else None
        head = models.build_head(extractor.output_shape[1:], cfg, stats)
        model = models.build_frozen(extractor, head, augmentation(params.augment, params.seed))
        compile_binary(model, cfg.learning_rate, params.train.jit_compile)
        model.summary(show_trainable=True)
        train, validation = training_images(image.side, image.batch_size)
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
            notes={"augmented": params.augment.active()},
        )
        save_model(model, paths.FROZEN_MODEL)


if __name__ == "__main__":
    run(main, no_arguments=True)
