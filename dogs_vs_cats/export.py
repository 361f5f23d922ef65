"""Models that leave the pipeline: a TensorFlow SavedModel (what TF Serving loads) and TFLite files.

A SavedModel from ``model.export()`` serves raw pixels, as the ``.keras`` file takes them: the preprocessing
is inside the model. TFLite is converted from that SavedModel with built-in ops only, so any TFLite runtime
runs it; in float32, and with its weights stored in float16 (half the size; computed in float32 again,
which changes the outputs a little, measured on the test split by ``stages.export``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from dogs_vs_cats.models import built_under

SAVED_MODEL = "saved_model"  # folder names inside one model's export folder
TFLITE = "model.tflite"
TFLITE_FLOAT16 = "model_float16.tflite"
CARD = "MODEL_CARD.md"


def in_float32(model: keras.Model) -> keras.Model:
    """``model`` computing in float32: a model trained under mixed precision, rebuilt layer by layer with its
    weights, so that the exported files do not carry bfloat16 or float16 operations a runtime may lack."""
    if model.dtype_policy.name == "float32":
        return model
    with built_under("float32"):
        clone = keras.models.clone_model(
            model,
            clone_function=lambda layer: layer.__class__.from_config({**layer.get_config(), "dtype": "float32"}),
            recursive=True,
        )
    clone.set_weights(model.get_weights())
    return clone


def saved_model(model: keras.Model, folder: Path) -> None:
    """A SavedModel of ``model`` in ``folder``, its ``serve`` signature taking a batch of what the model takes.

    The endpoint calls the model with ``training=False`` itself: ``model.export()``'s default one leaves
    ``training`` unset, and Keras 3's random augmentation layers default it to True, so the exported model
    would flip, rotate and zoom every image it serves and apply dropout (a random answer each call).
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="inputs")],
    )
    archive.write_out(str(folder), verbose=False)


def tflite(saved: Path, float16: bool = False) -> bytes:
    """The SavedModel in ``saved`` as a TFLite flatbuffer of built-in ops; ``float16`` stores its weights so."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if float16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


class LiteModel:
    """A TFLite flatbuffer to run on batches of any size, one input and one output."""

    def __init__(self, flatbuffer: bytes) -> None:
        with warnings.catch_warnings():  # tf.lite.Interpreter warns it will move to the ai-edge-litert package
            warnings.simplefilter("ignore")
            self.interpreter = tf.lite.Interpreter(model_content=flatbuffer)
        (self.input,) = self.interpreter.get_input_details()
        (self.output,) = self.interpreter.get_output_details()
        self.shape: tuple[int, ...] | None = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape != self.shape:
            self.interpreter.resize_tensor_input(self.input["index"], batch.shape)
            self.interpreter.allocate_tensors()
            self.shape = batch.shape
        self.interpreter.set_tensor(self.input["index"], batch.astype(self.input["dtype"]))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"]).copy()


def load_saved_model(folder: Path):
    """The SavedModel in ``folder``; call its ``serve``, as TF Serving would, while it is referenced (TensorFlow
    deletes the variables of a loaded object nobody holds)."""
    return tf.saved_model.load(str(folder))
