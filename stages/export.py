"""Stage ``export``: the fine-tuned cat/dog model and each digits model, out of the pipeline.

For each model, under ``models/export/<name>/``: a TensorFlow SavedModel (``saved_model/``, what TF Serving
loads, taking raw pixels: the preprocessing is inside), TFLite in float32 (``model.tflite``) and with float16
weights (``model_float16.tflite``), and a model card (``MODEL_CARD.md``) written from params.yaml and the
metrics, never by hand. On the model's test split it checks that the SavedModel and the float32 TFLite compute
the Keras model's outputs (within ``TOLERANCE``, else it stops) and measures what float16 weights cost in
accuracy; ``metrics/export.json`` records both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from dogs_vs_cats import export, paths
from dogs_vs_cats.classes import DIGITS_CLASS_NAMES, DIGITS_DATASETS
from dogs_vs_cats.common import PipelineError, atomic_path, run, write_json
from dogs_vs_cats.config import Params, load_params
from dogs_vs_cats.datasets import image_dataset
from dogs_vs_cats.digits_io import load_split
from dogs_vs_cats.digits_model import batches
from dogs_vs_cats.models import load_saved, predicted_labels

TOLERANCE = 1e-4  # the largest difference from the Keras model's output an exported float32 model may have
CATS_DOGS = "cats_dogs"


@dataclass(frozen=True)
class Checked:
    """What the exported files of one model computed on its test split, against the Keras model."""

    test_images: int
    accuracy: float  # the Keras model's
    float32_max_abs_difference: float  # the larger of the SavedModel's and the float32 TFLite's
    float16_accuracy: float
    float32_bytes: int
    float16_bytes: int


def accuracy_of(outputs: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """Accuracy of sigmoid (N x 1, at ``threshold``) or softmax (N x 10) ``outputs``."""
    predicted = outputs.argmax(axis=1) if outputs.shape[1] > 1 else predicted_labels(outputs[:, 0], threshold)
    return float(np.mean(predicted == labels))


def export_one(model: keras.Model, test, folder: Path, threshold: float) -> Checked:
    """Write ``model``'s SavedModel and TFLite files into ``folder`` and check them on ``test`` batches."""
    model = export.in_float32(model)
    export.saved_model(model, folder / export.SAVED_MODEL)
    flatbuffers = {float16: export.tflite(folder / export.SAVED_MODEL, float16) for float16 in (False, True)}
    (folder / export.TFLITE).write_bytes(flatbuffers[False])
    (folder / export.TFLITE_FLOAT16).write_bytes(flatbuffers[True])
    served = export.load_saved_model(folder / export.SAVED_MODEL)
    lite, lite16 = export.LiteModel(flatbuffers[False]), export.LiteModel(flatbuffers[True])
    outputs: dict[str, list[np.ndarray]] = {"keras": [], "saved_model": [], "tflite": [], "float16": []}
    labels = []
    for x, y in test:
        x = np.asarray(x, dtype="float32")
        outputs["keras"].append(np.asarray(model.predict_on_batch(x)))
        outputs["saved_model"].append(np.asarray(served.serve(x)))
        outputs["tflite"].append(lite(x))
        outputs["float16"].append(lite16(x))
        labels.append(np.asarray(y).reshape(-1))
    out = {name: np.concatenate(parts) for name, parts in outputs.items()}
    truth = np.concatenate(labels).astype(int)
    difference = max(float(np.abs(out[name] - out["keras"]).max()) for name in ("saved_model", "tflite"))
    if difference > TOLERANCE:
        raise PipelineError(
            f"{folder}: the exported model's outputs differ from the Keras model's by {difference:.2g} "
            f"(more than {TOLERANCE}); report it with the model's layers"
        )
    return Checked(
        test_images=len(truth),
        accuracy=accuracy_of(out["keras"], truth, threshold),
        float32_max_abs_difference=difference,
        float16_accuracy=accuracy_of(out["float16"], truth, threshold),
        float32_bytes=len(flatbuffers[False]),
        float16_bytes=len(flatbuffers[True]),
    )


