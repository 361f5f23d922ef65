"""``python -m stages.anatomy MODEL`` (or ``--base vgg16 --size 180``): what each layer of a model costs.

The course's arithmetic, for every layer: a 5x5 convolution with 200 filters on a 150x100 RGB image has
(5*5*3+1)*200 = 15,200 parameters, does 5*5*3*200*150*100 = 225 M multiply-adds per image, and outputs
200*150*100 values = 12 MB per image in float32 (1.2 GB for a batch of 100). Per layer it prints the
output shape, parameters (trainable / frozen), multiply-adds (MACs) per image and activation memory per
image and per batch; then the totals and an estimate of the memory training takes at that batch size.

MACs count the multiplications of convolutions (plain, depthwise, separable) and dense layers, where
nearly all the arithmetic of these networks is; pooling, normalization, activations and additions count
as 0. Nested models (a pretrained base inside the fine-tuned model) are opened layer by layer.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from stages.common import PipelineError, run
from stages.config import FeaturesConfig
from stages.models import BASES, build_extractor, load_saved

OPTIMIZER_SLOTS = 1  # RMSprop, the pipeline's optimizer, keeps one value per trainable weight


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


def layer_costs(model: keras.Model) -> list[LayerCost]:
    """Every layer of ``model``, nested models opened, inputs left out."""
    costs = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            costs += layer_costs(layer)
            continue
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


def totals(costs: list[LayerCost], batch_size: int) -> dict[str, float | int]:
    """Parameters, GMACs and memory of the whole model.

    Training memory is an estimate: float32 weights, their gradients and ``OPTIMIZER_SLOTS`` optimizer
    values for each trainable weight, plus every layer's output for the batch, kept for the backward pass.
    """
    trainable = sum(c.trainable for c in costs)
    frozen = sum(c.frozen for c in costs)
    activations = sum(c.activation_bytes for c in costs)
    weights = 4 * (trainable + frozen) + 4 * (1 + OPTIMIZER_SLOTS) * trainable
    return {
        "params": trainable + frozen,
        "trainable": trainable,
        "frozen": frozen,
        "gmacs": sum(c.macs for c in costs) / 1e9,
        "activation_mb_per_image": activations / 1e6,
        "training_memory_gb": (weights + batch_size * activations) / 1e9,
    }


def table(costs: list[LayerCost], batch_size: int) -> str:
    """The per-layer table and the totals, as ``python -m stages.anatomy`` prints them."""
    header = f"{'layer':<28}{'output':>18}{'trainable':>12}{'frozen':>11}{'MACs/image':>15}{'MB/image':>10}"
    lines = [header + f"{f'MB/{batch_size}':>11}"]
    for c in costs:
        shape = "x".join(map(str, c.output_shape))
        mb = c.activation_bytes / 1e6
        row = f"{c.name[:27]:<28}{shape:>18}{c.trainable:>12,}{c.frozen:>11,}{c.macs:>15,}"
        lines.append(row + f"{mb:>10.2f}{mb * batch_size:>11.1f}")
    total = totals(costs, batch_size)
    lines.append(
        f"total: {total['params']:,} parameters ({total['trainable']:,} trainable, {total['frozen']:,} frozen), "
        f"{total['gmacs']:.3f} GMACs and {total['activation_mb_per_image']:.1f} MB of activations per image; "
        f"training at batch {batch_size} needs about {total['training_memory_gb']:.2f} GB"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.anatomy", description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path, help="a .keras file the pipeline saved")
    parser.add_argument("--base", help="a pretrained base instead (vgg16, xception, resnet50, efficientnetv2b0)")
    parser.add_argument("--size", type=int, default=180, help="the base's input side in pixels (default 180)")
    parser.add_argument("--batch-size", type=int, default=32, help="for memory per batch (default 32)")
    args = parser.parse_args(argv)
    if (args.model is None) == (args.base is None):
        raise PipelineError("name a saved model (models/finetuned.keras) or --base NAME, not both")
    if args.batch_size < 1 or args.size < 32:
        raise PipelineError("--batch-size must be at least 1 and --size at least 32")
    if args.base:
        if args.base not in BASES:
            raise PipelineError(f"--base {args.base}: unknown; use one of {', '.join(BASES)}")
        model = build_extractor(args.size, FeaturesConfig(args.base, "none"))
    else:
        model = load_saved(args.model)
    print(table(layer_costs(model), args.batch_size))


if __name__ == "__main__":
    run(main)
