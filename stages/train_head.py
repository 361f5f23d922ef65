"""Stage ``train_head``: the dense classifier trained on the extracted features (fast: no convolutions)."""

from __future__ import annotations

from runtime.program import run, start_program

start_program(__name__)  # first: the imports below take seconds (TensorFlow's), and Ctrl-C during them ends in one line

from dogs_vs_cats import paths
from dogs_vs_cats.config import load_params
from dogs_vs_cats.datasets import feature_stats, load_features
from dogs_vs_cats.models import build_head
from dogs_vs_cats.training import compile_binary, fit, save_model, training_session

STAGE = "train_head"


def main() -> None:
    params = load_params()
    cfg = params.head
    train, validation = load_features("train"), load_features("validation")
    with training_session(params, STAGE) as checkpoint:
        model = build_head(train.features.shape[1:], cfg, feature_stats(train.features))
        compile_binary(model, cfg.learning_rate, params.train.jit_compile)
        model.summary()
        fit(
            model,
            (train.features, train.labels),
            validation=(validation.features, validation.labels),
            log_dir=paths.live_dir(STAGE),
            plan=cfg.plan,
            batch_size=cfg.batch_size,
            batch_key="head.batch_size",
            seed=params.seed,
            checkpoint=checkpoint,
        )
        save_model(model, paths.HEAD_MODEL)


if __name__ == "__main__":
    run(main, no_arguments=True)
