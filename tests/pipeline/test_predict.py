"""predict: your own photos of any mode through the saved model, one line each, errors reported and survived."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from dogs_vs_cats.datasets import image_dataset
from tests.conftest import LEARNABLE, call_stage, damaged_jpeg, image_bytes, inside, run_stage, truncated_jpeg
from tools import predict


@pytest.fixture
def photos(trained: Path, tmp_path: Path) -> Path:
    """Five readable images of different kinds (two of them real test images), one truncated file and one whose
    damaged data only Pillow reads."""
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    cat = sorted((trained / "data/sample/test/cat").iterdir())[0]
    dog = sorted((trained / "data/sample/test/dog").iterdir())[0]
    shutil.copy(cat, folder / "cat.jpg")
    shutil.copy(dog, folder / "nested/dog.jpg")
    (folder / "gray.jpg").write_bytes(image_bytes(mode="L", size=(50, 40)))
    (folder / "alpha.png").write_bytes(image_bytes("PNG", "RGBA", (33, 47)))
    exif = Image.Exif()
    exif[0x0112] = 6
    (folder / "cmyk_rotated.jpg").write_bytes(image_bytes(mode="CMYK", size=(64, 20), exif=exif))
    (folder / "broken.jpg").write_bytes(image_bytes()[:150])
    (folder / "damaged.jpg").write_bytes(damaged_jpeg())  # Pillow reads it, TensorFlow's decoder does not
    (folder / "rows_missing.jpg").write_bytes(truncated_jpeg())  # both decode it, filling rows with gray
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder")
    return folder


def test_every_image_gets_a_line_and_a_corrupt_one_an_error(
    trained: Path, photos: Path, capsys: pytest.CaptureFixture
) -> None:
    result = run_stage("predict", trained, args=(str(photos),))
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 5
    by_name = {Path(line.split("\t")[0]).name: line.split("\t") for line in lines}
    assert set(by_name) == {"cat.jpg", "dog.jpg", "gray.jpg", "alpha.png", "cmyk_rotated.jpg"}
    with inside(trained), pytest.raises(SystemExit):  # exit status 1: broken.jpg, damaged.jpg
        predict.main([str(photos), "--format", "json"])
    for row in json.loads(
        capsys.readouterr().out
    ):  # each text line says what the model's P(dog) means at the threshold
        _path, label, probability = by_name[Path(row["path"]).name]
        dog = row["dog_probability"]
        assert label == ("dog" if dog >= 0.5 else "cat")
        assert float(probability) == pytest.approx(dog if label == "dog" else 1 - dog, abs=1e-4)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {photos / 'broken.jpg'}: cannot read image (truncated)",
        f"error: {photos / 'damaged.jpg'}: cannot read image (undecodable by tensorflow)",
        f"error: {photos / 'rows_missing.jpg'}: cannot read image (undecodable by tensorflow)",
    ]
    assert "Traceback" not in result.stderr and "Corrupt JPEG data" not in result.stderr  # libjpeg's own lines


def test_json_and_csv_are_machine_readable(trained: Path, photos: Path, capsys: pytest.CaptureFixture) -> None:
    with inside(trained):
        predict.main([str(photos / "cat.jpg"), str(photos / "nested"), "--format", "json"])
    rows = json.loads(capsys.readouterr().out)
    assert [Path(r["path"]).name for r in rows] == ["cat.jpg", "dog.jpg"]
    for row in rows:
        assert set(row) == {"path", "label", "probability", "dog_probability"}
        expected = row["dog_probability"] if row["label"] == "dog" else 1 - row["dog_probability"]
        assert row["probability"] == pytest.approx(expected, abs=1e-6)
    with inside(trained):
        predict.main([str(photos / "*.png"), "--format", "csv"])
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [Path(r["path"]).name for r in table] == ["alpha.png"]


def test_predictions_match_the_training_input_pipeline(trained: Path, capsys: pytest.CaptureFixture) -> None:
    # The same saved model through predict's decoding and through the dataset evaluate uses: same P(dog).
    with inside(trained):
        predict.main(["data/sample/test", "--model", "models/baseline.keras", "--format", "json"])
        dataset = image_dataset("test", 32, 64)
        model = keras.models.load_model("models/baseline.keras")
        reference = dict(zip(dataset.file_paths, model.predict(dataset, verbose=0).reshape(-1), strict=True))
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 * LEARNABLE["sample.test_per_class"]
    got = {Path(r["path"]).relative_to("data/sample").as_posix(): r["dog_probability"] for r in rows}
    assert got.keys() == reference.keys()
    np.testing.assert_allclose([got[k] for k in sorted(got)], [reference[k] for k in sorted(got)], atol=1e-5)


def test_predict_feeds_the_pixels_training_feeds(trained: Path) -> None:
    # P(dog) is near 0 or 1 for most images, so it hides a different resize: compare the pixels themselves.
    with inside(trained):
        dataset = image_dataset("test", 32, 64)
        trained_on = np.concatenate([images.numpy() for images, _ in dataset])
        files = [trained / "data/sample" / f for f in dataset.file_paths]
        errors: list[str] = []
        fed = np.concatenate([pixels for _, pixels in predict.load_batches(files, 32, 64, errors)])
    assert errors == [] and fed.shape == trained_on.shape == (2 * LEARNABLE["sample.test_per_class"], 32, 32, 3)
    # The same decoder and the same resize: the same pixels (Pillow's JPEG decoder was up to 5 levels off).
    np.testing.assert_array_equal(fed, trained_on)


def test_a_features_model_is_refused_in_one_line(trained: Path, photos: Path) -> None:
    result = call_stage("predict", trained, args=(str(photos / "cat.jpg"), "--model", "models/head.keras"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: models/head.keras takes (1, 1, 512) features, not images; use --model models/finetuned.keras "
        "or models/baseline.keras"
    )
    assert result.stdout == ""


def test_missing_paths_are_errors_and_the_rest_still_runs(trained: Path, photos: Path) -> None:
    files, errors = predict.expand([str(photos / "cat.jpg"), str(photos / "nope.jpg"), str(photos / "*.gif")])
    assert files == [photos / "cat.jpg"]
    assert errors == [
        f"{photos / 'nope.jpg'}: no such file, folder or glob match",
        f"{photos / '*.gif'}: no such file, folder or glob match",
    ]


@pytest.mark.slow
def test_imagenet_top5_with_random_weights_says_so(trained: Path, photos: Path) -> None:
    args = (str(photos / "cat.jpg"), str(photos / "gray.jpg"), "--imagenet", "--format", "json")
    result = call_stage("predict", trained, args=args)
    assert result.returncode == 0, result.stderr[-1500:]
    rows = json.loads(result.stdout)
    assert len(rows) == 2 * predict.TOP
    assert [r["rank"] for r in rows[:5]] == [1, 2, 3, 4, 5]
    probabilities = [r["probability"] for r in rows[:5]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert "weights are random" in result.stderr


def test_the_shipped_imagenet_classes_are_keras_index_order() -> None:
    classes = predict.shipped_imagenet_classes()
    assert len(classes) == 1000
    wnids = [wnid for wnid, _ in classes]
    assert wnids == sorted(set(wnids))  # Keras' index is the sorted WordNet ids
    assert classes[0] == ("n01440764", "tench") and classes[281] == ("n02123045", "tabby")
    assert classes[207] == ("n02099601", "golden_retriever")  # spaces as underscores, as Keras names them
    assert all(name and " " not in name for _, name in classes)


def test_offline_the_imagenet_names_come_from_the_shipped_file(monkeypatch, capsys) -> None:
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -2]")

    monkeypatch.setattr(keras.applications.imagenet_utils, "decode_predictions", offline)
    probabilities = np.full((1, 1000), 0.0001, dtype="float32")
    probabilities[0, [281, 285, 207]] = [0.5, 0.3, 0.1]
    (top,) = predict.imagenet_names(probabilities)
    assert [(wnid, name) for wnid, name, _ in top[:3]] == [
        ("n02123045", "tabby"),
        ("n02124075", "Egyptian_cat"),
        ("n02099601", "golden_retriever"),
    ]
    assert top[0][2] == pytest.approx(0.5)
    assert "using imagenet_classes.tsv" in capsys.readouterr().err


def test_imagenet_runs_several_bases_side_by_side(trained: Path, photos: Path, capsys) -> None:
    with inside(trained):
        predict.main([str(photos / "cat.jpg"), "--imagenet", "--base", "mobilenet,mobilenetv3small"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(photos / "cat.jpg")
    assert lines[1].split() == ["rank", "mobilenet", "mobilenetv3small"]
    assert [line.split()[0] for line in lines[2:]] == ["1", "2", "3", "4", "5"]
    assert all(len(line.split()) == 5 for line in lines[2:])  # rank, then name (p) for each base


def test_base_takes_keras_names_in_any_case_and_each_network_once() -> None:
    from dogs_vs_cats.config import FeaturesConfig

    chosen = predict.imagenet_bases("VGG16, vgg16,MobileNet,vgg16", FeaturesConfig("vgg16", "none"))
    assert chosen == ["vgg16", "mobilenet"]


@pytest.mark.parametrize(
    ("option", "weights", "error"),
    [
        (
            "vgg16,alexnet",
            "none",
            "--base vgg16,alexnet: unknown network 'alexnet'; python -m tools.predict --imagenet --base list lists",
        ),
        ("vgg16,resnet50", "data/weights/v.h5", "--base vgg16,resnet50: features.weights is a file for vgg16"),
    ],
)
def test_a_wrong_base_list_is_one_line(option: str, weights: str, error: str) -> None:
    from dogs_vs_cats.config import FeaturesConfig

    with pytest.raises(predict.PipelineError, match=error):
        predict.imagenet_bases(option, FeaturesConfig("vgg16", weights))


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging: a link loop or a FIFO must not block predict."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_folder_link_loops_list_each_photo_once(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "cat.jpg").write_bytes(image_bytes())
    (folder / "sub/dog.jpg").write_bytes(image_bytes())
    (folder / "loop").symlink_to(".", target_is_directory=True)
    (folder / "sub/up").symlink_to("..", target_is_directory=True)
    (folder / "sub/again").symlink_to("..", target_is_directory=True)
    with deadline(20):
        for argument in (folder, folder / "**/*.jpg", folder / "**"):
            files, errors = predict.expand([str(argument)])
            assert sorted(f.name for f in files) == ["cat.jpg", "dog.jpg"], argument
            assert errors == []


def test_the_same_photo_named_twice_is_classified_once(tmp_path: Path) -> None:
    (tmp_path / "cat.jpg").write_bytes(image_bytes())
    (tmp_path / "alias.jpg").symlink_to(tmp_path / "cat.jpg")
    files, errors = predict.expand([str(tmp_path / "cat.jpg"), str(tmp_path), str(tmp_path / "*.jpg")])
    assert files == [tmp_path / "cat.jpg"] and errors == []


def test_only_regular_files_are_read_and_never_too_much(tmp_path: Path) -> None:
    fifo, big = tmp_path / "fifo.jpg", tmp_path / "big.jpg"
    os.mkfifo(fifo)
    with open(big, "wb") as out:  # sparse: 60 MB on paper, nothing on disk
        out.truncate(60 * 2**20)
    errors: list[str] = []
    with deadline(20):
        batches = list(predict.load_batches([Path("/dev/zero"), fifo, big, tmp_path], 32, 4, errors))
    assert batches == []
    assert errors == [
        "/dev/zero: cannot read image (not a file)",
        f"{fifo}: cannot read image (not a file)",
        f"{big}: cannot read image (too large)",
        f"{tmp_path}: cannot read image (not a file)",
    ]


def test_a_photo_training_cannot_decode_is_one_line_and_the_rest_are_read(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    good, damaged, other = tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "c.png"
    good.write_bytes(image_bytes())
    damaged.write_bytes(damaged_jpeg())
    other.write_bytes(image_bytes("PNG"))
    capfd.readouterr()  # what making the damaged one printed
    errors: list[str] = []
    batches = list(predict.load_batches([good, damaged, other], 32, 4, errors))
    assert [[file.name for file in files] for files, _ in batches] == [["a.jpg", "c.png"]]
    assert errors == [f"{damaged}: cannot read image (undecodable by tensorflow)"]
    assert capfd.readouterr().err == ""  # libjpeg's own "Corrupt JPEG data" lines name no file
    padded = tmp_path / "d.jpg"
    padded.write_bytes(image_bytes()[:-2] + b"\x00" * 9 + b"\xff\xd9")  # junk libjpeg skips, with a line
    assert [[file.name for file in files] for files, _ in predict.load_batches([padded], 32, 4, errors)] == [["d.jpg"]]
    assert capfd.readouterr().err == ""


def test_an_empty_folder_is_an_error_not_silence(trained: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/notes.txt").write_text("no photos here")
    result = call_stage("predict", trained, args=(str(tmp_path / "empty"),))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'empty'}: no image files there"


def test_an_unreadable_folder_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    real_scandir = os.scandir

    def scandir(path):  # root reads every folder, so deny it the way a permission error would
        if Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(folder))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    files, errors = predict.expand([str(folder)])
    assert files == []
    assert errors == [f"{folder}: cannot read folder (Permission denied)"]