def _metrics(path: Path) -> dict:
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run dvc repro")
    return json.loads(path.read_text())


def _pct(value: float) -> str:
    return f"{100 * value:.2f} %"


def _exported(checked: Checked) -> list[str]:
    change = checked.float16_accuracy - checked.accuracy
    return [
        "## The exported files",
        f"- `{export.SAVED_MODEL}/`: a TensorFlow SavedModel; its `serve` signature takes what the Keras model takes.",
        f"- `{export.TFLITE}` ({checked.float32_bytes / 1e6:.1f} MB): TFLite, float32. On the "
        f"{checked.test_images} test images its outputs and the SavedModel's differ from the Keras model's by at "
        f"most {checked.float32_max_abs_difference:.1g}.",
        f"- `{export.TFLITE_FLOAT16}` ({checked.float16_bytes / 1e6:.1f} MB): TFLite with float16 weights. Test "
        f"accuracy {_pct(checked.float16_accuracy)}, {100 * change:+.2f} points from the Keras model's.",
    ]


def cats_dogs_card(params: Params, checked: Checked) -> str:
    """The fine-tuned model's card, from ``params`` and the metrics of the stages that made and scored it."""
    scores = _metrics(paths.EVALUATE_METRICS)["finetuned"]
    trained = _metrics(paths.live_dir("finetune") / "metrics.json")
    size, base, weights = params.image.size, params.features.base, params.features.weights
    counts = params.sample.counts()
    ci = scores["accuracy_ci95"]
    limits = ["- Two classes only: any photo is called a cat or a dog, whatever it shows."]
    if weights == "none":
        limits.append(
            "- **The base's weights are random** (`features.weights: none`): this model demonstrates the pipeline; "
            "its accuracy says nothing about photos."
        )
    if params.data.source == "synthetic":
        limits.append(
            "- **Trained and tested on generated images** (`data.source: synthetic`), not photos: not for photos."
        )
    limits.append(
        f"- {counts['train']:,} training images a class: the book's small-data setting; the accuracy interval "
        "says how far the test split can be trusted."
    )
    lines = [
        f"# Model card: {CATS_DOGS}",
        "",
        "Written by `dvc repro export` from params.yaml and metrics/; a rerun replaces it, so do not edit it.",
        "",
        "## What it does",
        f"Says whether a photo shows a cat or a dog: one sigmoid output, P(dog); dog when P(dog) >= "
        f"{params.evaluate.threshold} (`evaluate.threshold`).",
        "",
        "## Input",
        f"A batch of RGB images, {size}x{size} pixels, float32 values 0-255 (resize bilinearly, as the pipeline "
        f"does). {base}'s preprocessing is inside the model: feed raw pixels.",
        "",
        "## Data",
        f"`data.source: {params.data.source}`; {counts['train']:,} training, {counts['validation']:,} validation "
        f"and {counts['test']:,} test images a class, drawn with seed {params.seed}.",
        "",
        "## How it was trained",
        f"The book's recipe: {base} (weights: {weights}) with a dense head ({params.head.units} units, dropout "
        f"{params.head.dropout}) trained on its features, then the base's `{params.finetune.unfreeze}` block "
        f"fine-tuned with the head by RMSprop at {params.finetune.learning_rate}: epoch {trained['best']['epoch']} "
        f"of at most {params.finetune.epochs} had the lowest validation loss and was kept. Precision "
        f"`{trained.get('policy', params.train.precision)}`; augmentation "
        f"{'on' if trained.get('augmented') else 'off'}.",
        "",
        f"## Results on the held-out test split ({checked.test_images} images)",
        f"- accuracy {_pct(scores['accuracy'])} (95 % interval {_pct(ci['low'])} to {_pct(ci['high'])})",
        f"- ROC AUC {scores['roc_auc']:.4f}, log loss {scores['log_loss']:.4f}",
        f"- cost: {scores['params']:,} parameters, {scores['gmacs']:.2f} GMACs an image",
        "",
        *_exported(checked),
        "",
        "## Limits",
        *limits,
        "",
    ]
    return "\n".join(lines)


