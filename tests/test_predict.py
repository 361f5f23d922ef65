"""predict: your own photos of any mode through the saved model, one line each, errors reported and survived."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from stages import predict
from stages.datasets import image_dataset
from tests.conftest import image_bytes, inside, run_stage


@pytest.fixture
def photos(trained: Path, tmp_path: Path) -> Path:
    """Five readable images of different kinds (two of them real test images) and one corrupt file."""
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
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder")
    return folder


def test_every_image_gets_a_line_and_a_corrupt_one_an_error(trained: Path, photos: Path) -> None:
    result = run_stage("predict", trained, args=(str(photos),))
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 5
    by_name = {Path(line.split("\t")[0]).name: line.split("\t") for line in lines}
    assert set(by_name) == {"cat.jpg", "dog.jpg", "gray.jpg", "alpha.png", "cmyk_rotated.jpg"}
    for _path, label, probability in by_name.values():
        assert label in ("cat", "dog")
        assert 0.5 <= float(probability) <= 1.0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {photos / 'broken.jpg'}: cannot read image (truncated)"]


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
        dataset = image_dataset("test", 32, 64, shuffle=False, seed=0)
        model = keras.models.load_model("models/baseline.keras")
        reference = dict(zip(dataset.file_paths, model.predict(dataset, verbose=0).reshape(-1), strict=True))
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 30
    got = {Path(r["path"]).relative_to("data/sample").as_posix(): r["dog_probability"] for r in rows}
    assert got.keys() == reference.keys()
    np.testing.assert_allclose([got[k] for k in sorted(got)], [reference[k] for k in sorted(got)], atol=0.02)


def test_a_features_model_is_refused_in_one_line(trained: Path, photos: Path) -> None:
    result = run_stage(
        "predict",
        trained,
        args=(
            str(photos / "cat.jpg"),
            "--model",
            "models/head.keras",
        ),
    )
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
    result = run_stage("predict", trained, args=args)
    assert result.returncode == 0, result.stderr[-1500:]
    rows = json.loads(result.stdout)
    assert len(rows) == 2 * predict.TOP
    assert [r["rank"] for r in rows[:5]] == [1, 2, 3, 4, 5]
    probabilities = [r["probability"] for r in rows[:5]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert "weights are random" in result.stderr
