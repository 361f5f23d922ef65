"""``python -m tools.bench`` (``make bench``): how fast each step runs on this machine, against the book's way
and under each precision, and how near that is to what the machine can do.

At the configured ``image.side``, ``image.batch_size`` and ``train.precision``, on generated images and random
weights, it times four steps the pipeline's way and the book's way in alternating pairs (ours, book, ours,
book... after a warm-up), and prints the median images/s of each, the median ratio of the pairs and its range,
and says "not distinguishable" when the range holds 1; the load average at the start and the end says whether
the machine was quiet. The steps: JPEG decode and resize (``tf.data`` against ``load_img`` per file),
extraction with ``features.base`` (streamed to disk batch by batch, as ``extract_features`` does, against the
same base's ``conv_base.predict(preprocess_input(batch))`` per batch), a baseline training step and a
fine-tuning step (``fit`` against ``train_on_batch`` per batch). The book decodes and resizes the JPEGs on
every pass; the pipeline's training steps decode them once, as its training stages do.

Then it times the three heavy steps ours under every precision this machine can run (float32 and
mixed_bfloat16; mixed_float16 too on a GPU) in rounds, with each one's ratio to float32, and a square matmul in
each precision's compute dtype: each step's achieved GFLOP/s is printed as a fraction of that rate, the limit.
It recommends the precision, done in silicon here (CPU flags amx_bf16 or avx512_bf16, a GPU's compute
capability), that makes the estimated ``make repro`` shortest, and prints the estimate at ``train.precision``
and at that one. It never changes params.yaml. It writes ``bench.json``: machine noise, never a DVC metric.
"""

from __future__ import annotations

from runtime.program import run, start_program

start_program(__name__)  # first: the imports below take seconds (TensorFlow's), and Ctrl-C during them ends in one line

import argparse
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from dogs_vs_cats.augmentation import augmentation
from dogs_vs_cats.classes import CLASS_NAMES
from dogs_vs_cats.config import FeaturesConfig, HeadConfig, Params, load_params
from dogs_vs_cats.costs import layer_costs
from dogs_vs_cats.datasets import extract_split, image_dataset
from dogs_vs_cats.models import (
    BASES,
    build_baseline,
    build_extractor,
    build_finetuned,
    build_head,
    built_under,
    unfreeze,
)
from dogs_vs_cats.synthetic import draw_animal
from dogs_vs_cats.training import compile_binary, seed_everything, set_precision
from runtime.errors import PipelineError
from runtime.files import atomic_path, output_file
from tools import scenarios
from tools.estimate import epoch_seconds, estimate_repro, ours_rates, rates_under, recommend, split_images
from tools.hardware import COMPUTE_DTYPE, detect_hardware
from tools.timing import (
    PAIRS,
    PrecisionTiming,
    Step,
    Timing,
    compare,
    matmul_rates,
    precision_timings,
)

BENCH_FILE = Path("bench.json")
# Each base's own preprocess_input, as the book calls it before conv_base.predict.
BOOK_PREPROCESS = {
    "vgg16": keras.applications.vgg16.preprocess_input,
    "xception": keras.applications.xception.preprocess_input,
    "resnet50": keras.applications.resnet50.preprocess_input,
    "efficientnetv2b0": keras.applications.efficientnet_v2.preprocess_input,  # the identity: it rescales inside
}
QUICK_PAIRS = 2  # --quick: the short form, for a first look
BILINEAR = "bilinear"  # as image_dataset_from_directory resizes: the same work both ways
MATMUL_SIDE = 4096  # square matrices: 137 GFLOP a product, large enough for oneDNN to reach its peak
QUICK_MATMUL_SIDE = 1024


