"""Stage ``digits_evaluate@<dataset>``: the digits model on the official test split, which only this stage reads.

Writes ``metrics/digits/<dataset>.json`` (accuracy, macro precision/recall/F1, log loss, per-class
accuracy) and, under ``metrics/digits/evaluate/<dataset>/``, per-image predictions with class names (DVC's
confusion plot) and a PNG of the most confidently wrong test images with their true and predicted names.
"""

from __future__ import annotations

from runtime.program import chosen_name, run, start_program

start_program(__name__)  # first: the imports below take seconds (TensorFlow's), and Ctrl-C during them ends in one line

import sys

import numpy as np
import pandas as pd
from PIL import Image
from sklearn import metrics as skm

from dogs_vs_cats import evaluation, paths
from dogs_vs_cats.classes import DIGITS_CLASS_NAMES, DIGITS_DATASETS
from dogs_vs_cats.config import load_params
from dogs_vs_cats.costs import precision_of
from dogs_vs_cats.digits_io import CLASSES, Split, load_split
from dogs_vs_cats.digits_model import batches
from dogs_vs_cats.models import load_saved
from runtime.files import atomic_path, write_json
from runtime.progress import keras_verbosity

ZOOM = 4  # gallery tiles are the 28 px images drawn 4x larger


def score(labels: np.ndarray, probabilities: np.ndarray, names: tuple[str, ...]) -> dict:
    """Ten-class metrics of ``probabilities`` (N x 10) against ``labels``."""
    predicted = probabilities.argmax(axis=1)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        labels, predicted, labels=list(range(CLASSES)), average="macro", zero_division=0
    )
    return {
        "test_images": len(labels),
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
        "log_loss": evaluation.log_loss(labels, probabilities),
        "per_class_accuracy": evaluation.per_class_accuracy(labels, predicted, names),
    }


def predictions_table(labels: np.ndarray, probabilities: np.ndarray, names: tuple[str, ...]) -> pd.DataFrame:
    """``index, label, confidence, predicted`` per test image, with class names."""
    index = pd.Series(np.arange(len(labels)), name="index")
    confidence = pd.Series(probabilities.max(axis=1), name="confidence")
    return evaluation.predictions_table(index, labels, probabilities.argmax(axis=1), names, confidence)


def gallery(split: Split, table: pd.DataFrame, size: int, title: str) -> Image.Image:
    """The ``size`` misclassified test images predicted with the highest confidence, captioned."""
    wrong = table[table["label"] != table["predicted"]]
    shown = evaluation.most_confident(wrong, wrong["confidence"], size)
    tile = split.x.shape[1] * ZOOM
    columns = [
        [Image.fromarray(split.x[row.index]).resize((tile, tile), Image.Resampling.NEAREST)]
        for row in shown.itertuples()
    ]
    captions = [f"true {row.label}\nsaid {row.predicted}\np={row.confidence:.3f}" for row in shown.itertuples()]
    return evaluation.gallery_sheet(title, columns, captions, tile)


def main() -> None:
    dataset = chosen_name(sys.argv[1:], DIGITS_DATASETS, "stages.digits_evaluate")
    params = load_params()
    names = DIGITS_CLASS_NAMES[dataset]
    test = load_split(dataset, "test")
    model = load_saved(paths.digits_model(dataset))
    print(f"digits_evaluate: {dataset}: the model computes in {precision_of(model)}, as it was trained")
    probabilities = model.predict(batches(test, params.digits.batch_size), verbose=keras_verbosity())
    labels = test.y.astype(int)
    results = score(labels, probabilities, names)
    table = predictions_table(labels, probabilities, names)
    folder = paths.digits_evaluate_dir(dataset)
    with atomic_path(folder, replace=True) as tmp:
        tmp.mkdir()
        table.to_csv(tmp / "predictions.csv", index=False, lineterminator="\n")
        gallery(test, table, params.digits.gallery_size, dataset).save(tmp / "gallery.png", optimize=True)
    write_json(paths.digits_metrics(dataset), results)
    print(f"digits_evaluate: {dataset}: accuracy {results['accuracy']:.4f}, macro F1 {results['f1_macro']:.4f}")


if __name__ == "__main__":
    run(main)