def digits_card(params: Params, dataset: str, checked: Checked) -> str:
    """One digits model's card, from ``params`` and its stages' metrics."""
    scores = _metrics(paths.digits_metrics(dataset))
    trained = _metrics(paths.digits_live_dir(dataset) / "metrics.json")
    cfg = params.digits
    names = ", ".join(DIGITS_CLASS_NAMES[dataset])
    limits = ["- Ten classes only, 28x28 grayscale: any image is called one of them."]
    if cfg.data.source == "offline":
        limits.append(
            "- **Not the real dataset** (`digits.data.source: offline`): "
            + (
                "scikit-learn's 8x8 digits upscaled to 28x28."
                if dataset == "mnist"
                else "generated silhouettes of the ten classes."
            )
            + " Its accuracy says nothing about the real test set."
        )
    lines = [
        f"# Model card: {dataset}",
        "",
        "Written by `dvc repro export` from params.yaml and metrics/; a rerun replaces it, so do not edit it.",
        "",
        "## What it does",
        f"Classifies a 28x28 grayscale image as one of ten classes ({names}): ten softmax outputs in that order.",
        "",
        "## Input",
        "A batch of 28x28x1 float32 images, values 0-255, light strokes on a dark background as in the dataset.",
        "",
        "## Data",
        f"`digits.data.source: {cfg.data.source}`; {trained['train_images']:,} training and "
        f"{trained['validation_images']:,} validation images (seed {params.seed}), the dataset's own test split.",
        "",
        "## How it was trained",
        f"The `{cfg.network}` network, {cfg.optimizer} at {cfg.learning_rate} ({cfg.schedule} schedule), batch "
        f"{cfg.batch_size}: epoch {trained['best']['epoch']} of at most {cfg.epochs} had the lowest validation "
        f"loss and was kept. Precision `{trained.get('policy', params.train.precision)}`.",
        "",
        f"## Results on the test split ({checked.test_images} images)",
        f"- accuracy {_pct(scores['accuracy'])}, macro F1 {scores['f1_macro']:.4f}, log loss {scores['log_loss']:.4f}",
        "",
        *_exported(checked),
        "",
        "## Limits",
        *limits,
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    params = load_params()
    results = {}
    with atomic_path(paths.EXPORT_DIR, replace=True) as out:
        out.mkdir()
        folder = out / CATS_DOGS
        folder.mkdir()
        test = image_dataset("test", params.image.size, params.image.batch_size, shuffle=False, seed=0)
        checked = export_one(load_saved(paths.FINETUNED_MODEL), test, folder, params.evaluate.threshold)
        (folder / export.CARD).write_text(cats_dogs_card(params, checked))
        results[CATS_DOGS] = checked
        for dataset in DIGITS_DATASETS:
            folder = out / dataset
            folder.mkdir()
            test = batches(load_split(dataset, "test"), params.digits.batch_size, shuffle=False, seed=0)
            checked = export_one(load_saved(paths.digits_model(dataset)), test, folder, params.evaluate.threshold)
            (folder / export.CARD).write_text(digits_card(params, dataset, checked))
            results[dataset] = checked
    for name, checked in results.items():
        print(
            f"export: {name}: outputs within {checked.float32_max_abs_difference:.1g} of Keras; float16 weights "
            f"{100 * (checked.float16_accuracy - checked.accuracy):+.2f} points of accuracy"
        )
    write_json(
        paths.EXPORT_METRICS,
        {
            name: {
                "float32_max_abs_difference": checked.float32_max_abs_difference,
                "float16_accuracy_change": checked.float16_accuracy - checked.accuracy,
            }
            for name, checked in results.items()
        },
    )


if __name__ == "__main__":
    run(main)