def write_images(folder: Path, count: int, size: int, seed: int) -> list[Path]:
    """``count`` generated JPEGs, half cats and half dogs, laid out as ``sample`` does: ``train/{cat,dog}/``."""
    files = []
    for index in range(count):
        label = CLASS_NAMES[index % 2]
        file = folder / "train" / label / f"{label}.{index}.jpg"
        file.parent.mkdir(parents=True, exist_ok=True)
        draw_animal(label, size, np.random.default_rng([seed, index])).save(file, quality=90)
        files.append(file)
    return files


def book_batches(files: list[Path], size: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The book's input: ``load_img`` and ``img_to_array`` per file, stacked into batches, labels from folders."""
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        pixels = np.stack(
            [
                keras.utils.img_to_array(keras.utils.load_img(f, target_size=(size, size), interpolation=BILINEAR))
                for f in chunk
            ]
        )
        yield pixels, np.array([CLASS_NAMES.index(f.parent.name) for f in chunk], dtype="float32")


def forward_flops(model: keras.Model) -> float:
    """FLOPs of one image through ``model`` forward: two per multiply-add (``costs.macs``)."""
    return 2.0 * sum(cost.macs for cost in layer_costs(model))


def train_flops(model: keras.Model) -> float:
    """FLOPs of one image in a training step: the forward pass, then backward from the first trainable layer up,
    each layer at twice its forward (the gradients of its input and of its weights). An estimate, as the
    convolutions and dense layers are nearly all of the arithmetic."""
    costs = [(cost.macs, cost.trainable > 0) for cost in layer_costs(model)]
    first = next((i for i, (_, trainable) in enumerate(costs) if trainable), len(costs))
    return 2.0 * (sum(m for m, _ in costs) + 2 * sum(m for m, _ in costs[first:]))


def _plain_head(cfg: HeadConfig) -> HeadConfig:
    """The head without standardization, which needs training features the bench does not have."""
    return HeadConfig(**{**asdict(cfg), "normalize": False})


def pipeline_steps(
    params: Params, dataset: tf.data.Dataset, decoded_once: tf.data.Dataset, features: Path
) -> dict[str, Step]:
    """The heavy steps the pipeline's way, their models built under the global policy in force: extraction with
    ``features.base`` streamed to ``features`` batch by batch as ``extract_features`` does, and one epoch of
    ``fit`` of the baseline and of fine-tuning on ``decoded_once``, as the training stages do."""
    size = params.image.side
    extractor = build_extractor(size, FeaturesConfig(params.features.base, "none"))
    baseline = build_baseline(size, params.baseline, augmentation(params.augment, params.seed))
    compile_binary(baseline, params.baseline.learning_rate, params.train.jit_compile)
    finetuned = build_finetuned(
        extractor,
        build_head(extractor.output_shape[1:], _plain_head(params.head)),
        augmentation(params.augment, params.seed),
    )
    unfreeze(extractor, params.finetune.unfreeze)
    compile_binary(finetuned, params.finetune.learning_rate, params.train.jit_compile)

    def one_epoch(model: keras.Model) -> Callable[[], object]:
        # The dataset is not shuffled: nor is fit.
        return lambda: model.fit(decoded_once, epochs=1, verbose=0, shuffle=False)

    return {
        "extract_features": Step(
            extractor,
            lambda: extract_split(extractor, dataset, features, show_progress=False),
            forward_flops(extractor),
        ),
        "baseline_step": Step(baseline, one_epoch(baseline), train_flops(baseline)),
        "finetune_step": Step(finetuned, one_epoch(finetuned), train_flops(finetuned)),
    }


def measure(
    params: Params, count: int, pairs: int, matmul: dict[str, float]
) -> tuple[list[Timing], list[PrecisionTiming]]:
    """Time every step ours and the book's way at ``train.precision``, and the heavy steps ours under each
    precision of ``matmul`` (its rates by policy) in rounds, ``pairs`` times, on ``count`` generated images at the
    configured size."""
    size, batch_size = params.image.side, params.image.batch_size
    seed_everything(params.seed, params.train.deterministic)
    set_precision(params.train)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        files = write_images(Path(tmp), count, size, params.seed)
        dataset = image_dataset("train", size, batch_size, root=Path(tmp))
        decoded_once = image_dataset("train", size, batch_size, root=Path(tmp), decode_once=True)
        features = Path(tmp) / "features.npz"

        def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            return book_batches(files, size, batch_size)  # decoded afresh on every pass, as tf.data does

        ours = pipeline_steps(params, dataset, decoded_once, features)
        # The book's twin of the same base: the bare keras.applications network and its module's preprocess_input;
        # the book's training steps: train_on_batch per batch on the same compiled models.
        conv_base = BASES[params.features.base].build(include_top=False, weights=None, input_shape=(size, size, 3))
        preprocess = BOOK_PREPROCESS[params.features.base]

        def train_on_batches(model: keras.Model) -> Callable[[], object]:
            return lambda: [model.train_on_batch(x, y) for x, y in batches()]

        book = {
            "extract_features": lambda: [conv_base.predict(preprocess(x), verbose=0) for x, _ in batches()],
            "baseline_step": train_on_batches(ours["baseline_step"].model),
            "finetune_step": train_on_batches(ours["finetune_step"].model),
        }
        timings = [compare("decode_resize", count, lambda: [None for _ in dataset], lambda: list(batches()), pairs)]
        timings += [compare(step, count, ours[step].work, book[step], pairs) for step in ours]

        precisions = list(matmul)
        built = {params.train.precision: ours}
        for precision in precisions:
            if precision not in built:
                with built_under(precision):
                    built[precision] = pipeline_steps(params, dataset, decoded_once, features)
        by_precision = [
            timing
            for step in ours
            for timing in precision_timings(
                step, count, {precision: built[precision][step] for precision in precisions}, pairs, matmul
            )
        ]
    return timings, by_precision


def load_line(when: str, load: float, cores: int) -> str:
    """The load average at ``when``, with a warning when it is above the cores: then the figures are not a quiet
    machine's."""
    line = f"load average at the {when}: {load:.2f} ({cores} cores)"
    return line + ("; warning: the machine is busy, so these figures are not a quiet machine's" if load > cores else "")


def report(timings: list[Timing], params: Params) -> str:
    """Ours against the book's way: median rates, the median ratio of the pairs, its range, what it says."""
    header = f"{'step':<18}{'images':>7}{'ours img/s':>12}{'book img/s':>12}{'ratio':>7}  {'range':<13} verdict"
    lines = [header]
    for t in timings:
        span = f"{t.low:.2f}-{t.high:.2f}"
        lines.append(f"{t.step:<18}{t.images:>7}{t.ours:>12.2f}{t.book:>12.2f}{t.ratio:>7.2f}  {span:<13} {t.verdict}")
    pairs = timings[0].pairs if timings else 0
    lines.append(f"(at train.precision {params.train.precision}; median of {pairs} alternating pairs after a warm-up; "
                 "range: the lowest and highest pair)")  # fmt: skip
    return "\n".join(lines)


def precision_report(by_precision: list[PrecisionTiming], matmul: dict[str, float], side: int) -> str:
    """The heavy steps ours under each precision: rate, ratio to float32 and its range, GFLOP/s, share of matmul's."""
    lines = [
        f"{'step':<18}{'precision':<16}{'img/s':>8}{'x float32':>10}  {'range':<11}{'GFLOP/s':>8}{'of matmul':>10}"
    ]
    for t in by_precision:
        span = f"{t.low:.2f}-{t.high:.2f}"
        lines.append(
            f"{t.step:<18}{t.precision:<16}{t.rate:>8.2f}{t.ratio:>10.2f}  {span:<11}{t.gflops:>8.1f}{t.fraction:>9.0%}"
        )
    rates = ", ".join(f"{p} ({COMPUTE_DTYPE[p]}) {gflops:.0f}" for p, gflops in matmul.items())
    lines.append(f"matmul {side}x{side}, GFLOP/s: {rates}")
    return "\n".join(lines)


def estimate_lines(params: Params, precision: str, rates: dict[str, float]) -> list[str]:
    """The estimated wall time of ``dvc repro``'s image stages at ``rates``, measured under ``precision``."""
    epochs, estimate = epoch_seconds(params, rates), estimate_repro(params, rates)
    counts = ", ".join(f"{n:,} {s}" for s, n in split_images(params).items())
    lines = [f"estimated dvc repro at {precision} ({counts} images): {sum(estimate.values()) / 3600:.1f} h"]
    for stage, seconds in estimate.items():
        each = f"  ({epochs[stage] / 60:.1f} min an epoch)" if stage in epochs else ""
        lines.append(f"  {stage:<18}{seconds / 60:>8.1f} min{each}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="generated images per step (default 64)")
    parser.add_argument("--pairs", type=int, default=PAIRS, help=f"timed pairs per step (default {PAIRS})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_PAIRS} pairs: a first look, not a verdict")
    parser.add_argument("--out", type=Path, default=BENCH_FILE, help=f"the timings' file, or a folder for {BENCH_FILE}")
    parser.add_argument("--force", action="store_true", help="replace the --out file if it exists")
    parser.add_argument("--scenario", help="estimate params.yaml with configs/SCENARIO.yaml applied, e.g. full")
    args = parser.parse_args()
    if args.images < 2:
        raise PipelineError(f"--images is {args.images}; use at least 2 (one cat, one dog)")
    pairs = QUICK_PAIRS if args.quick else args.pairs
    if pairs < 1:
        raise PipelineError(f"--pairs is {pairs}; use at least 1 (5 or more for a range that means something)")
    out = output_file(args.out, BENCH_FILE.name, force=args.force, option="--out")
    params = load_params(overrides=scenarios.load(args.scenario) if args.scenario else None)
    cores, start_load = os.cpu_count() or 1, os.getloadavg()[0]
    print(load_line("start", start_load, cores))
    hardware = detect_hardware()
    side = QUICK_MATMUL_SIDE if args.quick else MATMUL_SIDE
    matmul = matmul_rates(hardware.precisions(), side, pairs)
    timings, by_precision = measure(params, args.images, pairs, matmul)
    end_load = os.getloadavg()[0]
    recommended, why = recommend(by_precision, hardware, params)
    print(report(timings, params))
    print(precision_report(by_precision, matmul, side))
    print(f"recommended: train.precision {recommended} ({why}); params.yaml is left as it is")
    estimates = {params.train.precision: ours_rates(timings), recommended: rates_under(by_precision, recommended)}
    for precision, rates in estimates.items():
        print("\n".join(estimate_lines(params, precision, rates)))
    print(load_line("end", end_load, cores))
    result = {
        "image_size": params.image.side,
        "batch_size": params.image.batch_size,
        "precision": params.train.precision,
        "pairs": pairs,
        "load_average": {"start": round(start_load, 2), "end": round(end_load, 2), "cores": cores},
        "steps": {t.step: {**asdict(t), "verdict": t.verdict} for t in timings},
        "hardware": {"cpu_bf16": list(hardware.cpu_bf16), "gpu_compute_capability": hardware.gpu},
        "matmul_gflops": {"side": side, **{p: round(g, 1) for p, g in matmul.items()}},
        "precisions": [asdict(t) for t in by_precision],
        "recommended": recommended,
        "sample_per_class": params.sample.counts(),
        "epoch_seconds": {
            precision: {stage: round(s, 1) for stage, s in epoch_seconds(params, rates).items()}
            for precision, rates in estimates.items()
        },
        "estimated_repro_seconds": {
            precision: {stage: round(s, 1) for stage, s in estimate_repro(params, rates).items()}
            for precision, rates in estimates.items()
        },
    }
    with atomic_path(out, replace=args.force) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    run(main)
