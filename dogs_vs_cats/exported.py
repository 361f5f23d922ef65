"""What ``export`` measured of each exported model on its test split, as ``model_cards`` reads it.

``export`` runs the trained model and its exported files over the test split, which takes TensorFlow and, on
real photos, minutes; it keeps the outputs here. ``model_cards`` scores them at ``evaluate.threshold`` without
TensorFlow, so a threshold sweep rewrites the cards in a second and never exports again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dogs_vs_cats.classes import predicted_labels
from runtime.errors import PipelineError
from runtime.files import npz_arrays


@dataclass(frozen=True)
class Outputs:
    """One model's outputs on its test split: the trained model's and its float16 TFLite file's."""

    labels: np.ndarray  # (N,) int
    trained: np.ndarray  # (N, 1) P(dog), or (N, 10) softmax: the model evaluate scored
    float16: np.ndarray  # the same from the TFLite file with float16 weights
    float32_max_abs_difference: float  # the SavedModel's and float32 TFLite's, from the trained model's
    float32_bytes: int  # the TFLite files' sizes
    float16_bytes: int

    def save(self, path: Path) -> None:
        """Write these outputs to ``path`` (a temporary file of ``atomic_path``'s: the caller makes it final)."""
        with open(path, "wb") as stream:
            np.savez(stream, **{name: np.asarray(getattr(self, name)) for name in FIELDS})

    @classmethod
    def load(cls, path: Path, outputs: int, test_images: int) -> Outputs:
        """The outputs ``export`` kept at ``path`` for a model of ``outputs`` outputs (1: P(dog), else softmax) on a
        test split of ``test_images`` images; a file missing, damaged, or of another model or split is one line."""
        again = f"run dvc repro -f -s export@{path.stem}"  # the file is named for its model
        arrays = dict(zip(FIELDS, npz_arrays(path, FIELDS, again), strict=True))
        labels, trained, float16 = arrays["labels"], arrays["trained"], arrays["float16"]
        sizes = [arrays[name] for name in ("float32_max_abs_difference", "float32_bytes", "float16_bytes")]
        shape, classes = (test_images, outputs), max(outputs, 2)
        if not (
            labels.shape == (test_images,)
            and labels.dtype.kind in "iu"
            and ((labels >= 0) & (labels < classes)).all()
            and all(
                array.shape == shape and array.dtype.kind == "f" and np.isfinite(array).all()
                for array in (trained, float16)
            )
            and all(size.shape == () and size.dtype.kind in "iuf" and np.isfinite(size) and size >= 0 for size in sizes)
        ):
            raise PipelineError(
                f"{path}: not the outputs of a model of {outputs} output(s) on the {test_images} test images scored; "
                f"{again}"
            )
        return cls(
            labels=labels.astype(int),
            trained=trained,
            float16=float16,
            float32_max_abs_difference=float(sizes[0]),
            float32_bytes=int(sizes[1]),
            float16_bytes=int(sizes[2]),
        )


FIELDS = tuple(Outputs.__dataclass_fields__)


@dataclass(frozen=True)
class Checked:
    """What a model card and ``metrics/export.json`` quote of one model's exported files."""

    test_images: int
    accuracy: float  # the trained model's, in the precision it was trained and evaluated in
    float32_max_abs_difference: float
    float16_max_abs_difference: float  # the float16 TFLite's, from the trained model's
    float16_accuracy: float
    float32_bytes: int
    float16_bytes: int


def largest_difference(outputs: np.ndarray, reference: np.ndarray) -> float:
    """The largest absolute difference; NaN when either holds a NaN (``max`` and ``>`` would let it pass)."""
    return float(np.max(np.abs(outputs - reference)))


def accuracy_of(outputs: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """Accuracy of sigmoid (N x 1, at ``threshold``) or softmax (N x 10) ``outputs``."""
    predicted = outputs.argmax(axis=1) if outputs.shape[1] > 1 else predicted_labels(outputs[:, 0], threshold)
    return float(np.mean(predicted == labels))


def score(outputs: Outputs, threshold: float) -> Checked:
    """``outputs`` scored at ``threshold`` (a sigmoid model's; softmax models take the largest output)."""
    return Checked(
        test_images=len(outputs.labels),
        accuracy=accuracy_of(outputs.trained, outputs.labels, threshold),
        float32_max_abs_difference=outputs.float32_max_abs_difference,
        float16_max_abs_difference=largest_difference(outputs.float16, outputs.trained),
        float16_accuracy=accuracy_of(outputs.float16, outputs.labels, threshold),
        float32_bytes=outputs.float32_bytes,
        float16_bytes=outputs.float16_bytes,
    )
