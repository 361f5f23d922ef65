"""Where a model looks: Grad-CAM class-activation heatmaps (Chollet, *Deep Learning with Python*, ch. 9).

The heatmap of an image is the last feature map of the model (the output of its last layer with a 4-D
output: the baseline's last pooling layer, the pretrained base inside the fine-tuned model, for any base),
channels weighted by the mean gradient of the predicted class's score with respect to each, clipped at
0, scaled to [0, 1] and resized to the image. The score is P(dog) for an image called a dog and
1 - P(dog) for a cat, so the map shows the evidence for what the model said.
"""

from __future__ import annotations

import keras
import matplotlib
import numpy as np
import tensorflow as tf
from PIL import Image

from runtime.errors import PipelineError

OVERLAY_ALPHA = 0.45  # how much of the heatmap shows over the photo


def feature_map_layer(model: keras.Model) -> keras.layers.Layer:
    """The last layer of ``model`` (nested models count as one layer) whose output is 4-D."""
    candidates = [
        layer
        for layer in model.layers[1:]  # not the input
        if len(layer.output.shape) == 4 and not layer.name.startswith("augmentation")
    ]
    if not candidates:
        raise PipelineError(f"{model.name}: no layer with a 4-D output to explain; Grad-CAM needs a convnet")
    return candidates[-1]


def _probe(model: keras.Model, layer: keras.layers.Layer) -> keras.Model:
    """``model`` again, outputting ``layer``'s feature map as well as P(dog).

    Made by calling the top-level layers in turn (the pipeline's image models are chains of layers), because
    a nested model's ``output`` is the output of its own graph, not of its call inside ``model``.
    """
    inputs = keras.Input(model.input_shape[1:])
    x = features = inputs
    for current in model.layers[1:]:
        x = current(x)
        if current is layer:
            features = x
    return keras.Model(inputs, [features, x])


def heatmaps(model: keras.Model, pixels: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM heatmaps (N x H x W, in [0, 1], the images' size) of raw-pixel ``pixels`` (N x H x W x 3), and
    P(dog) of each image."""
    probe = _probe(model, feature_map_layer(model))
    images = tf.convert_to_tensor(pixels, dtype=tf.float32)
    with tf.GradientTape() as tape:
        features, dog = probe(images, training=False)
        dog = tf.reshape(tf.cast(dog, tf.float32), [-1])
        said_dog = tf.cast(dog >= threshold, tf.float32)
        score = tf.reduce_sum(said_dog * dog + (1 - said_dog) * (1 - dog))  # each image's score is its own
    gradients = tf.cast(tape.gradient(score, features), tf.float32)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)  # one weight per channel and image
    maps = tf.nn.relu(tf.reduce_sum(weights * tf.cast(features, tf.float32), axis=-1)).numpy()
    peak = maps.max(axis=(1, 2), keepdims=True)
    maps = np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)
    size = pixels.shape[1:3]
    resized = tf.image.resize(maps[..., np.newaxis], size, method="bilinear").numpy()[..., 0]
    return np.clip(resized, 0.0, 1.0), dog.numpy()


def overlay(pixels: np.ndarray, heatmap: np.ndarray) -> Image.Image:
    """The image (raw 0-255 RGB pixels) with its heatmap over it in the jet colormap."""
    colors = matplotlib.colormaps["jet"](heatmap)[..., :3] * 255
    blended = (1 - OVERLAY_ALPHA) * np.clip(pixels, 0, 255) + OVERLAY_ALPHA * colors
    return Image.fromarray(blended.round().astype(np.uint8))


def overlay_on(photo: Image.Image, heatmap: np.ndarray) -> Image.Image:
    """``photo`` itself, at its own size and aspect, with ``heatmap`` (the model's square) stretched over it."""
    stretched = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F").resize(
        photo.size, Image.Resampling.BILINEAR
    )
    return overlay(np.asarray(photo.convert("RGB"), dtype=np.float32), np.clip(np.asarray(stretched), 0.0, 1.0))
