"""``params.yaml``'s schema: one frozen dataclass per section, validated in full before any stage does work.

Every field is required: ``params.yaml`` is the one place a value lives, and DVC tracks each key a stage
lists there. A wrong key, type or value raises ``ConfigError`` with one line naming the key and the fix
(the reading and type checks are ``typed_yaml``'s; the values' own rules are here).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from dogs_vs_cats import paths
from dogs_vs_cats.classes import SPLITS
from dogs_vs_cats.typed_yaml import ConfigError, Renamed, check, parse, read_yaml

Source = Literal["kaggle", "archive", "petimages", "synthetic"]
Flip = Literal["horizontal", "vertical", "horizontal_and_vertical", "none"]
Padding = Literal["valid", "same"]
Base = Literal["vgg16", "xception", "resnet50", "efficientnetv2b0"]
Precision = Literal["float32", "mixed_float16", "mixed_bfloat16"]
Strategy = Literal["auto", "one_device", "mirrored"]
DigitsSource = Literal["keras", "files", "offline"]
DigitsNetwork = Literal["lenet5", "book", "strong"]
Optimizer = Literal["rmsprop", "adam"]
Decay = Literal["constant", "cosine", "step"]


# DVC 3.67's run-cache leaves every params key named like these out of a stage's cache key
# (treeverse/dvc#10296): a changed value would restore the old value's outputs. No key may carry them.
DVC_IGNORED_KEYS = frozenset({"size", "nfiles"})
SIDE = Renamed("side", "DVC's run-cache ignores keys named size, treeverse/dvc#10296")
MULTI_WORKER_RETIRED = (
    "is retired: it trained only train_head, the stage of seconds, as Keras 3's fit fails under "
    "MultiWorkerMirroredStrategy (keras-team/keras#20585); use auto, one_device or mirrored (the GPUs of one "
    "machine), and run experiments on many machines instead (docs/experiments-and-scaling.md)"
)

SEED_LIMIT = 2**32  # NumPy and keras.utils.set_random_seed take seeds below 2**32


def _seed(value: int, key: str) -> None:
    check(0 <= value < SEED_LIMIT, key, f"is {value}; use a whole number from 0 to {SEED_LIMIT - 1}")


def _fraction(value: float, key: str, top: float = 1.0) -> None:
    check(
        0.0 <= value < top,
        key,
        f"is {value}; use a number from 0 up to (not including) {top}",
    )


def _positive(value: float, key: str) -> None:
    check(value > 0, key, f"is {value}; use a number above 0")


def _at_least(value: int, key: str, minimum: int = 1) -> None:
    check(value >= minimum, key, f"is {value}; use at least {minimum}")


@dataclass(frozen=True)
class TrainingPlan:
    """How a model trains, whichever section of params.yaml it comes from: its learning rate, at most ``epochs``
    epochs, and ``patience`` epochs without a better validation loss before it stops (None: never early)."""

    section: str  # where the values live, for the error line
    learning_rate: float
    epochs: int
    patience: int | None

    def __post_init__(self) -> None:
        _positive(self.learning_rate, f"{self.section}.learning_rate")
        _at_least(self.epochs, f"{self.section}.epochs")
        check(
            self.patience is None or self.patience >= 1,
            f"{self.section}.patience",
            f"is {self.patience}; use a whole number >= 1, or null to never stop early",
        )

    @classmethod
    def of(cls, section: Trains) -> TrainingPlan:
        """The training plan of a section (``HeadConfig`` and the others), checked."""
        return cls(section.SECTION, section.learning_rate, section.epochs, section.patience)


class Trains:
    """A section of params.yaml that trains a model: its ``learning_rate``, ``epochs`` and ``patience`` fields
    are its ``plan``, named after its ``SECTION``."""

    SECTION: ClassVar[str]
    learning_rate: float
    epochs: int
    patience: int | None

    @property
    def plan(self) -> TrainingPlan:
        return TrainingPlan.of(self)


@dataclass(frozen=True)
class SyntheticConfig:
    per_class: int
    side: int
    seed: int

    RENAMED: ClassVar[dict[str, Renamed]] = {"size": SIDE}

    def __post_init__(self) -> None:
        _at_least(self.per_class, "data.synthetic.per_class")
        _seed(self.seed, "data.synthetic.seed")
        check(
            self.side >= 8,
            "data.synthetic.side",
            f"is {self.side}; use at least 8 (pixels)",
        )


@dataclass(frozen=True)
class DataConfig:
    source: Source
    competition: str
    archive: str
    petimages_url: str
    synthetic: SyntheticConfig

    def __post_init__(self) -> None:
        # dvc.yaml declares data.archive as download's dependency, so it is always a path DVC can hash.
        check(
            bool(self.archive) and not self.archive.startswith("~"),
            "data.archive",
            f"is {self.archive!r}; use a path (no ~): a .zip or folder, or {paths.ARCHIVE_DIR} when unused",
        )
        if self.source == "petimages":
            url = urllib.parse.urlparse(self.petimages_url)
            check(
                (url.scheme in ("http", "https") and bool(url.netloc)) or (url.scheme == "file" and bool(url.path)),
                "data.petimages_url",
                f"is {self.petimages_url!r}; use an https:// (or file://) URL of the PetImages zip",
            )


@dataclass(frozen=True)
class SampleConfig:
    train_per_class: int
    validation_per_class: int
    test_per_class: int

    def __post_init__(self) -> None:
        for split in SPLITS:
            count = getattr(self, f"{split}_per_class")
            _at_least(count, f"sample.{split}_per_class")

    def counts(self) -> dict[str, int]:
        """Images per class for each split, in split order."""
        return {split: getattr(self, f"{split}_per_class") for split in SPLITS}


@dataclass(frozen=True)
class ImageConfig:
    side: int
    batch_size: int

    RENAMED: ClassVar[dict[str, Renamed]] = {"size": SIDE}

    def __post_init__(self) -> None:
        check(
            self.side >= 32,
            "image.side",
            f"is {self.side}; use at least 32 (VGG16's smallest input)",
        )
        _at_least(self.batch_size, "image.batch_size")


@dataclass(frozen=True)
class AugmentConfig:
    flip: Flip
    rotation: float
    zoom: float

    def __post_init__(self) -> None:
        _fraction(self.rotation, "augment.rotation")
        _fraction(self.zoom, "augment.zoom")

    def active(self) -> bool:
        """True when any augmentation is on."""
        return self.flip != "none" or self.rotation > 0 or self.zoom > 0


@dataclass(frozen=True)
class BaselineConfig(Trains):
    filters: tuple[int, ...]
    kernel_size: int
    padding: Padding
    dropout: float
    learning_rate: float
    epochs: int
    patience: int | None

    SECTION: ClassVar[str] = "baseline"

    def __post_init__(self) -> None:
        check(
            len(self.filters) >= 1,
            "baseline.filters",
            "is empty; list at least one filter count",
        )
        check(
            all(f >= 1 for f in self.filters),
            "baseline.filters",
            f"is {list(self.filters)}; use counts >= 1",
        )
        _at_least(self.kernel_size, "baseline.kernel_size")
        _fraction(self.dropout, "baseline.dropout")
        TrainingPlan.of(self)


@dataclass(frozen=True)
class FeaturesConfig:
    base: Base
    weights: str

    def __post_init__(self) -> None:
        check(
            bool(self.weights),
            "features.weights",
            "is empty; use imagenet, none or the path of a weights file",
        )
        if self.weights not in ("imagenet", "none"):
            # extract_features depends on the folder in dvc.yaml: a file elsewhere could change unseen.
            inside = Path(self.weights).resolve().is_relative_to(paths.WEIGHTS_DIR.resolve())
            check(
                inside,
                "features.weights",
                f"is {self.weights}, outside {paths.WEIGHTS_DIR}/; copy the file there, so DVC re-runs "
                "extract_features when it changes",
            )


@dataclass(frozen=True)
class HeadConfig(Trains):
    normalize: bool
    units: int
    dropout: float
    learning_rate: float
    batch_size: int
    epochs: int
    patience: int | None

    SECTION: ClassVar[str] = "head"

    def __post_init__(self) -> None:
        _at_least(self.units, "head.units")
        _fraction(self.dropout, "head.dropout")
        _at_least(self.batch_size, "head.batch_size")
        TrainingPlan.of(self)


@dataclass(frozen=True)
class FrozenConfig(Trains):
    """The frozen-base model: its own head (built as ``head:``'s, so a head sweep does not retrain it) and training
    plan."""

    normalize: bool
    units: int
    dropout: float
    learning_rate: float
    epochs: int
    patience: int | None

    SECTION: ClassVar[str] = "frozen"

    def __post_init__(self) -> None:
        _at_least(self.units, "frozen.units")
        _fraction(self.dropout, "frozen.dropout")
        TrainingPlan.of(self)


@dataclass(frozen=True)
class FinetuneConfig(Trains):
    unfreeze: str
    cache_frozen: bool
    learning_rate: float
    epochs: int
    patience: int | None

    SECTION: ClassVar[str] = "finetune"

    def __post_init__(self) -> None:
        check(
            bool(self.unfreeze),
            "finetune.unfreeze",
            "is empty; use top (the base's last block) or layer-name prefixes, e.g. block4,block5",
        )
        TrainingPlan.of(self)


@dataclass(frozen=True)
class EvaluateConfig:
    threshold: float
    gallery_size: int
    bootstrap: int

    def __post_init__(self) -> None:
        check(0.0 < self.threshold < 1.0, "evaluate.threshold", f"is {self.threshold}; use a number between 0 and 1")
        check(self.gallery_size >= 0, "evaluate.gallery_size", f"is {self.gallery_size}; use 0 or more")
        check(self.bootstrap >= 0, "evaluate.bootstrap", f"is {self.bootstrap}; use 0 (no interval) or more")


@dataclass(frozen=True)
class TrainConfig:
    """How the training stages run, not what they learn: the knobs that matter on a GPU."""

    precision: Precision
    jit_compile: bool
    deterministic: bool
    strategy: Strategy

    RETIRED: ClassVar[dict[str, str]] = {
        "strategy=multi_worker": MULTI_WORKER_RETIRED,
        "cluster_timeout": "served train.strategy multi_worker, which is retired; remove the key",
    }


@dataclass(frozen=True)
class DigitsDataConfig:
    source: DigitsSource
    files: str
    offline_per_class: int
    validation: int

    def __post_init__(self) -> None:
        # dvc.yaml declares digits.data.files as digits_data's dependency, so it is always a path DVC can hash.
        check(
            bool(self.files) and not self.files.startswith("~"),
            "digits.data.files",
            f"is {self.files!r}; use a path (no ~), or {paths.DIGITS_ARCHIVE_DIR} when unused",
        )
        _at_least(self.offline_per_class, "digits.data.offline_per_class", 2)
        _at_least(self.validation, "digits.data.validation")


@dataclass(frozen=True)
class DigitsAugmentConfig:
    rotation: float
    shift: float
    zoom: float

    def __post_init__(self) -> None:
        _fraction(self.rotation, "digits.augment.rotation", 0.5)
        _fraction(self.shift, "digits.augment.shift", 0.5)
        _fraction(self.zoom, "digits.augment.zoom")


@dataclass(frozen=True)
class DigitsConfig(Trains):
    data: DigitsDataConfig
    network: DigitsNetwork
    dropout: float
    augment: DigitsAugmentConfig
    optimizer: Optimizer
    learning_rate: float
    schedule: Decay  # the learning rate's decay over the run (digits_model.learning_rate)
    batch_size: int
    epochs: int
    patience: int | None
    gallery_size: int

    SECTION: ClassVar[str] = "digits"

    def __post_init__(self) -> None:
        _fraction(self.dropout, "digits.dropout")
        _at_least(self.batch_size, "digits.batch_size")
        TrainingPlan.of(self)
        check(self.gallery_size >= 0, "digits.gallery_size", f"is {self.gallery_size}; use 0 or more")


@dataclass(frozen=True)
class Params:
    seed: int
    data: DataConfig
    sample: SampleConfig
    image: ImageConfig
    augment: AugmentConfig
    baseline: BaselineConfig
    features: FeaturesConfig
    head: HeadConfig
    frozen: FrozenConfig
    finetune: FinetuneConfig
    evaluate: EvaluateConfig
    train: TrainConfig
    digits: DigitsConfig

    def __post_init__(self) -> None:
        _seed(self.seed, "seed")


def load_params(path: Path = paths.PARAMS, overrides: Mapping[str, Any] | None = None) -> Params:
    """Read and validate the whole of ``params.yaml``; every error names ``path``.

    ``overrides`` maps dotted keys to values, as ``dvc exp run -S`` and ``configs/*.yaml`` give them; they
    replace the file's values before validation.
    """
    raw = read_yaml(Path(path))
    try:
        for dotted, value in (overrides or {}).items():
            *parents, leaf = dotted.split(".")
            node = raw
            for key in parents:
                node = node.get(key) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise ConfigError(f"unknown key {dotted}; remove it or fix its spelling")
            node[leaf] = value  # a new leaf is parse's to refuse, with the keys known there
        return parse(Params, raw)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
