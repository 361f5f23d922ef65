"""``params.yaml``, read with a YAML 1.2 parser and validated in full before any stage does work.

Every field is required: ``params.yaml`` is the one place a value lives, and DVC tracks each key a stage
lists there. A wrong key, type or value raises ``ConfigError`` with one line naming the key and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import reprlib
import types
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from stages import paths
from stages.common import PipelineError

Source = Literal["kaggle", "archive", "petimages", "synthetic"]
Flip = Literal["horizontal", "vertical", "horizontal_and_vertical", "none"]
Padding = Literal["valid", "same"]
Base = Literal["vgg16", "xception", "resnet50", "efficientnetv2b0"]
Precision = Literal["float32", "mixed_float16", "mixed_bfloat16"]
Strategy = Literal["auto", "one_device", "mirrored", "multi_worker"]
DigitsSource = Literal["keras", "files", "offline"]
DigitsNetwork = Literal["book", "strong"]
Optimizer = Literal["rmsprop", "adam"]
Schedule = Literal["constant", "cosine", "step"]


class ConfigError(PipelineError):
    """A key of ``params.yaml`` is unknown, missing, of the wrong type or impossible."""


SEED_LIMIT = 2**32  # NumPy and keras.utils.set_random_seed take seeds below 2**32


def _check(ok: bool, key: str, problem: str) -> None:
    """Raise ConfigError naming ``key``; ``load_params`` puts the file's path in front."""
    if not ok:
        raise ConfigError(f"{key} {problem}")


def _seed(value: int, key: str) -> None:
    _check(0 <= value < SEED_LIMIT, key, f"is {value}; use a whole number from 0 to {SEED_LIMIT - 1}")


def _fraction(value: float, key: str, top: float = 1.0) -> None:
    _check(
        0.0 <= value < top,
        key,
        f"is {value}; use a number from 0 up to (not including) {top}",
    )


def _positive(value: float, key: str) -> None:
    _check(value > 0, key, f"is {value}; use a number above 0")


def _at_least(value: int, key: str, minimum: int = 1) -> None:
    _check(value >= minimum, key, f"is {value}; use at least {minimum}")


def _schedule(section: str, learning_rate: float, epochs: int, patience: int | None) -> None:
    """The checks every training section shares."""
    _positive(learning_rate, f"{section}.learning_rate")
    _at_least(epochs, f"{section}.epochs")
    _check(
        patience is None or patience >= 1,
        f"{section}.patience",
        f"is {patience}; use a whole number >= 1, or null to never stop early",
    )


