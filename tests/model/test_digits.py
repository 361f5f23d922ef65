"""The digits study: loaders of every source, the networks, their learning, and evaluation."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import struct
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from dogs_vs_cats import digits_io, digits_model, digits_sources, digits_synthetic, training
from dogs_vs_cats.classes import DIGITS_CLASS_NAMES, DIGITS_DATASETS
from dogs_vs_cats.config import load_params
from dogs_vs_cats.models import built_under, load_saved
from runtime.errors import PipelineError
from stages import digits_evaluate
from tests.conftest import REPO, run_stage, write_params


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) in the IDX format of the original MNIST files."""
    return struct.pack(f">BBBB{array.ndim}I", 0, 0, 0x08, array.ndim, *array.shape) + array.tobytes()


def write_idx(folder: Path, train: digits_io.Split, test: digits_io.Split) -> None:
    """The four original ``*-ubyte.gz`` files of a dataset."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in zip((train, test), digits_sources.IDX_FILES.values(), strict=True):
        (folder / images).write_bytes(gzip.compress(idx_bytes(split.x)))
        (folder / labels).write_bytes(gzip.compress(idx_bytes(split.y)))


def small_split(count: int, seed: int) -> digits_io.Split:
    rng = np.random.default_rng(seed)
    return digits_io.Split(
        rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), (np.arange(count) % 10).astype(np.uint8)
    )


@pytest.fixture
def official(tmp_path: Path) -> tuple[digits_io.Split, digits_io.Split]:
    return small_split(30, 1), small_split(10, 2)


def assert_same(got: digits_io.Split, expected: digits_io.Split) -> None:
    assert got.x.dtype == np.uint8 and got.y.dtype == np.uint8
    assert np.array_equal(got.x, expected.x) and np.array_equal(got.y, expected.y)


def test_the_original_ubyte_gz_files_round_trip(tmp_path: Path, official) -> None:
    write_idx(tmp_path / "mnist", *official)
    train, test = digits_sources.from_files(tmp_path / "mnist")
    assert_same(train, official[0])
    assert_same(test, official[1])


def test_a_keras_npz_round_trips(tmp_path: Path, official) -> None:
    (tmp_path / "mnist").mkdir()
    train, test = official
    np.savez(tmp_path / "mnist/mnist.npz", x_train=train.x, y_train=train.y, x_test=test.x, y_test=test.y)
    got_train, got_test = digits_sources.from_files(tmp_path / "mnist")
    assert_same(got_train, train)
    assert_same(got_test, test)


def corrupt(folder: Path, name: str, data: bytes) -> Path:
    (folder / name).write_bytes(data)
    return folder / name


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda raw: gzip.compress(raw)[:-30], "cannot decompress it"),  # a truncated download
        (lambda raw: gzip.compress(raw[:-100]), "its header says"),  # fewer images than the header declares
        (lambda raw: gzip.compress(raw + b"extra"), "its header says"),
        (lambda raw: b"\x1f\x8b" + raw, "cannot decompress it"),  # gzip's magic, then no gzip
        (lambda raw: gzip.compress(b"<html>not found</html>"), "not an IDX file"),
        (lambda raw: gzip.compress(raw[:3] + b"\x02" + raw[4:]), "holds 2-D data"),
    ],
)
def test_a_damaged_ubyte_file_is_one_line_naming_it(tmp_path: Path, official, damage, says: str) -> None:
    folder = tmp_path / "mnist"
    write_idx(folder, *official)
    name = digits_sources.IDX_FILES["train"][0]
    path = corrupt(folder, name, damage(idx_bytes(official[0].x)))
    with pytest.raises(PipelineError, match=says) as error:
        digits_sources.from_files(folder)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


def test_wrong_shapes_and_labels_are_refused(tmp_path: Path, official) -> None:
    folder = tmp_path / "mnist"
    write_idx(folder, *official)
    big = np.zeros((4, 32, 32), dtype=np.uint8)
    corrupt(folder, digits_sources.IDX_FILES["test"][0], gzip.compress(idx_bytes(big)))
    with pytest.raises(PipelineError, match=r"declares shape \(4, 32, 32\)"):
        digits_sources.from_files(folder)
    (tmp_path / "npz").mkdir()
    train, test = official
    arrays = {"x_train": train.x, "y_train": train.y + 5, "x_test": test.x, "y_test": test.y}
    np.savez(tmp_path / "npz/mnist.npz", **arrays)
    with pytest.raises(PipelineError, match="labels must be whole numbers from 0 to 9"):
        digits_sources.from_files(tmp_path / "npz")
    np.savez(tmp_path / "npz/mnist.npz", **{**arrays, "y_train": train.y[:-1]})
    with pytest.raises(PipelineError, match=r"\(29,\) labels for 30 images"):
        digits_sources.from_files(tmp_path / "npz")
    np.savez(tmp_path / "npz/mnist.npz", x_train=train.x)
    with pytest.raises(PipelineError, match="has no array y_train"):
        digits_sources.from_files(tmp_path / "npz")
    (tmp_path / "npz/mnist.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(PipelineError, match=r"not a readable \.npz"):
        digits_sources.from_files(tmp_path / "npz")
    with pytest.raises(PipelineError, match="not found"):
        digits_sources.from_files(tmp_path / "nothing")


def test_the_validation_split_is_seeded_disjoint_and_never_the_test_set(official) -> None:
    train, _ = official
    kept, held = digits_io.split_validation(train, 12, seed=3)
    assert (len(kept.y), len(held.y)) == (18, 12)
    rows = {x.tobytes() for x in kept.x} | {x.tobytes() for x in held.x}
    assert rows == {x.tobytes() for x in train.x}  # every image once, in one split or the other
    again = digits_io.split_validation(train, 12, seed=3)[1]
    assert np.array_equal(again.x, held.x)
    assert not np.array_equal(digits_io.split_validation(train, 12, seed=4)[1].x, held.x)
    with pytest.raises(PipelineError, match=r"digits\.data\.validation is 30, but there are only 30 training images"):
        digits_io.split_validation(train, 30, seed=3)


def test_the_offline_sources_look_like_the_real_datasets() -> None:
    train, test = digits_synthetic.sklearn_digits()
    assert (len(train.y), len(test.y)) == (1438, 359)  # scikit-learn's 1,797 real digits
    assert train.x[:, :4].max() == 0 and train.x[:, 24:].max() == 0  # a 20x20 digit, centred like MNIST's
    assert train.x.max() == 255 and set(np.unique(train.y)) == set(range(10))
    fashion, fashion_test = digits_synthetic.generated_fashion(12)
    assert (len(fashion.y), len(fashion_test.y)) == (120, 20)
    assert np.bincount(fashion.y).tolist() == [12] * 10


def test_without_network_the_keras_source_is_one_line_naming_the_others(workdir: Path, tmp_path: Path) -> None:
    write_params(workdir / "params.yaml", {"digits.data.source": "keras"})
    # A fresh Keras cache and a proxy that refuses: the real download path fails here as it does offline.
    env = {"KERAS_HOME": str(tmp_path / "keras"), "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": ""}
    result = run_stage("digits_data", workdir, env=env, args=("mnist",))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: digits.data.source keras: cannot download mnist (")
    assert "digits.data.source: files" in last and "offline" in last
    assert not (workdir / "data/digits").exists()


def test_the_stage_takes_one_known_dataset(workdir: Path) -> None:
    result = run_stage("digits_data", workdir, args=("cifar10",))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: usage: python -m stages.digits_data {mnist,fashion_mnist}"


def test_the_digits_stages_run_every_dataset_the_code_knows() -> None:
    from ruamel.yaml import YAML

    pipeline = YAML(typ="safe").load((REPO / "dvc.yaml").read_text())
    (datasets,) = (entry["digits_datasets"] for entry in pipeline["vars"] if "digits_datasets" in entry)
    assert tuple(datasets) == DIGITS_DATASETS
    for stage in ("digits_data", "digits_train", "digits_evaluate"):
        assert pipeline["stages"][stage]["foreach"] == "${digits_datasets}"


def offline_mnist(validation: int = 300) -> tuple[digits_io.Split, digits_io.Split, digits_io.Split]:
    train, test = digits_synthetic.sklearn_digits()
    return (*digits_io.split_validation(train, validation, seed=0), test)


def train_book(train, validation, epochs: int, seed: int = 0) -> keras.Model:
    """The book's network, no augmentation, RMSprop at 1e-3 (the course's recipe), trained in process."""
    cfg = dataclasses.replace(
        load_params(REPO / "params.yaml").digits,
        network="book",
        dropout=0.0,
        augment=load_params(REPO / "params.yaml").digits.augment.__class__(0.0, 0.0, 0.0),
        optimizer="rmsprop",
        schedule="constant",
        batch_size=64,
    )
    keras.utils.set_random_seed(seed)
    model = digits_model.build_network(cfg, seed)
    digits_model.compile_digits(model, cfg, math.ceil(len(train.y) / cfg.batch_size))
    model.fit(
        training.shuffled_epochs(digits_model.examples(train), len(train.y), 64, seed, 0, epochs),
        validation_data=digits_model.batches(validation, 64),
        epochs=epochs,
        steps_per_epoch=math.ceil(len(train.y) / 64),
        verbose=0,
        shuffle=False,  # the dataset shuffles itself
    )
    return model


@pytest.fixture(scope="module")
def book_on_real_digits() -> keras.Model:
    """The book's network after 10 epochs on scikit-learn's real digits (seeded split)."""
    train, validation, _ = offline_mnist()
    return train_book(train, validation, epochs=10)


def test_the_book_network_learns_real_handwritten_digits(book_on_real_digits: keras.Model) -> None:
    test = offline_mnist()[2]
    accuracy = book_on_real_digits.evaluate(digits_model.batches(test, 64), verbose=0)[1]
    assert accuracy >= 0.95


def test_predict_converts_any_photo_of_a_digit_and_says_how(
    book_on_real_digits: keras.Model, workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    from tools import predict

    book_on_real_digits.save(workdir / "mnist.keras")
    test = offline_mnist()[2]
    right = book_on_real_digits.predict(test.x[:40, ..., np.newaxis].astype("float32"), verbose=0).argmax(axis=1)
    index = int(np.flatnonzero(right == test.y[:40])[0])  # a test digit the model gets right as it is
    ink_on_paper = Image.fromarray(255 - test.x[index]).resize((112, 112), Image.Resampling.NEAREST).convert("RGB")
    ink_on_paper.save(workdir / "scan.png")
    predict.main(["scan.png", "--model", "mnist.keras", "--format", "json"])
    (row,) = json.loads(capsys.readouterr().out)
    assert row["label"] == str(test.y[index])
    assert row["converted"] == "RGB to grayscale, inverted (light background), resized 112x112 to 28x28"
    pixels, done = predict.digits_pixels(Image.fromarray(test.x[index]))
    assert done == "as is" and np.array_equal(pixels[..., 0], test.x[index])


def test_with_shuffled_labels_it_stays_near_chance() -> None:
    train, validation, test = offline_mnist()
    rng = np.random.default_rng(0)
    shuffled = digits_io.Split(train.x, rng.permutation(train.y))
    model = train_book(shuffled, validation, epochs=3)
    accuracy = model.evaluate(digits_model.batches(test, 64), verbose=0)[1]
    assert accuracy < 0.25


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step"])
def test_the_schedules_run_the_rate_down_as_documented(schedule: str) -> None:
    cfg = dataclasses.replace(load_params(REPO / "params.yaml").digits, schedule=schedule, epochs=4)
    rate = digits_model.learning_rate(cfg, steps_per_epoch=10)  # 40 steps in all
    steps = (0, 19, 21, 31, 40)
    at = [float(rate(step)) if callable(rate) else rate for step in steps]
    expected = {
        "constant": [1e-3] * 5,
        "cosine": [1e-3 * (1 + math.cos(math.pi * step / 40)) / 2 for step in steps],  # to 0 at the last step
        "step": [1e-3, 1e-3, 1e-4, 1e-5, 1e-5],  # x0.1 after half the steps, and after three quarters
    }[schedule]
    assert at == pytest.approx(expected, abs=1e-9)


def test_lenet5_has_the_paper_s_layers_and_parameters() -> None:
    cfg = dataclasses.replace(load_params(REPO / "params.yaml").digits, network="lenet5", dropout=0.0)
    model = digits_model.build_network(cfg, 0)
    shapes = {
        layer.name: layer.output.shape[1:] for layer in model.layers if layer.name in {"c1", "s2", "c3", "s4", "c5"}
    }
    assert shapes == {"c1": (28, 28, 6), "s2": (14, 14, 6), "c3": (10, 10, 16), "s4": (5, 5, 16), "c5": (1, 1, 120)}
    # C1 156, C3 2,416, C5 48,120, F6 10,164, output 850
    assert model.count_params() == 156 + 2_416 + 48_120 + 10_164 + 850 == 61_706


@pytest.mark.parametrize("network", ["lenet5", "book", "strong"])
def test_each_network_builds_trains_saves_and_loads_in_safe_mode(network: str, tmp_path: Path) -> None:
    cfg = dataclasses.replace(load_params(REPO / "params.yaml").digits, network=network, epochs=1)
    with built_under("mixed_float16"):
        model = digits_model.build_network(cfg, 0)
        digits_model.compile_digits(model, cfg, steps_per_epoch=1)
        split = small_split(16, 0)
        model.fit(digits_model.batches(split, 8), epochs=1, verbose=0, shuffle=False)
    assert model.output.dtype == "float32"  # probabilities stay float32 under mixed precision
    assert not any(isinstance(layer, keras.layers.RandomFlip) for layer in model.layers)  # never flip digits
    model.save(tmp_path / "m.keras")
    loaded = load_saved(tmp_path / "m.keras")
    pixels = split.x[:4, ..., np.newaxis].astype("float32")
    probabilities = loaded.predict(pixels, verbose=0)
    assert probabilities.shape == (4, 10)
    assert probabilities.sum(axis=1) == pytest.approx(np.ones(4), abs=1e-3)
    assert np.allclose(probabilities, model.predict(pixels, verbose=0), atol=1e-3)


def test_the_scores_of_a_known_case() -> None:
    names = DIGITS_CLASS_NAMES["fashion_mnist"]
    labels = np.array([0, 0, 1, 1])
    probabilities = np.full((4, 10), 0.01)
    probabilities[[0, 1, 2, 3], [0, 1, 1, 1]] = 0.91  # the second image is a T-shirt taken for a trouser
    result = digits_evaluate.score(labels, probabilities, names)
    assert result["accuracy"] == 0.75
    assert result["per_class_accuracy"]["T-shirt/top"] == 0.5 and result["per_class_accuracy"]["Trouser"] == 1.0
    assert result["per_class_accuracy"]["Bag"] is None  # no test image of that class
    # Macro over all ten classes: precision (1 + 2/3) / 10, recall (0.5 + 1) / 10.
    assert result["precision_macro"] == pytest.approx((1 + 2 / 3) / 10)
    assert result["recall_macro"] == pytest.approx(0.15)
    assert result["log_loss"] == pytest.approx(-(3 * math.log(0.91) + math.log(0.01)) / 4, rel=1e-6)
    table = digits_evaluate.predictions_table(labels, probabilities, names)
    assert table["label"].tolist() == ["T-shirt/top", "T-shirt/top", "Trouser", "Trouser"]
    assert table["predicted"].tolist()[1] == "Trouser"
    sheet = digits_evaluate.gallery(small_split(4, 0), table, 12, "fashion_mnist")
    assert sheet.width >= 28 * digits_evaluate.ZOOM  # one tile: the one mistake
    assert sheet.height > 28 * digits_evaluate.ZOOM


def test_the_report_shows_each_dataset_that_has_metrics(tmp_path: Path) -> None:
    from tools import report

    assert report.digits_table(tmp_path) == "No digits metrics yet: run `dvc repro`."
    (tmp_path / "digits").mkdir()
    result = {"test_images": 10000, "accuracy": 0.9961, "f1_macro": 0.996, "log_loss": 0.0123}
    (tmp_path / "digits/mnist.json").write_text(json.dumps(result))
    lines = report.digits_table(tmp_path).splitlines()
    assert lines[0] == "| dataset | test images | accuracy | macro F1 | log loss |"
    assert lines[2:] == ["| mnist | 10000 | 0.9961 | 0.9960 | 0.0123 |"]


def test_bfloat16_reaches_float32_accuracy_on_real_digits_within_one_point(book_on_real_digits: keras.Model) -> None:
    train, validation, test = offline_mnist()
    with built_under("mixed_bfloat16"):
        bf16 = train_book(train, validation, epochs=10)
    assert bf16.layers[1].compute_dtype == "bfloat16"  # the policy reached the convolutions
    accuracy = {
        name: model.evaluate(digits_model.batches(test, 64), verbose=0)[1]
        for name, model in (("float32", book_on_real_digits), ("mixed_bfloat16", bf16))
    }
    print(f"scikit-learn's digits, test accuracy: {accuracy}")
    assert accuracy["mixed_bfloat16"] >= accuracy["float32"] - 0.01, accuracy


@pytest.mark.parametrize(
    "arrays",
    [
        {"x": np.zeros((3, 20, 20), np.uint8), "y": np.zeros(3, np.uint8)},  # another image size
        {"x": np.zeros((0, 28, 28), np.uint8), "y": np.zeros(0, np.uint8)},  # no images
        {"x": np.zeros((2, 28, 28), np.uint8), "y": np.array([3, 23], np.uint8)},  # a label past 9
        {"x": np.zeros((2, 28, 28), np.float32), "y": np.zeros(2, np.uint8)},  # other pixels
    ],
)
def test_a_split_of_other_images_or_labels_is_one_line_naming_digits_data(workdir: Path, arrays: dict) -> None:
    # A bare AssertionError (another size), an error deep in export (no images), or a split export took in.
    folder = workdir / "data/digits/mnist"
    folder.mkdir(parents=True)
    np.savez(folder / "test.npz", **arrays)
    with pytest.raises(PipelineError) as raised:
        digits_io.load_split("mnist", "test")
    assert str(raised.value) == (
        "data/digits/mnist/test.npz: not 28x28 uint8 images with labels 0 to 9, at least one; "
        "run dvc repro -f -s digits_data@mnist"
    )
