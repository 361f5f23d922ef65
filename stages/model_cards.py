"""Stage ``model_cards``: a card for each exported model, and ``metrics/export.json``.

Each card (``models/export/<name>/MODEL_CARD.md``, beside the files ``export`` wrote) says what the model does,
what it takes, how it was made and how well it does, from params.yaml and the metrics of the stages that made
and scored it, never by hand; with what float16 weights cost in accuracy, scored here at ``evaluate.threshold``
on the outputs ``export`` kept. It imports no TensorFlow: a threshold sweep rewrites the cards in a second.
"""

from __future__ import annotations

from runtime.program import run, start_program

start_program(__name__)  # first, as in every stage: Ctrl-C and SIGTERM end it in one line

import json
from pathlib import Path

from dogs_vs_cats import paths
from dogs_vs_cats.classes import CATS_DOGS, DIGITS_CLASS_NAMES, DIGITS_DATASETS, outputs_of
from dogs_vs_cats.config import Params, load_params
from dogs_vs_cats.exported import Checked, Outputs, score
from runtime.errors import PipelineError, one_line
from runtime.files import atomic_paths, input_file, json_text


def read_metrics(path: Path, stage: str, needs: tuple[str, ...]) -> dict:
    """The metrics ``stage`` wrote at ``path``, with a number at each dotted key a model card ``needs``; read
    before any work, so a missing or damaged file stops the stage at once with one line."""
    again = f"run dvc repro -f -s {stage}"
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
    """What the fine-tuned model's card quotes: its test scores (with the test split's size) and its training
    summary."""
    needs = ("accuracy", "accuracy_ci95.low", "accuracy_ci95.high", "log_loss", "params", "gmacs")
    scores = read_metrics(paths.EVALUATE_METRICS, "evaluate", ("test_images", *(f"finetuned.{key}" for key in needs)))
    return {**scores["finetuned"], "test_images": scores["test_images"]}, read_metrics(
        paths.live_dir("finetune") / "metrics.json", "finetune", ("best.epoch",)
    )


def digits_metrics(dataset: str) -> tuple[dict, dict]:
    """What a digits model's card quotes: its test scores and its training summary."""
    scores = read_metrics(
        paths.digits_metrics(dataset), f"digits_evaluate@{dataset}", ("test_images", "accuracy", "f1_macro", "log_loss")
    )
    needs = ("best.epoch", "train_images", "validation_images")
    return scores, read_metrics(paths.digits_live_dir(dataset) / "metrics.json", f"digits_train@{dataset}", needs)


def _pct(value: float) -> str:
    return f"{100 * value:.2f} %"


def _number(value: object, spec: str) -> str:
    """``value`` formatted, or n/a where evaluate could not compute it (a ROC AUC needs both classes)."""
    return format(value, spec) if isinstance(value, int | float) else "n/a"


def _exported(checked: Checked) -> list[str]:
    files = paths.export_files(Path())
    change = checked.float16_accuracy - checked.accuracy
    return [
        "## The exported files",
        f"- `{files.saved_model.name}/`: a TensorFlow SavedModel; its `serve` signature takes what the Keras model "
        "takes.",
        f"- `{files.tflite.name}` ({checked.float32_bytes / 1e6:.1f} MB): TFLite, float32. On the "
        f"{checked.test_images} test images its outputs and the SavedModel's differ from those of the model scored "
        f"above by at most {checked.float32_max_abs_difference:.1g}.",
        f"- `{files.tflite_float16.name}` ({checked.float16_bytes / 1e6:.1f} MB): TFLite with float16 weights; outputs "
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
        "Written by `dvc repro model_cards` from params.yaml and metrics/; a rerun replaces it, so do not edit it.",
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
        "Written by `dvc repro model_cards` from params.yaml and metrics/; a rerun replaces it, so do not edit it.",
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
    # Every input is read before anything is written, and every output takes its place together: a damaged file,
    # or a failure half way, leaves the cards and metrics/export.json as they were.
    metrics = {CATS_DOGS: cats_dogs_metrics(), **{dataset: digits_metrics(dataset) for dataset in DIGITS_DATASETS}}
    results = {}
    for name, (scores, _) in metrics.items():
        kept = Outputs.load(paths.export_outputs(name), outputs_of(name), scores["test_images"])
        results[name] = score(kept, params.evaluate.threshold)
    cards = {
        CATS_DOGS: cats_dogs_card(params, metrics[CATS_DOGS], results[CATS_DOGS]),
        **{dataset: digits_card(params, dataset, metrics[dataset], results[dataset]) for dataset in DIGITS_DATASETS},
    }
    exported = {
        name: {
            "float32_max_abs_difference": result.float32_max_abs_difference,
            "float16_max_abs_difference": result.float16_max_abs_difference,
            "float16_accuracy_change": result.float16_accuracy - result.accuracy,
        }
        for name, result in results.items()
    }
    with atomic_paths([*map(paths.model_card, cards), paths.EXPORT_METRICS], replace=True) as staged:
        for path, card in zip(staged[:-1], cards.values(), strict=True):
            path.write_text(card)
        staged[-1].write_text(json_text(exported))
    for name, result in results.items():
        change = 100 * (result.float16_accuracy - result.accuracy)
        print(f"model_cards: {name}: float16 weights {change:+.2f} points of accuracy")


if __name__ == "__main__":
    run(main, no_arguments=True)
