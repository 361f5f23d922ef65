"""Stage ``finetune``: the trained head on the pretrained base, its top block unfrozen, at a low rate.

The head was trained on frozen features, so its first gradients are small; a large rate would wreck the
pretrained filters before the head settles (the book's reason for RMSprop at 1e-5).

With ``finetune.cache_frozen`` the blocks below the unfrozen ones, which never change, run once per image,
and the unfrozen blocks and the head train on their stored output: several times faster per epoch, but
without augmentation (it acts on pixels), which the stage records as ``augmented: false``.
"""

from __future__ import annotations

from runtime.program import run, start_program

start_program(__name__)  # first: the imports below take seconds (TensorFlow's), and Ctrl-C during them ends in one line

from dogs_vs_cats import models, paths
from dogs_vs_cats.augmentation import augmentation
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
        model = models.build_finetuned(extractor, head, augmentation(params.augment, params.seed))
        unfrozen = models.unfreeze(extractor, cfg.unfreeze)
        print(f"finetune: training {', '.join(unfrozen)} and the head")
        if cfg.cache_frozen:
            # trained shares its layers with model: training it trains the saved model.
            frozen, trained = models.split_frozen(extractor, head)
            cached = (predict_split(frozen, split, image.side, image.batch_size) for split in ("train", "validation"))
            train, validation = ((outputs.features, outputs.labels) for outputs in cached)
            notes = {"cache_frozen": True, "augmented": False}
        else:
            trained = model
            train, validation = training_images(image.side, image.batch_size)
            notes = {"cache_frozen": False, "augmented": params.augment.active()}
        # After unfreezing: compile fixes what trains.
        compile_binary(trained, cfg.learning_rate, params.train.jit_compile)
        trained.summary(show_trainable=True)
        fit(
            trained,
            train,
            validation=validation,
            log_dir=paths.live_dir(STAGE),
            plan=cfg.plan,
            batch_size=image.batch_size,
            batch_key="image.batch_size",
            seed=params.seed,
            checkpoint=checkpoint,
            notes=notes,
        )
        save_model(model, paths.FINETUNED_MODEL)


if __name__ == "__main__":
    run(main, no_arguments=True)
