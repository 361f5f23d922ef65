"""Every path the pipeline reads or writes, named once; relative to the repository root."""

from pathlib import Path
from typing import NamedTuple

PARAMS = Path("params.yaml")

ARCHIVE_DIR = Path("data/archive")  # data.archive's default: a local dataset put here is a DVC dependency
WEIGHTS_DIR = Path("data/weights")  # local weights files live here, so DVC re-runs extract_features on a change
RAW_DIR = Path("data/raw")
RAW_ARCHIVE = RAW_DIR / "train.zip"  # whatever the source, download leaves this one zip
SAMPLE_DIR = Path("data/sample")
MANIFEST = SAMPLE_DIR / "manifest.csv"
FEATURES_DIR = Path("data/features")
CACHE_DIR = Path("data/cache")  # decoded images that do not fit in memory, while a training stage runs
WATCH_DIR = CACHE_DIR / "watch"  # each running training stage's curves so far, for tools.watch
KAGGLE_DOWNLOAD_DIR = CACHE_DIR / "kaggle"  # the Kaggle client's download, kept after a failure so a rerun resumes

MODELS_DIR = Path("models")
BASE_MODEL = MODELS_DIR / "base.keras"
BASELINE_MODEL = MODELS_DIR / "baseline.keras"
HEAD_MODEL = MODELS_DIR / "head.keras"
FROZEN_MODEL = MODELS_DIR / "frozen.keras"
FINETUNED_MODEL = MODELS_DIR / "finetuned.keras"
# The book's four models, in its order.
EVALUATED_MODELS = {
    "baseline": BASELINE_MODEL,
    "head": HEAD_MODEL,
    "frozen": FROZEN_MODEL,
    "finetuned": FINETUNED_MODEL,
}

EXPORT_DIR = MODELS_DIR / "export"  # what leaves the pipeline: SavedModel, TFLite and a model card per model
EXPORT_OUTPUTS_DIR = Path("data/export_outputs")  # export's outputs on each test split, which model_cards scores


class ExportFiles(NamedTuple):
    """What ``export`` writes into a model's export folder (its ``MODEL_CARD.md`` is ``model_cards``')."""

    saved_model: Path  # a folder: TensorFlow's SavedModel
    tflite: Path
    tflite_float16: Path  # TFLite with float16 weights


def export_files(folder: Path) -> ExportFiles:
    """The exported files in ``folder``."""
    return ExportFiles(folder / "saved_model", folder / "model.tflite", folder / "model_float16.tflite")


def export_folder(name: str) -> Path:
    """One model's export folder, ``name`` being ``cats_dogs`` or a digits dataset."""
    return EXPORT_DIR / name


def model_card(name: str) -> Path:
    """One exported model's card, beside its files."""
    return export_folder(name) / "MODEL_CARD.md"


def export_outputs(name: str) -> Path:
    """What ``export`` measured of one model's files on its test split (``dogs_vs_cats.exported``)."""
    return EXPORT_OUTPUTS_DIR / f"{name}.npz"


METRICS_DIR = Path("metrics")
DATA_METRICS = METRICS_DIR / "data.json"
FEATURES_METRICS = METRICS_DIR / "features.json"
EVALUATE_METRICS = METRICS_DIR / "evaluate.json"
EXPORT_METRICS = METRICS_DIR / "export.json"
EVALUATE_DIR = METRICS_DIR / "evaluate"  # predictions, ROC points and galleries, one file per model


def features_file(split: str) -> Path:
    """Where ``extract_features`` stores one split's features."""
    return FEATURES_DIR / f"{split}.npz"


def live_dir(stage: str) -> Path:
    """The DVCLive folder of a training stage: its summary ``metrics.json`` and its ``curves.csv``."""
    return METRICS_DIR / stage


def curves_file(log_dir: Path) -> Path:
    """A training run's curves, one row per epoch and split (``epoch, split, loss, accuracy``): one plot."""
    return log_dir / "curves.csv"


def watched_curves(name: str, pid: int) -> Path:
    """Where the training run ``name`` (its log folder's name) in process ``pid`` keeps its curves so far."""
    return WATCH_DIR / f"{name}.{pid}.csv"


def predictions_file(model: str) -> Path:
    """Per-image predictions of one model on the test split."""
    return EVALUATE_DIR / "predictions" / f"{model}.csv"


ROC_FILE = EVALUATE_DIR / "roc.csv"  # every model's ROC points, a ``model`` column naming each: one plot


def gallery_file(model: str, right: bool = False) -> Path:
    """The PNG of one model's most confidently wrong test images (``right``: right ones)."""
    return EVALUATE_DIR / "gallery" / f"{model}{'_right' if right else ''}.png"


DIGITS_ARCHIVE_DIR = Path("data/digits_archive")  # digits.data.files' default: local copies, a DVC dependency


def digits_data_dir(dataset: str) -> Path:
    """The arrays of one digits dataset: ``train``, ``validation`` and ``test`` ``.npz`` files."""
    return Path("data/digits") / dataset


def digits_model(dataset: str) -> Path:
    return MODELS_DIR / "digits" / f"{dataset}.keras"


def digits_live_dir(dataset: str) -> Path:
    """The DVCLive folder of a digits training run."""
    return METRICS_DIR / "digits" / dataset


def digits_metrics(dataset: str) -> Path:
    """One dataset's test metrics."""
    return METRICS_DIR / "digits" / f"{dataset}.json"


def digits_evaluate_dir(dataset: str) -> Path:
    """One dataset's per-image test predictions (DVC's confusion plot) and its gallery of mistakes."""
    return METRICS_DIR / "digits" / "evaluate" / dataset
