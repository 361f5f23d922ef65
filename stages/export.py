"""Stage ``export``: the fine-tuned cat/dog model and each digits model, out of the pipeline.

For each model, under ``models/export/<name>/``: a TensorFlow SavedModel (``saved_model/``, what TF Serving
loads, taking raw pixels: the preprocessing is inside), TFLite in float32 (``model.tflite``) and with float16
weights (``model_float16.tflite``), and a model card (``MODEL_CARD.md``) written from params.yaml and the
metrics, never by hand. On the model's test split it checks that the SavedModel and the float32 TFLite compute
the Keras model's outputs (within ``TOLERANCE``, else it stops) and measures what float16 weights cost in
accuracy; ``metrics/export.json`` records both.
"""

from __future__ import annotations

from runtime.program import run, start_program

start_program(__name__)  # first: the imports below take seconds (TensorFlow's), and Ctrl-C during them ends in one line

import contextlib
import errno
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from dogs_vs_cats import export, paths
from dogs_vs_cats.classes import DIGITS_CLASS_NAMES, DIGITS_DATASETS
from dogs_vs_cats.config import Params, load_params
from dogs_vs_cats.datasets import image_dataset
from dogs_vs_cats.digits_io import load_split
from dogs_vs_cats.digits_model import batches
from dogs_vs_cats.models import load_saved, predicted_labels
from runtime.errors import PipelineError, one_line
from runtime.files import atomic_path, input_file, write_json

TOLERANCE = 1e-4  # the largest difference from the Keras model's output an exported float32 model may have
FLOAT16_TOLERANCE = 0.05  # the same for the file with float16 weights, on a probability from 0 to 1
CATS_DOGS = "cats_dogs"


@dataclass(frozen=True)
class Checked:
    """What the exported files of one model computed on its test split, against the Keras model."""

    test_images: int
    accuracy: float  # the trained model's, in the precision it was trained and evaluated in
    float32_max_abs_difference: float  # the SavedModel's and the float32 TFLite's, from the trained model's
    float16_max_abs_difference: float  # the float16 TFLite's, from the trained model's
    float16_accuracy: float
    float32_bytes: int
    float16_bytes: int


def accuracy_of(outputs: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """Accuracy of sigmoid (N x 1, at ``threshold``) or softmax (N x 10) ``outputs``."""
    predicted = outputs.argmax(axis=1) if outputs.shape[1] > 1 else predicted_labels(outputs[:, 0], threshold)
    return float(np.mean(predicted == labels))


def largest_difference(outputs: np.ndarray, reference: np.ndarray) -> float:
    """The largest absolute difference; NaN when either holds a NaN (``max`` and ``>`` would let it pass)."""
    return float(np.max(np.abs(outputs - reference)))


def outputs_on(predictors: dict[str, Callable[[np.ndarray], np.ndarray]], test) -> tuple[dict, np.ndarray]:
    """Each predictor's outputs on the ``test`` batches, and the labels. A short last batch is filled up with
    zeros whose outputs are dropped: one batch shape, so Keras traces each model's predict step once."""
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in predictors}
    labels, full = [], None
    for x, y in test:
        x = np.asarray(x, dtype="float32")
        full = full or len(x)
        padded = np.concatenate([x, np.zeros((full - len(x), *x.shape[1:]), x.dtype)]) if len(x) < full else x
        for name, predict in predictors.items():
            outputs[name].append(np.asarray(predict(padded))[: len(x)])
        labels.append(np.asarray(y).reshape(-1))
    return {name: np.concatenate(parts) for name, parts in outputs.items()}, np.concatenate(labels).astype(int)


