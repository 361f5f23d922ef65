"""evaluate: metrics that agree with their definitions, outputs DVC can plot, and a test set that cannot shrink."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import warnings
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFont
from sklearn.metrics import auc as area_under
from sklearn.metrics import roc_auc_score

from dogs_vs_cats import stats
from dogs_vs_cats.datasets import image_dataset, load_features
from dogs_vs_cats.evaluation import HEADING, LINE, MARGIN
from dogs_vs_cats.paths import EVALUATED_MODELS
from runtime.errors import PipelineError
from stages import evaluate
from tests.conftest import LEARNABLE, image_bytes, inside

LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
PROBS = np.array([0.1, 0.4, 0.6, 0.2, 0.9, 0.7, 0.3, 0.55, 0.8, 0.45])


TWO_LINES = 2 * LINE + MARGIN  # a cat/dog caption: its truth, and P(dog)


def test_score_matches_the_definitions() -> None:
    got = evaluate.score(LABELS, PROBS, 0.5)
    predicted = PROBS >= 0.5
    tp = int(np.sum(predicted & (LABELS == 1)))
    fp = int(np.sum(predicted & (LABELS == 0)))
    fn = int(np.sum(~predicted & (LABELS == 1)))
    tn = int(np.sum(~predicted & (LABELS == 0)))
    assert (tn, fp, fn, tp) == (3, 1, 2, 4)
    assert (got["true_negatives"], got["false_positives"]) == (tn, fp)
    assert (got["false_negatives"], got["true_positives"]) == (fn, tp)
    assert got["accuracy"] == pytest.approx((tp + tn) / len(LABELS))
    assert got["precision"] == pytest.approx(tp / (tp + fp))
    assert got["recall"] == pytest.approx(tp / (tp + fn))
    assert got["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    # ROC AUC: the chance that a random dog scores above a random cat (Mann-Whitney).
    pairs = [(d > c) + 0.5 * (d == c) for d in PROBS[LABELS == 1] for c in PROBS[LABELS == 0]]
    assert got["roc_auc"] == pytest.approx(np.mean(pairs))
    expected_loss = -np.mean(LABELS * np.log(PROBS) + (1 - LABELS) * np.log(1 - PROBS))
    assert got["log_loss"] == pytest.approx(expected_loss)


def test_threshold_moves_the_decision() -> None:
    assert evaluate.score(LABELS, PROBS, 0.5)["true_positives"] == 4
    assert evaluate.score(LABELS, PROBS, 0.25)["true_positives"] == 6


def test_perfect_and_constant_classifiers() -> None:
    perfect = evaluate.score(LABELS, LABELS.astype(float), 0.5)
    assert perfect["accuracy"] == perfect["precision"] == perfect["recall"] == perfect["f1"] == 1.0
    assert perfect["roc_auc"] == 1.0
    assert perfect["log_loss"] == pytest.approx(0.0, abs=1e-5)
    constant = evaluate.score(LABELS, np.full(len(LABELS), 0.7), 0.5)
    assert constant["accuracy"] == pytest.approx(0.6)  # the share of dogs: everything is called a dog
    assert constant["recall"] == 1.0
    assert constant["precision"] == pytest.approx(0.6)
    assert constant["roc_auc"] == 0.5
    assert constant["log_loss"] == pytest.approx(-(0.6 * np.log(0.7) + 0.4 * np.log(0.3)))
    assert (constant["true_negatives"], constant["false_positives"]) == (0, 4)


def test_roc_points_run_from_corner_to_corner() -> None:
    roc = evaluate.roc_points("head", LABELS, PROBS)
    assert list(roc.columns) == ["model", "fpr", "tpr", "threshold"]
    assert set(roc["model"]) == {"head"}  # the model names its curve in the plot's legend
    assert (roc.iloc[0]["fpr"], roc.iloc[0]["tpr"]) == (0.0, 0.0)
    assert (roc.iloc[-1]["fpr"], roc.iloc[-1]["tpr"]) == (1.0, 1.0)
    assert roc["fpr"].is_monotonic_increasing and roc["tpr"].is_monotonic_increasing


@pytest.mark.parametrize("label", [0, 1])
def test_a_test_split_of_one_class_is_scored_with_the_auc_undefined(label: int) -> None:
    # What main() computes and writes per model, on a split of cats only (or dogs only): the AUC, its interval
    # and the ROC curve are undefined, so null in evaluate.json, n/a in the log, and no rows; the rest stands.
    labels = np.full(len(PROBS), label)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn's "only one class present" warnings too
        result = evaluate.score(labels, PROBS, 0.5)
        result.update(evaluate.intervals(labels, PROBS, 0.5, resamples=50, seed=0))
        roc = evaluate.roc_points("head", labels, PROBS)
        tables = {
            name: evaluate.predictions_table(list(map(str, range(len(PROBS)))), labels, PROBS, t)
            for name, t in (("a", 0.5), ("b", 0.35))
        }
        tests = evaluate.paired_tests(tables)
    assert result["roc_auc"] is None and result["roc_auc_ci95"] is None
    assert result["accuracy"] == pytest.approx(np.mean((PROBS >= 0.5) == label))
    assert json.loads(json.dumps({**result, "mcnemar": tests}, allow_nan=False))["roc_auc"] is None
    assert roc.empty and list(roc.columns) == ["model", "fpr", "tpr", "threshold"]
    assert tests["a_vs_b"]["only_a"] + tests["a_vs_b"]["only_b"] > 0
    assert evaluate.summary("head", result).endswith(", ROC AUC n/a (the test split holds one class)")
    assert evaluate.summary("head", evaluate.score(LABELS, PROBS, 0.5)).endswith(", ROC AUC 0.8333")


def _sample(root: Path) -> tuple[Path, Path]:
    sample_dir = root / "sample"
    rows = []
    for split, label, n in (("train", "cat", 1), ("test", "cat", 2), ("test", "dog", 3)):
        path = Path(split, label, f"{label}.{n}.jpg")
        data = image_bytes(size=(20 + n, 20))
        (sample_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (sample_dir / path).write_bytes(data)
        rows.append([split, label, path.as_posix(), f"train/{label}.{n}.jpg", hashlib.sha256(data).hexdigest(), 1, 1])
    manifest = sample_dir / "manifest.csv"
    pd.DataFrame(rows, columns=["split", "label", "path", "source_member", "sha256", "width", "height"]).to_csv(
        manifest, index=False
    )
    return manifest, sample_dir


def test_test_split_is_checked_against_the_manifest(tmp_path: Path) -> None:
    manifest, sample_dir = _sample(tmp_path)
    assert list(evaluate.checked_test_split(manifest, sample_dir)["path"]) == [
        "test/cat/cat.2.jpg",
        "test/dog/dog.3.jpg",
    ]

    (sample_dir / "test/dog/dog.3.jpg").write_bytes(image_bytes(size=(5, 5)))
    with pytest.raises(PipelineError, match=r"dog\.3\.jpg: changed since sampling \(sha256 differs\)"):
        evaluate.checked_test_split(manifest, sample_dir)

    (sample_dir / "test/dog/dog.3.jpg").unlink()
    with pytest.raises(PipelineError, match=r"dog\.3\.jpg: not found; it is listed in .*manifest.csv; run dvc"):
        evaluate.checked_test_split(manifest, sample_dir)
    os.mkfifo(sample_dir / "test/dog/dog.3.jpg")  # never read: it would hang
    with pytest.raises(PipelineError, match=r"dog\.3\.jpg: a FIFO, not a file; it is listed in .*manifest.csv"):
        evaluate.checked_test_split(manifest, sample_dir)


@pytest.mark.parametrize(
    ("content", "error"),
    [(b"", "not a CSV file"), (b"path,label\nx.jpg,cat\n", "has no column split, not the manifest sample writes")],
)
def test_a_damaged_manifest_is_one_line(tmp_path: Path, content: bytes, error: str) -> None:
    manifest, sample_dir = _sample(tmp_path)
    manifest.write_bytes(content)
    with pytest.raises(PipelineError, match=rf"manifest.csv: {error}.*; run dvc repro -f -s sample$"):
        evaluate.checked_test_split(manifest, sample_dir)


def test_an_extra_test_file_is_an_error(tmp_path: Path) -> None:
    manifest, sample_dir = _sample(tmp_path)
    (sample_dir / "test/cat/cat.99.jpg").write_bytes(image_bytes())
    with pytest.raises(PipelineError, match=r"cat\.99\.jpg: not in .*manifest.csv"):
        evaluate.checked_test_split(manifest, sample_dir)


def test_gallery_shows_the_most_confidently_wrong_first(tmp_path: Path) -> None:
    _, sample_dir = _sample(tmp_path)
    table = pd.DataFrame(
        {
            "file": ["test/cat/cat.2.jpg", "test/dog/dog.3.jpg"],
            "label": ["cat", "dog"],
            "probability": [0.9, 0.45],
            "predicted": ["dog", "cat"],
        }
    )
    assert list(evaluate.most_confidently_wrong(table, 1, 0.5)["file"]) == ["test/cat/cat.2.jpg"]
    assert list(evaluate.most_confidently_wrong(table, 5, 0.5)["file"]) == ["test/cat/cat.2.jpg", "test/dog/dog.3.jpg"]
    # Measured from the threshold: at 0.95, P(dog)=0.45 is the more confident call.
    assert list(evaluate.most_confidently_wrong(table, 1, 0.95)["file"]) == ["test/dog/dog.3.jpg"]
    font = ImageFont.load_default(size=11)
    # EXIF pointing past its segment: Pillow warns ("Truncated File Read") when it opens the photo; sample kept it
    tiff = b"II*\x00" + struct.pack("<IHHHII", 8, 1, 0x011A, 5, 1, 4000) + b"\x00" * 4
    exif = b"Exif\x00\x00" + tiff
    photo = sample_dir / "test/cat/cat.2.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + photo.read_bytes()[2:])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sheet = evaluate.gallery(table, sample_dir, 1, 0.5, "finetuned")
    heading = "finetuned: the 1 most confidently wrong test image"
    assert sheet.size == (int(font.getlength(heading)) + 8, HEADING + evaluate.THUMBNAIL + TWO_LINES)
    two = evaluate.gallery(table, sample_dir, 5, 0.5, "m")  # two tiles, a short title: the tiles set the width
    assert two.width == 2 * evaluate.THUMBNAIL + MARGIN
    gap = np.asarray(two.convert("L"))[HEADING:, evaluate.THUMBNAIL : evaluate.THUMBNAIL + MARGIN]
    assert gap.min() == 255  # a white gap between the tiles
    right = table.assign(predicted=table["label"])
    empty = evaluate.gallery(right, sample_dir, 5, 0.5, "finetuned")
    # The whole sentence fits: the sheet is wider than its text, and its right margin is blank.
    assert empty.width == int(font.getlength("finetuned: no misclassified test images")) + 8 > evaluate.THUMBNAIL
    assert empty.height == HEADING
    pixels = np.asarray(empty.convert("L"))
    assert pixels[:, -3:].min() == 255 and pixels[:, :-3].min() < 128


WARNED: list[str] = []  # what the evaluated fixture's run warned of, through Python's warnings or TensorFlow's logger


class _Recorder(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        WARNED.append(record.getMessage())


@pytest.fixture(scope="module")
def evaluated(trained: Path) -> Path:
    recorder, tf_logger = _Recorder(logging.WARNING), logging.getLogger("tensorflow")
    tf_logger.addHandler(recorder)
    try:
        with inside(trained), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            evaluate.main()
    finally:
        tf_logger.removeHandler(recorder)
    WARNED.extend(str(warning.message) for warning in caught)
    return trained


def test_evaluate_warns_of_nothing_on_a_test_split_of_uneven_batches(evaluated: Path) -> None:
    # 50 test images in batches of 16: the short last batch used to trace each model twice, and TensorFlow
    # warned of retracing by the third model.
    assert 2 * LEARNABLE["sample.test_per_class"] % LEARNABLE["image.batch_size"] != 0
    assert WARNED == []


def test_evaluate_scores_every_model_from_its_own_predictions(evaluated: Path) -> None:
    results = json.loads((evaluated / "metrics/evaluate.json").read_text())
    test_images = 2 * LEARNABLE["sample.test_per_class"]
    assert results["test_images"] == test_images
    with inside(evaluated):
        images = image_dataset("test", LEARNABLE["image.side"], 64)
        features = load_features("test")
    rocs = pd.read_csv(evaluated / "metrics/evaluate/roc.csv")
    assert rocs["model"].unique().tolist() == list(EVALUATED_MODELS)  # the legend's order, the book's
    for model in EVALUATED_MODELS:
        table = pd.read_csv(evaluated / f"metrics/evaluate/predictions/{model}.csv")
        assert list(table.columns) == ["file", "label", "probability", "predicted"]
        assert len(table) == test_images
        assert table["file"].str.startswith("test/").all()
        assert set(table["label"]) == {"cat", "dog"}
        assert (table["predicted"] == np.where(table["probability"] >= 0.5, "dog", "cat")).all()
        # Each table is its own model's output on the test split (two swapped tables would fail here).
        own = keras.models.load_model(evaluated / f"models/{model}.keras")
        inputs, files = (features.features, list(features.files)) if model == "head" else (images, images.file_paths)
        expected = dict(zip(files, own.predict(inputs, verbose=0).reshape(-1), strict=True))
        np.testing.assert_allclose(table["probability"], [expected[f] for f in table["file"]], rtol=1e-5, atol=1e-6)
        section = results[model]
        assert section["accuracy"] == pytest.approx((table["label"] == table["predicted"]).mean())
        confusion = section["true_negatives"] + section["false_positives"] + section["false_negatives"]
        assert confusion + section["true_positives"] == test_images
        dog = (table["label"] == "dog").to_numpy()
        assert section["roc_auc"] == pytest.approx(roc_auc_score(dog, table["probability"]))
        roc = rocs[rocs["model"] == model]
        assert roc["tpr"].iloc[-1] == 1.0
        assert area_under(roc["fpr"], roc["tpr"]) == pytest.approx(section["roc_auc"])  # its own curve, not another's
        with Image.open(evaluated / f"metrics/evaluate/gallery/{model}.png") as image:
            assert image.format == "PNG"
        right = int((table["label"] == table["predicted"]).sum())
        low, high = stats.wilson(right, test_images)
        assert section["accuracy_ci95"] == pytest.approx({"low": low, "high": high})
        auc = section["roc_auc_ci95"]
        assert auc["low"] <= section["roc_auc"] <= auc["high"] <= 1.0
        assert auc["low"] < auc["high"] or auc["low"] == 1.0  # an interval, unless every resample is perfect
        assert section["params"] > 0 and section["gmacs"] > 0
    # The head's cost includes the base that makes its features; the fine-tuned model is that base plus the head.
    assert results["finetuned"]["params"] == results["head"]["params"]
    assert results["finetuned"]["gmacs"] == pytest.approx(results["head"]["gmacs"], rel=1e-6)
    pairs = results["mcnemar"]
    models = ["baseline", "head", "frozen", "finetuned"]
    assert list(pairs) == [f"{a}_vs_{b}" for i, a in enumerate(models) for b in models[i + 1 :]]
    assert all(0.0 <= pair["p_value"] <= 1.0 for pair in pairs.values())
    assert results["baseline"]["accuracy"] >= 0.85  # learnable data, a working model (tests/model/test_training.py)
    assert results["head"]["accuracy"] >= 0.7


def test_evaluate_refuses_a_changed_test_image(evaluated: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(evaluated, copy, ignore=shutil.ignore_patterns("raw", "*.keras"))
    victim = next((copy / "data/sample/test/dog").iterdir())
    victim.write_bytes(image_bytes())
    with inside(copy), pytest.raises(PipelineError, match="changed since sampling"):
        evaluate.main()


def test_report_table_names_the_base_and_shows_every_metric(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tools import report

    monkeypatch.chdir(tmp_path)  # not a DVC repository: the diffs fail, and the page says so

    results = {"test_images": 10, **{m: evaluate.score(LABELS, PROBS, 0.5) for m in ("baseline", "head", "finetuned")}}
    (tmp_path / "evaluate.json").write_text(json.dumps(results))
    (tmp_path / "features.json").write_text(json.dumps({"base": "xception"}))
    table = report.models_table(results, "xception").splitlines()
    columns = "| accuracy 95 % CI | params | GMACs/image |"
    assert table[0] == "| model | accuracy | precision | recall | F1 | ROC AUC | log loss " + columns
    assert table[4] == "| frozen xception + head, augmented | - | - | - | - | - | - | - | - | - |"
    assert table[5] == "| fine-tuned xception | 0.7000 | 0.8000 | 0.6667 | 0.7273 | 0.8333 | 0.5041 | - | - | - |"
    results["head"]["accuracy_ci95"] = {"low": 0.3968, "high": 0.8922}  # Wilson, 7 of 10
    results["head"].update(params=14_846_273, gmacs=9.4512345)
    assert (
        report.models_table(results, "xception").splitlines()[3].endswith("| 0.3968 to 0.8922 | 14,846,273 | 9.451 |")
    )
    page = report.render("main", tmp_path / "evaluate.json", tmp_path / "features.json")
    assert "On the held-out test split (10 images);" in page
    assert "| xception features + head |" in page
    assert "`dvc metrics diff main` failed: " in page


def test_the_right_strip_shows_both_classes_in_turn() -> None:
    # The model is surest of its three cats; the strip still shows a dog second, not three cats first.
    table = pd.DataFrame(
        {
            "file": [f"test/{label}/{n}.jpg" for n, label in enumerate(["cat", "cat", "cat", "dog", "dog"])],
            "label": ["cat", "cat", "cat", "dog", "dog"],
            "probability": [0.01, 0.02, 0.03, 0.9, 0.8],
            "predicted": ["cat", "cat", "cat", "dog", "dog"],
        }
    )
    shown = evaluate.most_confidently_right(table, 4, 0.5)
    assert list(shown["label"]) == ["cat", "dog", "cat", "dog"]
    assert list(shown["probability"]) == [0.01, 0.9, 0.02, 0.8]
