"""Stage ``finetune``: the trained head on the pretrained base, its top block unfrozen, at a low rate.

The head was trained on frozen features, so its first gradients are small; a large rate would wreck the
pretrained filters before the head settles (the book's reason for RMSprop at 1e-5).

With ``finetune.cache_frozen`` the blocks below the unfrozen ones, which never change, run once per image,
and the unfrozen blocks and the head train on their stored output: several times faster per epoch, but
without augmentation (it acts on pixels), which the stage records as ``augmented: false``.
"""

from __future__ import annotations

from dogs_vs_cats import models, paths
from dogs_vs_cats.augmentation import augmentation
from dogs_vs_cats.common import run
from dogs_vs_cats.config import load_params
from dogs_vs_cats.datasets import predict_split, training_images
from dogs_vs_cats.training import compile_binary, fit, save_model, training_session

STAGE = "finetune"


def main() -> None:
    params = load_params()
    image, cfg = params.image, params.finetune
    with training_session(params, STAGE) as checkpoint:
        # Made again under train.precision, with the saved weights: a loaded model keeps its saved precision.
        extractor = models.rebuilt_extractor(models.load_saved(paths.BASE_MODEL), image.side, params.features.base)
        head = models.load_saved(paths.HEAD_MODEL)
        model = models.build_finetune(extractor, head, augmentation(params.augment, params.seed))
        unfrozen = models.unfreeze(extractor, cfg.unfreeze)
        print(f"finetune: training {', '.join(unfrozen)} and the head")
        fitting = {
            "log_dir": paths.live_dir(STAGE),
            "plan": cfg.plan,
            "batch_size": image.batch_size,
            "batch_key": "image.batch_size",
            "seed": params.seed,
            "checkpoint": checkpoint,
        }
        if cfg.cache_frozen:
            frozen, rest = models.split_frozen(extractor, head)
            train, validation = (
                predict_split(frozen, split, image.side, image.batch_size) for split in ("train", "validation")
            )
            # After unfreezing: compile fixes what trains.
            compile_binary(rest, cfg.learning_rate, params.train.jit_compile)
            rest.summary(show_trainable=True)
            fit(
                rest,  # shares its layers with model: training it trains the saved model
                (train.features, train.labels),
                validation=(validation.features, validation.labels),
                notes={"cache_frozen": True, "augmented": False},
                **fitting,
            )
        else:
            # After unfreezing: compile fixes what trains.
            compile_binary(model, cfg.learning_rate, params.train.jit_compile)
            model.summary(show_trainable=True)
            train, validation = training_images(image.side, image.batch_size)
            fit(
                model,
                train,
                validation=validation,
                notes={"cache_frozen": False, "augmented": params.augment.active()},
                **fitting,
            )
        save_model(model, paths.FINETUNED_MODEL)


if __name__ == "__main__":
    run(main)