def export_one(trained: keras.Model, test, folder: Path, threshold: float) -> Checked:
    """Write ``trained``'s SavedModel and TFLite files into ``folder`` and check them on ``test`` batches.

    The files are made from a float32 rebuild of the model. They must compute what that rebuild computes
    (within ``TOLERANCE``, float16 weights within ``FLOAT16_TOLERANCE``), and what is reported is their
    difference from ``trained`` itself, the model whose accuracy evaluate measured: under a mixed precision
    policy the two differ by the rounding float32 does not do.
    """
    model = export.in_float32(trained)
    export.saved_model(model, folder / export.SAVED_MODEL)
    flatbuffers = {float16: export.tflite(folder / export.SAVED_MODEL, float16) for float16 in (False, True)}
    (folder / export.TFLITE).write_bytes(flatbuffers[False])
    (folder / export.TFLITE_FLOAT16).write_bytes(flatbuffers[True])
    served = export.load_saved_model(folder / export.SAVED_MODEL)
    predictors = {
        "trained": trained.predict_on_batch,
        "keras": model.predict_on_batch,
        "saved_model": served.serve,
        "tflite": export.LiteModel(flatbuffers[False]),
        "float16": export.LiteModel(flatbuffers[True]),
    }
    out, truth = outputs_on(predictors, test)
    if not np.isfinite(out["trained"]).all():
        raise PipelineError(f"{folder}: the model's outputs on its test split are not all finite; train it again")
    for name, tolerance in (("saved_model", TOLERANCE), ("tflite", TOLERANCE), ("float16", FLOAT16_TOLERANCE)):
        difference = largest_difference(out[name], out["keras"])
        if not difference <= tolerance:  # NaN fails too
            raise PipelineError(
                f"{folder}: the exported {name} outputs differ from the Keras model's by {difference:.2g} "
                f"(more than {tolerance}); report it with the model's layers"
            )
    return Checked(
        test_images=len(truth),
        accuracy=accuracy_of(out["trained"], truth, threshold),
        float32_max_abs_difference=max(
            largest_difference(out[name], out["trained"]) for name in ("saved_model", "tflite")
        ),
        float16_max_abs_difference=largest_difference(out["float16"], out["trained"]),
        float16_accuracy=accuracy_of(out["float16"], truth, threshold),
        float32_bytes=len(flatbuffers[False]),
        float16_bytes=len(flatbuffers[True]),
    )


def read_metrics(path: Path, stage: str, needs: tuple[str, ...]) -> dict:
    """The metrics ``stage`` wrote at ``path``, with a number at each dotted key a model card ``needs``; read
    before any work, so a missing or damaged file stops the stage at once with one line."""
    again = f"run dvc repro --force {stage}"
    input_file(path, again)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:  # ValueError: JSONDecodeError and UnicodeDecodeError both are one
        raise PipelineError(f"{path}: cannot read it ({one_line(error)}); {again}") from None
    for key in needs:
        node = data
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, int | float) or isinstance(node, bool):
            raise PipelineError(f"{path}: {key} is {node!r}, not a number; {again}")
    return data


def cats_dogs_metrics() -> tuple[dict, dict]:
    """What the fine-tuned model's card quotes: its test scores and its training summary."""
    scores = read_metrics(
        paths.EVALUATE_METRICS,
        "evaluate",
        tuple(
            f"finetuned.{key}"
            for key in ("accuracy", "accuracy_ci95.low", "accuracy_ci95.high", "log_loss", "params", "gmacs")
        ),
    )["finetuned"]
    return scores, read_metrics(paths.live_dir("finetune") / "metrics.json", "finetune", ("best.epoch",))


def digits_metrics(dataset: str) -> tuple[dict, dict]:
    """What a digits model's card quotes: its test scores and its training summary."""
    scores = read_metrics(
        paths.digits_metrics(dataset), f"digits_evaluate@{dataset}", ("accuracy", "f1_macro", "log_loss")
    )
    needs = ("best.epoch", "train_images", "validation_images")
    return scores, read_metrics(paths.digits_live_dir(dataset) / "metrics.json", f"digits_train@{dataset}", needs)


def _pct(value: float) -> str:
    return f"{100 * value:.2f} %"


def _number(value: object, spec: str) -> str:
    """``value`` formatted, or n/a where evaluate could not compute it (a ROC AUC needs both classes)."""
    return format(value, spec) if isinstance(value, int | float) else "n/a"