@dataclass(frozen=True)
class SyntheticConfig:
    per_class: int
    size: int
    seed: int

    def __post_init__(self) -> None:
        _at_least(self.per_class, "data.synthetic.per_class")
        _seed(self.seed, "data.synthetic.seed")
        _check(
            self.size >= 8,
            "data.synthetic.size",
            f"is {self.size}; use at least 8 (pixels)",
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
        _check(
            bool(self.archive) and not self.archive.startswith("~"),
            "data.archive",
            f"is {self.archive!r}; use a path (no ~): a .zip or folder, or {paths.ARCHIVE_DIR} when unused",
        )
        if self.source == "petimages":
            url = urllib.parse.urlparse(self.petimages_url)
            _check(
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
        for split in paths.SPLITS:
            count = getattr(self, f"{split}_per_class")
            _at_least(count, f"sample.{split}_per_class")

    def counts(self) -> dict[str, int]:
        """Images per class for each split, in split order."""
        return {split: getattr(self, f"{split}_per_class") for split in paths.SPLITS}


@dataclass(frozen=True)
class ImageConfig:
    size: int
    batch_size: int

    def __post_init__(self) -> None:
        _check(
            self.size >= 32,
            "image.size",
            f"is {self.size}; use at least 32 (VGG16's smallest input)",
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
class BaselineConfig:
    filters: tuple[int, ...]
    kernel_size: int
    padding: Padding
    dropout: float
    learning_rate: float
    epochs: int
    patience: int | None

    def __post_init__(self) -> None:
        _check(
            len(self.filters) >= 1,
            "baseline.filters",
            "is empty; list at least one filter count",
        )
        _check(
            all(f >= 1 for f in self.filters),
            "baseline.filters",
            f"is {list(self.filters)}; use counts >= 1",
        )
        _at_least(self.kernel_size, "baseline.kernel_size")
        _fraction(self.dropout, "baseline.dropout")
        _schedule("baseline", self.learning_rate, self.epochs, self.patience)


@dataclass(frozen=True)
class FeaturesConfig:
    base: Base
    weights: str

    def __post_init__(self) -> None:
        _check(
            bool(self.weights),
            "features.weights",
            "is empty; use imagenet, none or the path of a weights file",
        )
        if self.weights not in ("imagenet", "none"):
            # extract_features depends on the folder in dvc.yaml: a file elsewhere could change unseen.
            inside = Path(self.weights).resolve().is_relative_to(paths.WEIGHTS_DIR.resolve())
            _check(
                inside,
                "features.weights",
                f"is {self.weights}, outside {paths.WEIGHTS_DIR}/; copy the file there, so DVC re-runs "
                "extract_features when it changes",
            )


@dataclass(frozen=True)
class HeadConfig:
    normalize: bool
    units: int
    dropout: float
    learning_rate: float
    batch_size: int
    epochs: int
    patience: int | None

    def __post_init__(self) -> None:
        _at_least(self.units, "head.units")
        _fraction(self.dropout, "head.dropout")
        _at_least(self.batch_size, "head.batch_size")
        _schedule("head", self.learning_rate, self.epochs, self.patience)


@dataclass(frozen=True)
class FrozenConfig:
    """The frozen-base model: its own head (built as ``head:``'s, so a head sweep does not retrain it), its schedule."""

    normalize: bool
    units: int
    dropout: float
    learning_rate: float
    epochs: int
    patience: int | None

    def __post_init__(self) -> None:
        _at_least(self.units, "frozen.units")
        _fraction(self.dropout, "frozen.dropout")
        _schedule("frozen", self.learning_rate, self.epochs, self.patience)


@dataclass(frozen=True)
class FinetuneConfig:
    unfreeze: str
    cache_frozen: bool
    learning_rate: float
    epochs: int
    patience: int | None

    def __post_init__(self) -> None:
        _check(
            bool(self.unfreeze),
            "finetune.unfreeze",
            "is empty; use top (the base's last block) or layer-name prefixes, e.g. block4,block5",
        )
        _schedule("finetune", self.learning_rate, self.epochs, self.patience)


@dataclass(frozen=True)
class EvaluateConfig:
    threshold: float
    gallery_size: int
    bootstrap: int

    def __post_init__(self) -> None:
        _check(0.0 < self.threshold < 1.0, "evaluate.threshold", f"is {self.threshold}; use a number between 0 and 1")
        _check(self.gallery_size >= 0, "evaluate.gallery_size", f"is {self.gallery_size}; use 0 or more")
        _check(self.bootstrap >= 0, "evaluate.bootstrap", f"is {self.bootstrap}; use 0 (no interval) or more")


@dataclass(frozen=True)
class TrainConfig:
    """How the training stages run, not what they learn: the knobs that matter on a GPU."""

    precision: Precision
    jit_compile: bool
    deterministic: bool
    strategy: Strategy
    cluster_timeout: float

    def __post_init__(self) -> None:
        _positive(self.cluster_timeout, "train.cluster_timeout")


@dataclass(frozen=True)
class DigitsDataConfig:
    source: DigitsSource
    files: str
    offline_per_class: int
    validation: int

    def __post_init__(self) -> None:
        # dvc.yaml declares digits.data.files as digits_data's dependency, so it is always a path DVC can hash.
        _check(
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
class DigitsConfig:
    data: DigitsDataConfig
    network: DigitsNetwork
    dropout: float
    augment: DigitsAugmentConfig
    optimizer: Optimizer
    learning_rate: float
    schedule: Schedule
    batch_size: int
    epochs: int
    patience: int | None
    gallery_size: int

    def __post_init__(self) -> None:
        _fraction(self.dropout, "digits.dropout")
        _at_least(self.batch_size, "digits.batch_size")
        _schedule("digits", self.learning_rate, self.epochs, self.patience)
        _check(self.gallery_size >= 0, "digits.gallery_size", f"is {self.gallery_size}; use 0 or more")


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
    try:
        raw = YAML(typ="safe", pure=True).load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run the stage from the repository root") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read it ({getattr(error, 'strerror', None) or error})") from None
    except YAMLError as error:
        raise ConfigError(f"{path}: {yaml_problem(error)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be params; write its values out") from None
    except ValueError as error:  # ruamel's int() of a number past Python's 4,300 digits, and the like
        raise ConfigError(f"{path}: cannot read a value ({shown(str(error))}); no param needs that, fix it") from None
    if _count_values(raw) > MAX_YAML_VALUES:
        raise ConfigError(
            f"{path}: holds more than {MAX_YAML_VALUES:,} values once its YAML aliases (*name) are expanded; "
            "write the values out instead of aliasing aliases"
        )
    try:
        for dotted, value in (overrides or {}).items():
            *parents, leaf = dotted.split(".")
            node = raw
            for key in parents:
                node = node.get(key) if isinstance(node, dict) else None
            if not isinstance(node, dict) or leaf not in node:
                raise ConfigError(f"unknown key {dotted}; remove it or fix its spelling")
            node[leaf] = value
        return parse(Params, raw)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def yaml_problem(error: YAMLError) -> str:
    """What ruamel says is wrong, and where, in one line."""
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    # ruamel's own wording ("found duplicate key", "expected ',' or ']'"), without its multi-line context.
    said = " ".join(str(getattr(error, "problem", None) or error).split())
    return f"not valid YAML{where}: {said}; fix it"


def parse(cls: type, raw: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from plain YAML data, checking keys and types field by field."""
    where = prefix or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted((key for key in raw if key not in fields), key=str)  # YAML keys may be numbers too
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(f"unknown key {key}; remove it or fix its spelling (known here: {', '.join(fields)})")
    values = {}
    for name in fields:
        key = f"{prefix}.{name}" if prefix else name
        if name not in raw:
            raise ConfigError(f"missing key {key}; add it (docs/params.md lists every key)")
        values[name] = _coerce(hints[name], raw[name], key)
    return cls(**values)


LARGEST_INT = 2**63  # no count, size or seed comes near; a longer one would only be slow to print
SHOWN_CHARACTERS = 60  # of a value in an error line
MAX_YAML_VALUES = 100_000  # params.yaml holds about 150; YAML aliases can make a small file hold billions


class _Shown(reprlib.Repr):
    """``repr`` cut short: a value in an error line stays short whatever the user wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxdict, self.maxlist = 2, 4, 4
        self.maxstring = self.maxother = SHOWN_CHARACTERS

    def repr_int(self, value: int, level: int) -> str:
        digits = round(value.bit_length() * math.log10(2))
        if digits > 1000:  # str() of a 5,000-digit int raises ValueError, and its digits say nothing useful
            return f"a number of about {digits:,} digits"
        return repr(value)


def shown(value: Any) -> str:
    """``value`` as an error line shows it: at most a few dozen characters, however large it is."""
    text = _Shown().repr(value)
    return text if len(text) <= SHOWN_CHARACTERS else text[: SHOWN_CHARACTERS - 3] + "..."


def _count_values(raw: Any, budget: int = MAX_YAML_VALUES) -> int:
    """How many values ``raw`` holds, counting each alias where it is used; stops past ``budget``."""
    stack, seen = [raw], 0
    while stack and seen <= budget:
        node = stack.pop()
        seen += 1
        if isinstance(node, dict):
            stack += [*node.keys(), *node.values()]
        elif isinstance(node, list):
            stack += node
    return seen


def _coerce(kind: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        return parse(kind, value, key)
    if origin is Literal:
        choices = typing.get_args(kind)
        _check(
            value in choices,
            key,
            f"is {shown(value)}; use one of {', '.join(map(str, choices))}",
        )
        return value
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _coerce(inner, value, key)
    if origin is tuple:
        (item, _) = typing.get_args(kind)
        _check(isinstance(value, list), key, f"is {shown(value)}; use a list, e.g. [32, 64]")
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if kind is float:
        # ruamel reads 1e-05 as a float already; a quoted number is still a user's obvious intent.
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        _check(
            isinstance(value, int | float) and not isinstance(value, bool),
            key,
            f"is {shown(value)}; use a number",
        )
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range
            number = math.inf
        _check(math.isfinite(number), key, f"is {shown(value)}; use a finite number")
        return number
    if kind is bool:
        _check(isinstance(value, bool), key, f"is {shown(value)}; use true or false")
        return value
    if kind is int:
        _check(
            isinstance(value, int) and not isinstance(value, bool),
            key,
            f"is {shown(value)}; use a whole number",
        )
        _check(abs(value) < LARGEST_INT, key, f"is {shown(value)}; use a whole number below 2**63")
        return value
    if kind is str:
        _check(isinstance(value, str), key, f"is {shown(value)}; use a string")
        return value
    raise TypeError(f"unsupported field type {kind!r} for {key}")
