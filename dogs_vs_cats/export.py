"""Models that leave the pipeline: a TensorFlow SavedModel (what TF Serving loads) and TFLite files.

A SavedModel from ``model.export()`` serves raw pixels, as the ``.keras`` file takes them: the preprocessing
is inside the model. TFLite is converted from that SavedModel with built-in ops only, so any TFLite runtime
runs it; in float32, and with its weights stored in float16 (half the size; computed in float32 again,
which changes the outputs a little, measured on the test split by ``stages.export``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import fingerprint_pb2

from dogs_vs_cats.models import built_under


def in_float32(model: keras.Model) -> keras.Model:
    """``model`` rebuilt from its config to compute in float32 throughout, with its weights and nothing else.

    Every dtype policy in the config, nested models' included (a loaded model's extractor and head keep the
    policy they were trained under, which ``clone_model`` does not reach), becomes float32, so the exported
    files carry no bfloat16 or float16 operation a runtime may lack. The rebuild has no optimizer: a SavedModel
    of the loaded model would store its optimizer's slots too (RMSprop's: every weight twice).
    """
    config = _float32_policies(keras.saving.serialize_keras_object(model))
    config.pop("compile_config", None)  # compiled, it would carry an optimizer
    with built_under("float32"):
        clone = keras.saving.deserialize_keras_object(config)
    clone.set_weights(model.get_weights())
    return clone


def _float32_policies(node: Any) -> Any:
    """A serialized Keras config with every dtype policy made float32."""
    if isinstance(node, dict):
        if node.get("class_name") == "DTypePolicy":
            return {**node, "config": {**node["config"], "name": "float32"}}
        return {key: _float32_policies(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_float32_policies(item) for item in node]
    return node


def saved_model(model: keras.Model, folder: Path) -> None:
    """A SavedModel of ``model`` in ``folder``, its ``serve`` signature taking a batch of what the model takes.

    The endpoint calls the model with ``training=False`` itself: ``model.export()``'s default one leaves
    ``training`` unset, and Keras 3's random augmentation layers default it to True, so the exported model
    would flip, rotate and zoom every image it serves and apply dropout (a random answer each call).

    Written with ``tf.saved_model.save`` over the model's weights alone, not Keras' ``ExportArchive``, which
    stores every weight twice (its Keras variables and their TensorFlow values) in an order that changes from
    run to run. Random layers' seed states are left out too: serving never draws from them, and the float32
    rebuild draws them afresh in each run. With the fingerprint's random ``uuid`` cleared, the same model gives the
    same bytes, so ``dvc repro`` shows export unchanged when nothing changed.
    """
    module = tf.Module()
    module.variables_in_model_order = [variable.value for variable in model.weights]
    module.serve = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="inputs")],
    )
    tf.saved_model.save(module, str(folder), signatures={"serve": module.serve})
    fingerprint = folder / "fingerprint.pb"
    proto = fingerprint_pb2.FingerprintDef.FromString(fingerprint.read_bytes())
    proto.ClearField("uuid")
    fingerprint.write_bytes(proto.SerializeToString(deterministic=True))


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
            # TFLite's built-in kernels without the XNNPACK delegate, whose creation prints an INFO line to
            # stderr that no log level silences; the file is the same, and any runtime may delegate it.
            self.interpreter = tf.lite.Interpreter(
                model_content=flatbuffer,
                experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            )
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