def _exported(checked: Checked) -> list[str]:
    change = checked.float16_accuracy - checked.accuracy
    return [
        "## The exported files",
        f"- `{export.SAVED_MODEL}/`: a TensorFlow SavedModel; its `serve` signature takes what the Keras model takes.",
        f"- `{export.TFLITE}` ({checked.float32_bytes / 1e6:.1f} MB): TFLite, float32. On the "
        f"{checked.test_images} test images its outputs and the SavedModel's differ from those of the model scored "
        f"above by at most {checked.float32_max_abs_difference:.1g}.",
        f"- `{export.TFLITE_FLOAT16}` ({checked.float16_bytes / 1e6:.1f} MB): TFLite with float16 weights; outputs "
        f"within {checked.float16_max_abs_difference:.1g}, test accuracy {_pct(checked.float16_accuracy)}, "
        f"{100 * change:+.2f} points from the model scored above.",
    ]


def cats_dogs_card(params: Params, metrics: tuple[dict, dict], checked: Checked) -> str:
    """The fine-tuned model's card, from ``params`` and the metrics of the stages that made and scored it."""
    scores, trained = metrics
    size, base, weights = params.image.side, params.features.base, params.features.weights
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
        f"- ROC AUC {_number(scores.get('roc_auc'), '.4f')}, log loss {scores['log_loss']:.4f}",
        f"- cost: {scores['params']:,} parameters, {scores['gmacs']:.2f} GMACs an image",
        "",
        *_exported(checked),
        "",
        "## Limits",
        *limits,
        "",
    ]
    return "\n".join(lines)


def digits_card(params: Params, dataset: str, metrics: tuple[dict, dict], checked: Checked) -> str:
    """One digits model's card, from ``params`` and its stages' metrics."""
    scores, trained = metrics
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


@contextlib.contextmanager
def disk_space_named(target: Path) -> Iterator[None]:
    """A full disk while writing ``target`` is one line: TensorFlow's SavedModel writer says so in a
    ``ResourceExhaustedError`` of forty lines, Python in an ``OSError``."""
    try:
        yield
    except (OSError, tf.errors.ResourceExhaustedError) as error:
        if getattr(error, "errno", None) != errno.ENOSPC and "No space left" not in str(error):
            raise
        raise PipelineError(f"{target}: no space left on the device; free some, then run dvc repro export") from None


def main() -> None:
    params = load_params()
    # Every metric the cards quote is read first: a damaged file costs a second, not the export's work.
    metrics = {CATS_DOGS: cats_dogs_metrics(), **{dataset: digits_metrics(dataset) for dataset in DIGITS_DATASETS}}
    results = {}
    with atomic_path(paths.EXPORT_DIR, replace=True) as out, disk_space_named(paths.EXPORT_DIR):
        out.mkdir()
        for name in metrics:
            folder = out / name
            folder.mkdir()
            if name == CATS_DOGS:
                test = image_dataset("test", params.image.side, params.image.batch_size)
                results[name] = export_one(load_saved(paths.FINETUNED_MODEL), test, folder, params.evaluate.threshold)
                card = cats_dogs_card(params, metrics[name], results[name])
            else:
                test = batches(load_split(name, "test"), params.digits.batch_size)
                results[name] = export_one(
                    load_saved(paths.digits_model(name)), test, folder, params.evaluate.threshold
                )
                card = digits_card(params, name, metrics[name], results[name])
            (folder / export.CARD).write_text(card)
    for name, checked in results.items():
        print(
            f"export: {name}: outputs within {checked.float32_max_abs_difference:.1g} of the trained model's; "
            f"float16 weights {100 * (checked.float16_accuracy - checked.accuracy):+.2f} points of accuracy"
        )
    write_json(
        paths.EXPORT_METRICS,
        {
            name: {
                "float32_max_abs_difference": checked.float32_max_abs_difference,
                "float16_max_abs_difference": checked.float16_max_abs_difference,
                "float16_accuracy_change": checked.float16_accuracy - checked.accuracy,
            }
            for name, checked in results.items()
        },
    )


if __name__ == "__main__":
    run(main, no_arguments=True)
