"""Stage ``evaluate``: score every model on the held-out test split, and write what DVC plots and people read.

Writes ``metrics/evaluate.json`` (one section per model) and, under ``metrics/evaluate/``, per-image
predictions (for DVC's confusion template), ROC points, and PNGs of each model's most confidently wrong
and most confidently right test images, with Grad-CAM heatmaps for the models that take images. The test
images are checked against ``data/sample/manifest.csv`` first, so a missing or changed file stops the
stage instead of silently shrinking the test set.
"""

from __future__ import annotations

from runtime.program import run, start_program

start_program(__name__)  # first: the imports below take seconds (TensorFlow's), and Ctrl-C during them ends in one line

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from PIL import Image
from sklearn import metrics as skm

from dogs_vs_cats import evaluation, gradcam, paths, stats
from dogs_vs_cats.classes import CLASS_NAMES, predicted_labels
from dogs_vs_cats.config import load_params
from dogs_vs_cats.costs import layer_costs, precision_of, takes_images, totals
from dogs_vs_cats.datasets import image_dataset, labels_of, load_features, resized_pixels
from dogs_vs_cats.images import read_image
from dogs_vs_cats.models import load_saved
from runtime.errors import PipelineError, one_line
from runtime.files import atomic_path, input_file, write_json
from runtime.progress import keras_verbosity

TEST_SPLIT_COLUMNS = ("split", "path", "sha256")  # the manifest's columns the test split is checked by
THUMBNAIL = 128  # gallery tile side, pixels


def score(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, float | int | None]:
    """Binary classification metrics for P(dog) ``probabilities`` against 0/1 ``labels``."""
    predicted = predicted_labels(probabilities, threshold)
    tn, fp, fn, tp = skm.confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    both_classes = len(np.unique(labels)) == 2
    return {
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "precision": float(skm.precision_score(labels, predicted, zero_division=0)),
        "recall": float(skm.recall_score(labels, predicted, zero_division=0)),
        "f1": float(skm.f1_score(labels, predicted, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(labels, probabilities)) if both_classes else None,
        "log_loss": evaluation.log_loss(labels, np.column_stack([1 - probabilities, probabilities])),
        "true_negatives": int(tn),
        "false_positives": int(fp),
        "false_negatives": int(fn),
        "true_positives": int(tp),
    }


def roc_points(model: str, labels: np.ndarray, probabilities: np.ndarray) -> pd.DataFrame:
    """One model's ROC curve as ``model, fpr, tpr, threshold`` rows (the model names its curve in the plot); no
    rows when the test split holds one class, where one of the two rates is 0/0."""
    if len(np.unique(labels)) < 2:
        fpr = tpr = thresholds = np.empty(0)
    else:
        fpr, tpr, thresholds = skm.roc_curve(labels, probabilities, drop_intermediate=False)
    return pd.DataFrame({"model": model, "fpr": fpr, "tpr": tpr, "threshold": np.clip(thresholds, 0.0, 1.0)})


def checked_test_split(manifest_path: Path, sample_dir: Path) -> pd.DataFrame:
    """The manifest's test rows, after checking every test file is there, unchanged, and alone."""
    again = "run dvc repro -f -s sample"
    try:
        manifest = pd.read_csv(input_file(manifest_path, again))
    except (ValueError, UnicodeDecodeError) as error:  # pandas' EmptyDataError and ParserError are ValueErrors
        raise PipelineError(f"{manifest_path}: not a CSV file ({one_line(error)}); {again}") from None
    missing = [column for column in TEST_SPLIT_COLUMNS if column not in manifest.columns]
    if missing:
        raise PipelineError(f"{manifest_path}: has no column {missing[0]}, not the manifest sample writes; {again}")
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    for row in test.itertuples():
        file = input_file(sample_dir / row.path, f"it is listed in {manifest_path}; run dvc repro -f -s sample")
        if hashlib.sha256(file.read_bytes()).hexdigest() != row.sha256:
            raise PipelineError(f"{file}: changed since sampling (sha256 differs); run dvc repro -f -s sample")
    on_disk = {p.relative_to(sample_dir).as_posix() for p in (sample_dir / "test").rglob("*") if p.is_file()}
    extra = sorted(on_disk - set(test["path"]))
    if extra:
        raise PipelineError(f"{sample_dir / extra[0]}: not in {manifest_path}; run dvc repro -f -s sample")
    return test


def predictions_table(files: list[str], labels: np.ndarray, probabilities: np.ndarray, threshold: float):
    """``file, label, probability, predicted`` with class names, sorted by file."""
    predicted = predicted_labels(probabilities, threshold)
    return evaluation.predictions_table(
        pd.Series(files, name="file"), labels, predicted, CLASS_NAMES, pd.Series(probabilities, name="probability")
    )


def most_confidently_wrong(table: pd.DataFrame, size: int, threshold: float) -> pd.DataFrame:
    """The ``size`` misclassified rows whose P(dog) is furthest from ``threshold``, most confident first."""
    wrong = table[table["label"] != table["predicted"]]
    return evaluation.most_confident(wrong, (wrong["probability"] - threshold).abs(), size)


def most_confidently_right(table: pd.DataFrame, size: int, threshold: float) -> pd.DataFrame:
    """The ``size`` correctly classified rows whose P(dog) is furthest from ``threshold``, cats and dogs in turn."""
    right = table[table["label"] == table["predicted"]]
    return evaluation.most_confident(right, (right["probability"] - threshold).abs(), size, by_class=True)


Explainer = Callable[[list[str]], dict[str, Image.Image]]


def gallery(
    table: pd.DataFrame,
    sample_dir: Path,
    size: int,
    threshold: float,
    title: str,
    right: bool = False,
    explain: Explainer | None = None,
) -> Image.Image:
    """The ``size`` most confidently wrong images (``right``: right ones), captioned with truth and P(dog); with
    ``explain`` each photo has its Grad-CAM overlay under it."""
    shown = (most_confidently_right if right else most_confidently_wrong)(table, size, threshold)
    overlays = explain(list(shown["file"])) if explain and not shown.empty else {}
    columns, captions = [], []
    for row in shown.itertuples():
        photo = read_image((sample_dir / row.file).read_bytes())  # as sample read it: odd EXIF in silence
        columns.append([photo] + ([overlays[row.file]] if overlays else []))
        captions.append(f"true {row.label}\nP(dog)={row.probability:.3f}")
    note = ", with Grad-CAM" if overlays else ""
    return evaluation.gallery_sheet(title, columns, captions, THUMBNAIL, right, note)


def explainer(model: keras.Model, sample_dir: Path, threshold: float) -> Explainer:
    """Grad-CAM overlays of test files, at the model's input size, as the gallery shows them."""

    def explain(files: list[str]) -> dict[str, Image.Image]:
        size = model.input_shape[1]
        photos, pixels = [], []
        for file in files:
            data = (sample_dir / file).read_bytes()
            photos.append(read_image(data))
            pixels.append(resized_pixels(photos[-1], size, data))  # as training decodes it
        maps, _ = gradcam.heatmaps(model, np.stack(pixels), threshold)
        # Over the photo itself, its aspect kept, as the strip above it shows it.
        return {file: gradcam.overlay_on(photo, m) for file, photo, m in zip(files, photos, maps, strict=True)}

    return explain


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path, replace=True) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n")


