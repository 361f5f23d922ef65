"""Stage ``train_head``: the dense classifier trained on the extracted features (fast: no convolutions)."""

from __future__ import annotations

from stages import paths
from stages.common import run
from stages.config import load_params
from stages.datasets import feature_stats, load_features
from stages.models import build_head
from stages.training import (
    compile_binary,
    distribution,
    fit,
    is_worker_process,
    run_as_worker,
    save_model,
    seed_everything,
    set_precision,
)

STAGE = "train_head"


def main() -> None:
    params = load_params()
    if params.train.strategy == "multi_worker" and not is_worker_process():
        run_as_worker(STAGE, (paths.HEAD_MODEL, paths.live_dir(STAGE)), params.train.cluster_timeout)
        return
    cfg = params.head
    train, validation = load_features("train"), load_features("validation")
    strategy = distribution(params.train, STAGE)  # before any TensorFlow op, as multi_worker needs
    seed_everything(params.seed, params.train.deterministic)
    set_precision(params.train)
    with strategy.scope():
        model = build_head(train.features.shape[1:], cfg, feature_stats(train.features))
        compile_binary(model, cfg.learning_rate, params.train.jit_compile)
        model.summary()
        fit(
            model,
            train.features,
            train.labels,
            validation=(validation.features, validation.labels),
            stage=STAGE,
            epochs=cfg.epochs,
            patience=cfg.patience,
            batch_size=cfg.batch_size,
        )
        save_model(model, paths.HEAD_MODEL)


if __name__ == "__main__":
    run(main)
