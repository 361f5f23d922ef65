"""Stage ``export``: the fine-tuned cat/dog model or a digits model out of the pipeline, one model a run
(``python -m stages.export cats_dogs``, ``mnist`` or ``fashion_mnist``: dvc.yaml's ``foreach``).

Under ``models/export/<name>/``: a TensorFlow SavedModel (``saved_model/``, what TF Serving
loads, taking raw pixels: the preprocessing is inside), TFLite in float32 (``model.tflite``) and with float16
weights (``model_float16.tflite``). On the model's test split it checks that the SavedModel and the float32
TFLite compute the Keras model's outputs (within ``TOLERANCE``, else it stops), and keeps the trained model's and
the float16 file's outputs in ``data/export_outputs/<name>.npz``, from which ``model_cards`` writes each model's
card and ``metrics/export.json`` at ``evaluate.threshold``: a threshold sweep never exports again.
"""

from __future__ import annotations

from runtime.program import chosen_name, run, start_program

start_program(__name__)  # first: the imports below take seconds (TensorFlow's), and Ctrl-C during them ends in one line

import contextlib
import errno
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from dogs_vs_cats import export, paths
from dogs_vs_cats.classes import CATS_DOGS, EXPORTED, outputs_of
from dogs_vs_cats.datasets import image_dataset
from dogs_vs_cats.digits_io import SIDE, load_split
from dogs_vs_cats.digits_model import batches
from dogs_vs_cats.exported import Outputs, largest_difference
from dogs_vs_cats.models import load_saved
from runtime.errors import PipelineError
from runtime.files import atomic_paths

TOLERANCE = 1e-4  # the largest difference from the Keras model's output an exported float32 model may have
FLOAT16_TOLERANCE = 0.05  # the same for the file with float16 weights, on a probability from 0 to 1
# Test images a batch while the files are checked: prediction only, so any image size fits; not a param, so that
# no setting of the training stages re-runs an export whose model did not change.
CHECK_BATCH = 32


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


def export_one(trained: keras.Model, test, files: paths.ExportFiles) -> Outputs:
    """Write ``trained``'s SavedModel and TFLite ``files`` and check them on ``test`` batches.

    The files are made from a float32 rebuild of the model. They must compute what that rebuild computes
    (within ``TOLERANCE``, float16 weights within ``FLOAT16_TOLERANCE``), and what is kept is their
    difference from ``trained`` itself, the model whose accuracy evaluate measured: under a mixed precision
    policy the two differ by the rounding float32 does not do.
    """
    model = export.in_float32(trained)
    export.saved_model(model, files.saved_model)
    flatbuffers = {float16: export.tflite(files.saved_model, float16) for float16 in (False, True)}
    files.tflite.write_bytes(flatbuffers[False])
    files.tflite_float16.write_bytes(flatbuffers[True])
    served = export.load_saved_model(files.saved_model)
    predictors = {
        "trained": trained.predict_on_batch,
        "keras": model.predict_on_batch,
        "saved_model": served.serve,
        "tflite": export.LiteModel(flatbuffers[False]),
        "float16": export.LiteModel(flatbuffers[True]),
    }
    out, truth = outputs_on(predictors, test)
    if not np.isfinite(out["trained"]).all():
        raise PipelineError(
            f"{files.saved_model.parent}: the model's outputs on its test split are not all finite; train it again"
        )
    for name, tolerance in (("saved_model", TOLERANCE), ("tflite", TOLERANCE), ("float16", FLOAT16_TOLERANCE)):
        difference = largest_difference(out[name], out["keras"])
        if not difference <= tolerance:  # NaN fails too
            raise PipelineError(
                f"{files.saved_model.parent}: the exported {name} outputs differ from the Keras model's by "
                f"{difference:.2g} (more than {tolerance}); report it with the model's layers"
            )
    return Outputs(
        labels=truth,
        trained=out["trained"],
        float16=out["float16"],
        float32_max_abs_difference=max(
            largest_difference(out[name], out["trained"]) for name in ("saved_model", "tflite")
        ),
        float32_bytes=len(flatbuffers[False]),
        float16_bytes=len(flatbuffers[True]),
    )


@contextlib.contextmanager
def disk_space_named(target: Path, again: str) -> Iterator[None]:
    """A full disk while writing ``target`` is one line ending in ``again``: TensorFlow's SavedModel writer says so
    in a ``ResourceExhaustedError`` of forty lines, Python in an ``OSError``."""
    try:
        yield
    except (OSError, tf.errors.ResourceExhaustedError) as error:
        if getattr(error, "errno", None) != errno.ENOSPC and "No space left" not in str(error):
            raise
        raise PipelineError(f"{target}: no space left on the device; free some, then {again}") from None


def trained_and_tested(name: str) -> tuple[keras.Model, Iterable]:
    """The model ``name`` and its test split in batches, checked to belong together before any work."""
    path = paths.FINETUNED_MODEL if name == CATS_DOGS else paths.digits_model(name)
    model = load_saved(path)
    shape = model.input_shape[1:]
    takes = (
        len(shape) == 3 and shape[0] == shape[1] and shape[2] == 3 if name == CATS_DOGS else shape == (SIDE, SIDE, 1)
    )
    if not takes or model.output_shape[1:] != (outputs_of(name),):
        trained_by = "finetune" if name == CATS_DOGS else f"digits_train@{name}"
        raise PipelineError(
            f"{path}: takes {shape} and gives {model.output_shape[1:]}, not what the {name} model takes and gives; "
            f"run dvc repro -f -s {trained_by}"
        )
    if name == CATS_DOGS:
        if not any(file.is_file() for file in (paths.SAMPLE_DIR / "test").rglob("*")):
            raise PipelineError(f"{paths.SAMPLE_DIR / 'test'}: no test images; run dvc repro -f -s sample")
        return model, image_dataset("test", shape[0], CHECK_BATCH)
    return model, batches(load_split(name, "test"), CHECK_BATCH)


def main() -> None:
    name = chosen_name(sys.argv[1:], EXPORTED, "stages.export")
    model, test = trained_and_tested(name)
    # Every file is written aside and takes its place once all are checked: a failure or a kill leaves no export
    # half made.
    files = paths.export_files(paths.export_folder(name))
    with (
        disk_space_named(paths.export_folder(name), f"run dvc repro -f -s export@{name}"),
        atomic_paths([*files, paths.export_outputs(name)], replace=True) as staged,
    ):
        kept = export_one(model, test, paths.ExportFiles(*staged[: len(files)]))
        kept.save(staged[-1])
    print(f"export: {name}: outputs within {kept.float32_max_abs_difference:.1g} of the trained model's")


if __name__ == "__main__":
    run(main)