def _write_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path, replace=True) as tmp:
        image.save(tmp, format="PNG", optimize=True)


class Predictions(NamedTuple):
    """One model's P(dog) of each test file, with the files' ids and labels (0 cat / 1 dog), and the model."""

    files: list[str]
    labels: np.ndarray
    probabilities: np.ndarray
    model: keras.Model


def predict_all(batch_size: int, expected: list[str]) -> dict[str, Predictions]:
    """Per model, its ``Predictions`` from the saved model (preprocessing included).

    Image models get the test images at their own input size, the head the test features; either must
    hold exactly the ``expected`` (sorted) files of the manifest.
    """
    out = {}
    for name, path in paths.EVALUATED_MODELS.items():
        model = load_saved(path)
        print(f"evaluate: {name} computes in {precision_of(model)}, the train.precision it was trained under")
        if takes_images(model):
            images = image_dataset("test", model.input_shape[1], batch_size)
            inputs = images.unbatch().map(lambda pixels, _: pixels)
            probabilities = predict_in_equal_batches(model, inputs, len(images.file_paths), batch_size)
            out[name] = Predictions(images.file_paths, labels_of(images.file_paths).astype(int), probabilities, model)
            source = "the test images"
        else:
            features = load_features("test")
            inputs = tf.data.Dataset.from_tensor_slices(features.features)
            probabilities = predict_in_equal_batches(model, inputs, len(features.files), batch_size)
            out[name] = Predictions(list(features.files), features.labels.astype(int), probabilities, model)
            source = paths.features_file("test")
        if sorted(out[name].files) != expected:
            raise PipelineError(f"{source} do not match {paths.MANIFEST}; run dvc repro")
    return out


