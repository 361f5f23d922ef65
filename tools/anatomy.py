"""``python -m tools.anatomy MODEL`` (or ``--base vgg16 --size 180``): what each layer of a model costs.

The course's arithmetic, for every layer: a 5x5 convolution with 200 filters on a 150x100 RGB image has
(5*5*3+1)*200 = 15,200 parameters, does 5*5*3*200*150*100 = 225 M multiply-adds per image, and outputs
200*150*100 values = 12 MB per image in float32 (1.2 GB for a batch of 100). Per layer it prints the
output shape, parameters (trainable / frozen), multiply-adds (MACs) per image and activation memory per
image and per batch; then the totals, the memory training and prediction take at that batch size (the
estimate every training stage and ``predict`` check before they start, ``dogs_vs_cats.memory``) and the
memory this process can use.

The arithmetic is ``dogs_vs_cats.costs``, which ``evaluate`` records as each model's params and GMACs.
"""

from __future__ import annotations

from runtime.program import run, start_program

start_program(__name__)  # first: the imports below take seconds (TensorFlow's), and Ctrl-C during them ends in one line

import argparse
from pathlib import Path

import keras

from dogs_vs_cats.config import FeaturesConfig
from dogs_vs_cats.costs import layer_costs, precision_of, totals
from dogs_vs_cats.memory import GB, footprint, usable_memory
from dogs_vs_cats.models import BASES, build_extractor, load_saved, saved_optimizer
from runtime.errors import PipelineError


def table(model: keras.Model, batch_size: int, optimizer: str | None = None) -> str:
    """The per-layer table and the totals, as ``python -m tools.anatomy`` prints them; ``optimizer`` the class a
    saved model was trained with (``memory.footprint``)."""
    costs = layer_costs(model)
    header = f"{'layer':<28}{'output':>18}{'trainable':>12}{'frozen':>11}{'MACs/image':>15}{'MB/image':>10}"
    lines = [header + f"{f'MB/{batch_size}':>11}"]
    for c in costs:
        shape = "x".join(map(str, c.output_shape))
        mb = c.activation_bytes / 1e6
        row = f"{c.name[:27]:<28}{shape:>18}{c.trainable:>12,}{c.frozen:>11,}{c.macs:>15,}"
        lines.append(row + f"{mb:>10.2f}{mb * batch_size:>11.1f}")
    total = totals(costs)
    training, predicting = (
        footprint(model, training=mode, optimizer=optimizer).at(batch_size) for mode in (True, False)
    )
    usable = usable_memory()
    lines.append(
        f"total: {total['params']:,} parameters ({total['trainable']:,} trainable, {total['frozen']:,} frozen), "
        f"{total['gmacs']:.3f} GMACs and {total['activation_mb_per_image']:.1f} MB of activations per image "
        f"(computed in {precision_of(model)}); "
        f"at batch {batch_size} training needs about {training / GB:.2f} GB, predicting {predicting / GB:.2f} GB; "
        + (f"this process can use {usable.bytes / GB:.1f} GB ({usable.source})" if usable else "no memory limit known")
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.anatomy", description=__doc__.splitlines()[0])
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
        print(table(build_extractor(args.size, FeaturesConfig(args.base, "none")), args.batch_size))
    else:
        print(table(load_saved(args.model), args.batch_size, saved_optimizer(args.model)))


if __name__ == "__main__":
    run(main)
