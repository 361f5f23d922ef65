"""What each layer of a model costs: parameters, multiply-adds (MACs) and activation memory per image.

MACs count the multiplications of convolutions (plain, depthwise, separable) and dense layers, where
nearly all the arithmetic of these networks is; pooling, normalization, activations and additions count
as 0. Nested models (a pretrained base inside the fine-tuned model) are opened layer by layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import keras
import numpy as np


@dataclass(frozen=True)
class LayerCost:
    name: str
    kind: str
    output_shape: tuple[int, ...]  # one image's, without the batch axis
    trainable: int
    frozen: int
    macs: int
    activation_bytes: int  # one image's output


def _count(weights: list) -> int:
    return int(sum(math.prod(w.shape) for w in weights))


def _shape(tensor) -> tuple[int, ...]:
    return tuple(int(d) for d in tensor.shape[1:])


def takes_images(model: keras.Model) -> bool:
    """True for a model fed raw RGB images (baseline, fine-tuned), False for one fed features (the head)."""
    shape = model.input_shape
    return len(shape) == 4 and shape[-1] == 3


def macs(layer: keras.layers.Layer) -> int:
    """Multiply-adds per image of one layer (0 for the layers that do no multiplications worth counting)."""
    out = _shape(layer.output)
    positions = math.prod(out[:-1])
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return positions * out[-1] * math.prod(layer.kernel_size)
    if isinstance(layer, keras.layers.SeparableConv2D):
        channels_in = _shape(layer.input)[-1]
        depthwise = positions * channels_in * layer.depth_multiplier * math.prod(layer.kernel_size)
        return depthwise + positions * out[-1] * channels_in * layer.depth_multiplier
    if isinstance(layer, keras.layers.Conv2D):
        channels_in = _shape(layer.input)[-1] // layer.groups
        return positions * out[-1] * channels_in * math.prod(layer.kernel_size)
    if isinstance(layer, keras.layers.Dense):
        return positions * out[-1] * _shape(layer.input)[-1]
    return 0


def leaf_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Every layer of ``model`` that computes, in order: nested models opened, inputs left out."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from leaf_layers(layer)
        elif not isinstance(layer, keras.layers.InputLayer):
            yield layer


def precision_of(model: keras.Model) -> str:
    """The ``train.precision`` ``model`` computes in: its layers' mixed policy (the output layer stays float32
    under each), nested models included; a loaded model's own ``dtype_policy`` is the global policy's."""
    mixed = {layer.dtype_policy.name for layer in leaf_layers(model)} - {"float32"}
    return " and ".join(sorted(mixed)) or "float32"


def layer_costs(model: keras.Model) -> list[LayerCost]:
    """Every layer of ``model``, nested models opened, inputs left out."""
    costs = []
    for layer in leaf_layers(model):
        out = _shape(layer.output)
        itemsize = np.dtype(layer.compute_dtype or "float32").itemsize
        costs.append(
            LayerCost(
                name=layer.name,
                kind=type(layer).__name__,
                output_shape=out,
                trainable=_count(layer.trainable_weights),
                frozen=_count(layer.non_trainable_weights),
                macs=macs(layer),
                activation_bytes=math.prod(out) * itemsize,
            )
        )
    return costs


def totals(costs: list[LayerCost]) -> dict[str, float | int]:
    """Parameters, GMACs and activation memory per image of the whole model (``dogs_vs_cats.memory`` turns
    them into what training and prediction need)."""
    return {
        "params": sum(c.trainable + c.frozen for c in costs),
        "trainable": sum(c.trainable for c in costs),
        "frozen": sum(c.frozen for c in costs),
        "gmacs": sum(c.macs for c in costs) / 1e9,
        "activation_mb_per_image": sum(c.activation_bytes for c in costs) / 1e6,
    }
