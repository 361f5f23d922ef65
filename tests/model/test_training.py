"""The learning stages on learnable synthetic data: they learn, they log, they repeat, they freeze."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from dogs_vs_cats import paths
from dogs_vs_cats.config import load_params
from dogs_vs_cats.datasets import VARIANCE_FLOOR, feature_stats, image_dataset, load_features, write_features
from dogs_vs_cats.models import build_head
from dogs_vs_cats.training import compile_binary, fit, seed_everything
from runtime.errors import PipelineError
from tests.conftest import LEARNABLE, inside, run_stage

LEARNED = 0.85  # the baseline's test accuracy; chance is 0.5, and no colour cue helps (tests/unit/test_synthetic.py)
HEAD_LEARNED = 0.7  # the head sees features of a random VGG16 at 32 px: less, but far above chance
MARGIN = 0.15  # by which the head must beat the best of its shuffled-label controls


def _accuracy(model: keras.Model, inputs, labels: np.ndarray) -> float:
    probabilities = np.asarray(model.predict(inputs, verbose=0)).reshape(-1)
    return float(np.mean((probabilities > 0.5) == labels.reshape(-1)))


def _test_images(root: Path) -> tuple:
    """The test split, which no stage uses to pick an epoch (the validation split picks it)."""
    with inside(root):
        dataset = image_dataset("test", 32, 64)
        labels = np.concatenate([y.numpy() for _, y in dataset])
    return dataset, labels


def test_baseline_learns_far_above_chance(trained: Path) -> None:
    dataset, labels = _test_images(trained)
    model = keras.models.load_model(trained / "models/baseline.keras")
    assert _accuracy(model, dataset, labels) >= LEARNED


def test_head_beats_every_shuffled_label_control(trained: Path) -> None:
    # The same head, trained on the training labels permuted (three seeds), picks its best epoch on the real
    # validation labels as the real head does; scored on the test split, it can only be lucky, not right.
    with inside(trained):
        params = load_params()
        train, validation, test = (load_features(split) for split in ("train", "validation", "test"))
        real = _accuracy(keras.models.load_model("models/head.keras"), test.features, test.labels)
        controls = []
        for seed in range(3):
            seed_everything(seed, deterministic=True)
            head = build_head(train.features.shape[1:], params.head, feature_stats(train.features))
            compile_binary(head, params.head.learning_rate)
            shuffled = np.random.default_rng(seed).permutation(train.labels)
            validation_pair = (validation.features, validation.labels)
            fit(
                head,
                (train.features, shuffled),
                validation=validation_pair,
                log_dir=Path(f"metrics/shuffled_head_{seed}"),
                plan=dataclasses.replace(params.head.plan, patience=None),
                batch_size=params.head.batch_size,
                batch_key="head.batch_size",
                seed=seed,
            )
            controls.append(_accuracy(head, test.features, test.labels))
    assert real >= HEAD_LEARNED, (real, controls)
    assert real >= max(controls) + MARGIN, (real, controls)


@pytest.mark.parametrize(
    ("stage", "epochs"),
    [
        (stage, LEARNABLE[f"{key}.epochs"])
        for stage, key in (("train_baseline", "baseline"), ("train_head", "head"), ("finetune", "finetune"))
    ],
)
def test_every_epoch_is_logged_for_dvc_plots(trained: Path, stage: str, epochs: int) -> None:
    live = trained / "metrics" / stage
    curves = pd.read_csv(paths.curves_file(live))
    assert list(curves.columns) == ["epoch", "split", "loss", "accuracy"]
    for split in ("train", "validation"):
        assert curves.loc[curves["split"] == split, "epoch"].tolist() == list(range(1, epochs + 1))
    assert not (live / "plots").exists()  # DVCLive's one file per metric would be one plot per metric
    summary = json.loads((live / "metrics.json").read_text())
    # The saved model only: no last-epoch numbers (DVCLive's train.*, eval.*, step) beside the kept epoch's.
    assert set(summary) - {"augmented", "cache_frozen"} == {"best", "epochs", "policy"} and summary["epochs"] == epochs
    # The kept epoch is the one of lowest logged validation loss, counted from 1 as the curves' epoch is.
    validation = curves[curves["split"] == "validation"]
    best = validation.loc[validation["loss"].idxmin()]
    assert summary["best"]["epoch"] == best["epoch"]
    assert (summary["best"]["val_loss"], summary["best"]["val_accuracy"]) == pytest.approx(
        (best["loss"], best["accuracy"])
    )
    trained_at_best = curves[(curves["split"] == "train") & (curves["epoch"] == best["epoch"])].iloc[0]
    assert (summary["best"]["loss"], summary["best"]["accuracy"]) == pytest.approx(
        (trained_at_best["loss"], trained_at_best["accuracy"])
    )
    assert not (live / "dvc.yaml").exists()  # dvc.yaml is ours; DVCLive must not rewrite it


@pytest.mark.parametrize("stage", ["train_head", "train_baseline"])
def test_same_params_give_the_same_metrics_in_another_run(trained: Path, stage: str) -> None:
    summary = trained / "metrics" / stage / "metrics.json"
    first = summary.read_text()
    result = run_stage(stage, trained)
    assert result.returncode == 0, result.stderr[-2000:]
    assert summary.read_text() == first


def test_finetune_trains_block5_and_the_head_and_nothing_else(trained: Path) -> None:
    base = keras.models.load_model(trained / "models/base.keras")
    head = keras.models.load_model(trained / "models/head.keras")
    tuned = keras.models.load_model(trained / "models/finetuned.keras")
    tuned_base = tuned.get_layer("extractor").get_layer("vgg16")
    checked = 0
    for layer in base.get_layer("vgg16").layers:
        if not layer.weights:
            continue
        before, after = layer.get_weights(), tuned_base.get_layer(layer.name).get_weights()
        same = all(np.array_equal(b, a) for b, a in zip(before, after, strict=True))
        assert same == (not layer.name.startswith("block5")), layer.name
        checked += 1
    assert checked == 13
    tuned_head = tuned.get_layer("head")
    for before, after in zip(head.layers, tuned_head.layers, strict=True):
        if before.weights:
            same = all(np.array_equal(b, a) for b, a in zip(before.get_weights(), after.get_weights(), strict=True))
            assert same == (not before.trainable_weights), before.name  # standardize has no trainable weights


def test_train_frozen_trains_a_new_head_and_leaves_the_base_as_it_was(trained: Path) -> None:
    base = keras.models.load_model(trained / "models/base.keras").get_layer("vgg16")
    frozen = keras.models.load_model(trained / "models/frozen.keras")
    assert frozen.name == "frozen" and [layer.name for layer in frozen.layers[1:]] == [
        "augmentation",
        "extractor",
        "head",
    ]
    frozen_base = frozen.get_layer("extractor").get_layer("vgg16")
    checked = 0
    for layer in base.layers:
        if layer.weights:
            pairs = zip(layer.get_weights(), frozen_base.get_layer(layer.name).get_weights(), strict=True)
            assert all(np.array_equal(before, after) for before, after in pairs), layer.name  # the base never moved
            checked += 1
    assert checked == 13
    head = keras.models.load_model(trained / "models/head.keras").get_layer("dense").get_weights()[0]
    new_head = frozen.get_layer("head").get_layer("dense").get_weights()[0]
    assert not np.allclose(head, new_head)  # its own head, not train_head's
    summary = json.loads((trained / "metrics/train_frozen/metrics.json").read_text())
    assert summary["augmented"] is True and summary["epochs"] == 1  # tiny: one epoch, counted from 1


def test_feature_stats_floor_dead_features() -> None:
    features = np.zeros((4, 1, 1, 3), dtype="float32")
    features[:, 0, 0, 0] = [0.0, 1.0, 2.0, 3.0]  # variance 1.25
    features[:, 0, 0, 1] = 5.0  # never varies
    mean, variance = feature_stats(features)
    np.testing.assert_allclose(mean, [1.5, 5.0, 0.0])
    floor = VARIANCE_FLOOR * 1.25 / 3
    np.testing.assert_allclose(variance, [1.25, floor, floor])


def test_features_keep_the_manifest_labels_in_file_order(trained: Path) -> None:
    manifest = pd.read_csv(trained / "data/sample/manifest.csv")
    truth = dict(zip(manifest["path"], manifest["label"], strict=True))
    with inside(trained):
        for split, count in ((s, 2 * LEARNABLE[f"sample.{s}_per_class"]) for s in ("train", "validation", "test")):
            features = load_features(split)
            assert features.features.shape == (count, 1, 1, 512)
            assert [truth[f] for f in features.files] == [("cat", "dog")[label] for label in features.labels]
            assert sorted(features.files) == sorted(manifest.loc[manifest["split"] == split, "path"])


def test_streamed_features_are_the_bases_predictions(trained: Path) -> None:
    with inside(trained):
        base = keras.models.load_model("models/base.keras")
        dataset = image_dataset("test", 32, 16)
        expected = base.predict(dataset, verbose=0)
        stored = load_features("test")
    assert list(stored.files) == dataset.file_paths
    np.testing.assert_allclose(stored.features, expected, rtol=1e-5, atol=1e-6)


def _batches(count: int, shape: tuple[int, ...]):
    for index in range(count):
        yield np.full(shape, index, dtype=np.float32)


def test_features_stream_to_disk_one_batch_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tracemalloc

    monkeypatch.chdir(tmp_path)
    batch = (32, 4, 4, 512)  # 1 MiB per batch, 96 MiB in all
    count = 96
    shape = (count * batch[0], *batch[1:])
    labels, files = np.arange(shape[0]) % 2, np.array([f"train/x/{n}.jpg" for n in range(shape[0])])
    path = tmp_path / "data/features/train.npz"
    tracemalloc.start()
    try:
        write_features(path, _batches(count, batch), shape, labels, files)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20  # a few batches at most, never the 96 MiB split
    with inside(tmp_path):
        stored = load_features("train")
    assert stored.features.shape == shape and stored.features.dtype == np.float32
    assert stored.features[:: batch[0], 0, 0, 0].tolist() == list(range(count))
    assert stored.labels.tolist() == labels.tolist() and stored.files.tolist() == files.tolist()


@pytest.mark.parametrize("count", [2, 4])
def test_features_of_the_wrong_count_leave_no_file(tmp_path: Path, count: int) -> None:
    path = tmp_path / "test.npz"
    with pytest.raises(PipelineError, match=r"test\.npz: .*(features written, 3 expected|does not fit)"):
        write_features(path, _batches(count, (1, 2)), (3, 2), np.zeros(3), np.array(["a", "b", "c"]))
    assert list(tmp_path.iterdir()) == []


def test_a_piped_fit_says_what_it_will_run_and_logs_each_epoch_with_the_time_left(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    import re

    from dogs_vs_cats import paths, training
    from dogs_vs_cats.config import HeadConfig, TrainingPlan
    from dogs_vs_cats.training import duration

    # While it trains, tools.watch's file holds the curves so far after each epoch, and nothing else appears.
    seen = []
    after_epoch = training.WatchedCurves.on_epoch_end

    def watched(self, epoch, logs=None):
        after_epoch(self, epoch, logs)
        seen.append((pd.read_csv(self.path), Path("metrics/head").exists()))

    monkeypatch.setattr(training.WatchedCurves, "on_epoch_end", watched)
    stale = tmp_path / paths.watched_curves("head", 999_999_999)  # a killed run's: no such process
    stale.parent.mkdir(parents=True)
    stale.write_text("epoch,split,loss,accuracy\n")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6)).astype("float32"), rng.integers(0, 2, 40).astype("float32")
    model = build_head((6,), HeadConfig(False, 4, 0.0, 1e-3, 8, 3, None))
    compile_binary(model, 1e-3)
    with inside(tmp_path):
        fit(
            model,
            (x, y),
            validation=(x[:10], y[:10]),
            log_dir=Path("metrics/head"),
            plan=TrainingPlan("head", 1e-3, 3, None),
            batch_size=8,
            batch_key="head.batch_size",
            seed=0,
        )
    lines = capsys.readouterr().out.splitlines()  # pytest's stdout is no terminal: the piped log
    assert lines[0] == "head: at most 3 epochs over 40 images and 10 images"
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 3 and len(lines) == 4, lines  # one line an epoch, no Keras line beside it
    number = r"\d+\.\d{4}"
    for n, line in enumerate(epochs, 1):
        assert re.fullmatch(
            rf"epoch {n}/3 in [\d.]+ s: loss {number} accuracy {number} val_loss {number} val_accuracy {number}; "
            + ("about [\\d.]+ s left" if n < 3 else "the last"),
            line,
        ), line
    assert [duration(s) for s in (4.25, 42, 300, 14100)] == ["4.2 s", "42 s", "5.0 min", "3 h 55 min"]
    assert [len(table) for table, _ in seen] == [2, 4, 6]  # each epoch: a train and a validation row
    final = pd.read_csv(tmp_path / "metrics/head/curves.csv")
    pd.testing.assert_frame_equal(seen[-1][0].sort_values(["split", "epoch"], ignore_index=True),
                                  final.sort_values(["split", "epoch"], ignore_index=True))  # fmt: skip
    assert not any(declared for _, declared in seen)  # the declared folder appears when training ends well
    assert not list((tmp_path / paths.WATCH_DIR).iterdir())  # its own file removed, the stale one too


def test_a_diverged_fit_stops_at_once_in_one_line_and_saves_nothing(tmp_path: Path, capsys) -> None:
    from dogs_vs_cats.config import HeadConfig, TrainingPlan

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6)).astype("float32"), rng.integers(0, 2, 40).astype("float32")
    y[20] = np.nan  # the loss is NaN from the third batch on, as after a learning rate far too high
    model = build_head((6,), HeadConfig(False, 4, 0.0, 1e-3, 8, 3, None))
    compile_binary(model, 1e-3)
    previous = tmp_path / "metrics/head/metrics.json"
    previous.parent.mkdir(parents=True)
    previous.write_text("{}")
    with inside(tmp_path), pytest.raises(PipelineError) as refused:
        fit(model, (x, y), validation=(x[:10], y[:10]), log_dir=Path("metrics/head"),
            plan=TrainingPlan("head", 1e-3, 3, None), batch_size=8, batch_key="head.batch_size", seed=0)  # fmt: skip
    assert str(refused.value) == (
        "head: loss is nan at epoch 1, the training diverged and nothing was saved; lower head.learning_rate"
    )
    out = capsys.readouterr().out
    assert "Invalid loss" not in out  # Keras' TerminateOnNaN prints a line of its own: fit says it in one
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 1 and epochs[0].startswith("epoch 1/3 in ") and "loss nan" in epochs[0]  # not 3
    assert previous.read_text() == "{}" and sorted(p.name for p in previous.parent.iterdir()) == ["metrics.json"]
