"""Stage ``digits_evaluate@<dataset>``: the digits model on the official test split, which only this stage reads.

Writes ``metrics/digits/<dataset>.json`` (accuracy, macro precision/recall/F1, log loss, per-class
accuracy) and, under ``metrics/digits/evaluate/<dataset>/``, per-image predictions with class names (DVC's
confusion plot) and a PNG of the most confidently wrong test images with their true and predicted names.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont
from sklearn import metrics as skm

from stages import paths
from stages.common import atomic_path, run, write_json
from stages.config import load_params
from stages.digits_data import CLASSES, Split, dataset_arg, load_split
from stages.digits_train import batches
from stages.models import load_saved

ZOOM = 4  # gallery tiles are the 28 px images drawn 4x larger
CAPTION = 40  # pixels under each tile
MARGIN = 4
LOG_LOSS_EPS = 1e-7


def score(labels: np.ndarray, probabilities: np.ndarray, names: tuple[str, ...]) -> dict:
    """Ten-class metrics of ``probabilities`` (N x 10) against ``labels``."""
    predicted = probabilities.argmax(axis=1)
    classes = list(range(CLASSES))
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        labels, predicted, labels=classes, average="macro", zero_division=0
    )
    clipped = np.clip(probabilities, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    per_class = {
        name: float((predicted[labels == k] == k).mean()) if (labels == k).any() else None
        for k, name in enumerate(names)
    }
    return {
        "test_images": len(labels),
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
        "log_loss": float(skm.log_loss(labels, clipped / clipped.sum(axis=1, keepdims=True), labels=classes)),
        "per_class_accuracy": per_class,
    }


def predictions_table(labels: np.ndarray, probabilities: np.ndarray, names: tuple[str, ...]) -> pd.DataFrame:
    """``index, label, predicted, confidence`` per test image, with class names (the confusion plot's axes)."""
    predicted = probabilities.argmax(axis=1)
    named = np.array(names)
    return pd.DataFrame(
        {
            "index": np.arange(len(labels)),
            "label": named[labels],
            "predicted": named[predicted],
            "confidence": probabilities.max(axis=1).round(6),
        }
    )


def gallery(split: Split, table: pd.DataFrame, size: int, title: str) -> Image.Image:
    """The ``size`` misclassified test images predicted with the highest confidence, captioned."""
    wrong = table[table["label"] != table["predicted"]].sort_values(["confidence", "index"], ascending=[False, True])
    wrong = wrong.head(size)
    font = ImageFont.load_default(size=11)
    tile = split.x.shape[1] * ZOOM
    if wrong.empty:
        heading = f"{title}: no misclassified test images"
    else:
        heading = f"{title}: the {len(wrong)} most confidently wrong test image{'s' * (len(wrong) > 1)}"
    width = max(len(wrong) * (tile + MARGIN), int(font.getlength(heading)) + 2 * MARGIN)
    sheet = Image.new("RGB", (width, CAPTION // 2 + (tile + CAPTION if len(wrong) else 0)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((MARGIN, MARGIN), heading, fill="black", font=font)
    for slot, row in enumerate(wrong.itertuples()):
        x = slot * (tile + MARGIN)
        image = Image.fromarray(split.x[row.index]).resize((tile, tile), Image.Resampling.NEAREST)
        sheet.paste(image.convert("RGB"), (x, CAPTION // 2))
        caption = f"true {row.label}\nsaid {row.predicted}\np={row.confidence:.3f}"
        draw.multiline_text((x + 1, CAPTION // 2 + tile + 1), caption, fill="black", font=font, spacing=0)
    return sheet


def main() -> None:
    dataset = dataset_arg(sys.argv[1:])
    params = load_params()
    names = paths.DIGITS_CLASS_NAMES[dataset]
    test = load_split(dataset, "test")
    model = load_saved(paths.digits_model(dataset))
    probabilities = model.predict(batches(test, params.digits.batch_size, shuffle=False, seed=0), verbose=0)
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