def predict_in_equal_batches(model: keras.Model, inputs: tf.data.Dataset, count: int, batch_size: int) -> np.ndarray:
    """``model``'s P(dog) of each of the ``count`` unbatched ``inputs``, in batches of one shape: the last is
    filled up with zeros whose outputs are dropped. Keras traces its predict step once per batch shape, so a
    short last batch traces each model twice and, by the third model, TensorFlow warns of excessive retracing."""
    steps = -(-count // batch_size)
    padding = tf.data.Dataset.from_tensors(tf.zeros(inputs.element_spec.shape, inputs.element_spec.dtype))
    batches = inputs.concatenate(padding.repeat(steps * batch_size - count)).batch(batch_size)
    batches = batches.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(tf.data.AUTOTUNE)
    return model.predict(batches, verbose=keras_verbosity()).reshape(-1)[:count]


def intervals(labels: np.ndarray, probabilities: np.ndarray, threshold: float, resamples: int, seed: int) -> dict:
    """95 % intervals: Wilson for the accuracy, a seeded bootstrap over test images for the ROC AUC."""
    correct = int((predicted_labels(probabilities, threshold) == labels).sum())
    low, high = stats.wilson(correct, len(labels))
    auc = stats.bootstrap_auc(labels, probabilities, resamples, seed)
    return {
        "accuracy_ci95": {"low": low, "high": high},
        "roc_auc_ci95": {"low": auc[0], "high": auc[1]} if auc else None,
    }


def costs(loaded: dict[str, keras.Model]) -> dict[str, dict[str, float | int]]:
    """Parameters and GMACs per image of classifying one image with each of the ``loaded`` models (the head's
    include the base that makes its features), so a sweep can weigh accuracy against cost."""
    base = totals(layer_costs(load_saved(paths.BASE_MODEL)))
    out = {}
    for name, model in loaded.items():
        own = totals(layer_costs(model))
        with_base = name == "head"
        out[name] = {
            "params": own["params"] + (base["params"] if with_base else 0),
            "gmacs": round(own["gmacs"] + (base["gmacs"] if with_base else 0), 6),
        }
    return out


def paired_tests(tables: dict[str, pd.DataFrame]) -> dict[str, dict]:
    """The exact McNemar test between each pair of models, on the same test images (tables sorted by file)."""
    right = {name: (table["label"] == table["predicted"]).to_numpy() for name, table in tables.items()}
    names = list(tables)
    return {f"{a}_vs_{b}": stats.mcnemar(right[a], right[b]) for i, a in enumerate(names) for b in names[i + 1 :]}


def summary(name: str, result: dict) -> str:
    """The log line of one model's scores; the ROC AUC is n/a when the test split holds one class."""
    auc = result["roc_auc"]
    auc_text = f"{auc:.4f}" if auc is not None else "n/a (the test split holds one class)"
    return f"evaluate: {name}: accuracy {result['accuracy']:.4f}, ROC AUC {auc_text}"


def main() -> None:
    params = load_params()
    cfg = params.evaluate
    test = checked_test_split(paths.MANIFEST, paths.SAMPLE_DIR)
    results, tables, rocs = {}, {}, []
    predicted = predict_all(params.image.batch_size, sorted(test["path"]))
    cost = costs({name: predictions.model for name, predictions in predicted.items()})
    for name, (files, labels, probabilities, model) in predicted.items():
        table = tables[name] = predictions_table(files, labels, probabilities, cfg.threshold)
        results[name] = score(labels, probabilities, cfg.threshold)
        results[name].update(intervals(labels, probabilities, cfg.threshold, cfg.bootstrap, params.seed))
        results[name].update(cost[name])
        _write_csv(table, paths.predictions_file(name))
        rocs.append(roc_points(name, labels, probabilities))
        explain = explainer(model, paths.SAMPLE_DIR, cfg.threshold) if takes_images(model) else None
        for right in (False, True):
            sheet = gallery(table, paths.SAMPLE_DIR, cfg.gallery_size, cfg.threshold, name, right, explain)
            _write_png(sheet, paths.gallery_file(name, right))
        print(summary(name, results[name]))
    _write_csv(pd.concat(rocs), paths.ROC_FILE)
    write_json(paths.EVALUATE_METRICS, {"test_images": len(test), **results, "mcnemar": paired_tests(tables)})


if __name__ == "__main__":
    run(main, no_arguments=True)
