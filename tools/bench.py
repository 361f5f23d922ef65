"""``python -m tools.bench`` (``make bench``): how fast each step runs on this machine, against the book's way.

At the configured ``image.size`` and ``image.batch_size``, on generated images and random weights, it
times four steps the pipeline's way and the book's way in alternating pairs (ours, book, ours, book...
after a warm-up), and prints the median images/s of each, the median ratio of the pairs and its range,
and says "not distinguishable" when the range holds 1; the load average at the start and the end says
whether the machine was quiet. The steps: JPEG decode and resize (``tf.data`` against ``load_img`` per
file), extraction with ``features.base`` (streamed to disk batch by batch, as ``extract_features`` does,
against the same base's ``conv_base.predict(preprocess_input(batch))`` per batch), a baseline training
step and a fine-tuning step (``fit`` against ``train_on_batch`` per batch). The book decodes and resizes
the JPEGs on every pass; the pipeline's training steps decode them once, as its training stages do. From
the pipeline's rates and the params it estimates the wall time of ``make repro``. It writes ``bench.json``: machine
noise, never a DVC metric.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from dogs_vs_cats.augmentation import augmentation
from dogs_vs_cats.classes import CLASS_NAMES
from dogs_vs_cats.common import PipelineError, atomic_path, output_file, run
from dogs_vs_cats.config import FeaturesConfig, HeadConfig, Params, load_params
from dogs_vs_cats.datasets import extract_split, image_dataset
from dogs_vs_cats.models import BASES, build_baseline, build_extractor, build_finetune, build_head, unfreeze
from dogs_vs_cats.synthetic import draw_animal
from dogs_vs_cats.training import compile_binary, seed_everything, set_precision
from tools import scenarios

BENCH_FILE = Path("bench.json")
# Each base's own preprocess_input, as the book calls it before conv_base.predict.
BOOK_PREPROCESS = {
    "vgg16": keras.applications.vgg16.preprocess_input,
    "xception": keras.applications.xception.preprocess_input,
    "resnet50": keras.applications.resnet50.preprocess_input,
    "efficientnetv2b0": keras.applications.efficientnet_v2.preprocess_input,  # the identity: it rescales inside
}
PAIRS = 5  # timed (ours, book) pairs per step after the warm-up: enough for a median and a range that mean something
QUICK_PAIRS = 2  # --quick: the short form, for a first look
BILINEAR = "bilinear"  # as image_dataset_from_directory resizes: the same work both ways
FORWARD_SPEEDUP = 3.0  # a forward pass costs about a third of a training step (the backward pass is ~2x)


@dataclass(frozen=True)
class Timing:
    """One step measured both ways in alternating pairs: median images per second of each way, and the
    ratio ours / book of each pair, summed up as its median and its range over the pairs."""

    step: str
    images: int
    ours: float
    book: float
    ratio: float
    low: float
    high: float
    pairs: int

    @property
    def distinguishable(self) -> bool:
        """Whether every pair says the same: all faster than the book's way, or all slower."""
        return not self.low <= 1.0 <= self.high

    @property
    def verdict(self) -> str:
        if not self.distinguishable:
            return "not distinguishable"
        return "faster" if self.ratio > 1 else "slower"


def summarize(step: str, images: int, ours_seconds: list[float], book_seconds: list[float]) -> Timing:
    """A Timing from the seconds of each timed pair (``ours_seconds[i]`` ran next to ``book_seconds[i]``)."""
    if not ours_seconds or len(ours_seconds) != len(book_seconds):
        raise ValueError("one book timing per timing of ours, at least one pair")
    ratios = [book / ours for ours, book in zip(ours_seconds, book_seconds, strict=True)]
    return Timing(
        step,
        images,
        ours=images / statistics.median(ours_seconds),
        book=images / statistics.median(book_seconds),
        ratio=statistics.median(ratios),
        low=min(ratios),
        high=max(ratios),
        pairs=len(ratios),
    )


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


def compare(
    step: str,
    images: int,
    ours: Callable[[], object],
    book: Callable[[], object],
    pairs: int = PAIRS,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Both ways of a step, each run once to warm up (tracing, caches), then ``pairs`` times in turns, ours then
    the book's (ABAB...), so a slow spell of the machine hits both alike and each pair's ratio compares like
    with like; see ``summarize``."""
    ours(), book()
    seconds: dict[Callable[[], object], list[float]] = {ours: [], book: []}
    for _ in range(pairs):
        for work in (ours, book):
            start = clock()
            work()
            seconds[work].append(clock() - start)
    return summarize(step, images, seconds[ours], seconds[book])


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


def measure(params: Params, count: int, pairs: int = PAIRS) -> list[Timing]:
    """Time every step both ways, ``pairs`` times, on ``count`` generated images at the configured size."""
    size, batch_size = params.image.size, params.image.batch_size
    seed_everything(params.seed, params.train.deterministic)
    set_precision(params.train)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        files = write_images(Path(tmp), count, size, params.seed)
        dataset = image_dataset("train", size, batch_size, shuffle=False, seed=0, root=Path(tmp))

        def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            return book_batches(files, size, batch_size)  # decoded afresh on every pass, as tf.data does

        timings = [
            compare(
                "decode_resize",
                count,
                lambda: [None for _ in dataset],
                lambda: list(batches()),
                pairs,
            )
        ]

        extractor = build_extractor(size, FeaturesConfig(params.features.base, "none"))
        # The book's twin of the same base: the bare keras.applications network and its module's preprocess_input.
        conv_base = BASES[params.features.base].build(include_top=False, weights=None, input_shape=(size, size, 3))
        preprocess = BOOK_PREPROCESS[params.features.base]
        timings.append(
            compare(
                "extract_features",
                count,
                lambda: extract_split(extractor, dataset, Path(tmp) / "features.npz"),
                lambda: [conv_base.predict(preprocess(x), verbose=0) for x, _ in batches()],
                pairs,
            )
        )

        baseline = build_baseline(size, params.baseline, augmentation(params.augment, params.seed))
        epochs = image_dataset("train", size, batch_size, shuffle=False, seed=0, root=Path(tmp), decode_once=True)
        timings.append(
            _training_step("baseline_step", baseline, params.baseline.learning_rate, params, epochs, batches, pairs)
        )

        head = build_head(extractor.output_shape[1:], _plain_head(params.head))
        finetuned = build_finetune(extractor, head, augmentation(params.augment, params.seed))
        unfreeze(extractor, params.finetune.unfreeze)
        timings.append(
            _training_step("finetune_step", finetuned, params.finetune.learning_rate, params, epochs, batches, pairs)
        )
    return timings


def _plain_head(cfg: HeadConfig) -> HeadConfig:
    """The head without standardization, which needs training features the bench does not have."""
    return HeadConfig(**{**asdict(cfg), "normalize": False})


def _training_step(
    step: str, model: keras.Model, learning_rate: float, params: Params, dataset, batches, pairs: int
) -> Timing:
    """One epoch of ``fit`` on the dataset against ``train_on_batch`` per batch, on the same compiled model."""
    compile_binary(model, learning_rate, params.train.jit_compile)
    return compare(
        step,
        len(dataset.file_paths),
        lambda: model.fit(dataset, epochs=1, verbose=0, shuffle=False),  # the dataset is not shuffled: nor is fit
        lambda: [model.train_on_batch(x, y) for x, y in batches()],
        pairs,
    )


# The image-training stages and the model each trains, as evaluate names it.
TRAINED = {"train_baseline": "baseline", "train_frozen": "frozen", "finetune": "finetuned"}


def _images(params: Params) -> dict[str, int]:
    """Images in each split (both classes) at these params."""
    return {split: 2 * n for split, n in params.sample.counts().items()}


def _rates(timings: list[Timing]) -> dict[str, tuple[float, float]]:
    """Images per second of each trained model, (training, forward only), the pipeline's way.

    Forward-only passes are counted at ``FORWARD_SPEEDUP`` times the model's training rate; the frozen model
    runs its frozen base forward only either way (its head costs next to nothing), so at the extraction rate.
    Estimates from measured rates, not timings.
    """
    ours = {t.step: t.ours for t in timings}
    return {
        "baseline": (ours["baseline_step"], FORWARD_SPEEDUP * ours["baseline_step"]),
        "frozen": (ours["extract_features"], ours["extract_features"]),
        "finetuned": (ours["finetune_step"], FORWARD_SPEEDUP * ours["finetune_step"]),
    }


def epoch_seconds(params: Params, timings: list[Timing]) -> dict[str, float]:
    """Seconds one epoch of each image-training stage would take at these rates and ``params.sample`` counts:
    the training images at the model's training rate, then the validation images forward only (``_rates``)."""
    images, rates = _images(params), _rates(timings)
    return {
        stage: images["train"] / rates[model][0] + images["validation"] / rates[model][1]
        for stage, model in TRAINED.items()
    }


def estimate_repro(params: Params, timings: list[Timing]) -> dict[str, float]:
    """Seconds each Dogs vs. Cats stage of ``dvc repro`` that runs images through a network would take at these
    rates and params (``epoch_seconds`` times the epochs; the digits study is not measured here)."""
    images, epoch = _images(params), epoch_seconds(params, timings)
    extraction = next(t.ours for t in timings if t.step == "extract_features")
    return {
        "train_baseline": params.baseline.epochs * epoch["train_baseline"],
        "extract_features": sum(images.values()) / extraction,
        "train_frozen": params.frozen.epochs * epoch["train_frozen"],
        "finetune": params.finetune.epochs * epoch["finetune"],
        "evaluate": sum(images["test"] / forward for _, forward in _rates(timings).values()),
    }


def load_line(when: str, load: float, cores: int) -> str:
    """The load average at ``when``, with a warning when it is above the cores: then the figures are not a quiet
    machine's."""
    line = f"load average at the {when}: {load:.2f} ({cores} cores)"
    return line + ("; warning: the machine is busy, so these figures are not a quiet machine's" if load > cores else "")


def report(timings: list[Timing], epochs: dict[str, float], estimate: dict[str, float], params: Params) -> str:
    """The table ``make bench`` prints: median rates, the median ratio of the pairs, its range, what it says."""
    header = f"{'step':<18}{'images':>7}{'ours img/s':>12}{'book img/s':>12}{'ratio':>7}  {'range':<13} verdict"
    lines = [header]
    for t in timings:
        span = f"{t.low:.2f}-{t.high:.2f}"
        lines.append(f"{t.step:<18}{t.images:>7}{t.ours:>12.2f}{t.book:>12.2f}{t.ratio:>7.2f}  {span:<13} {t.verdict}")
    pairs = timings[0].pairs if timings else 0
    lines.append(f"(median of {pairs} alternating pairs after a warm-up; range: the lowest and highest pair)")
    lines.append(
        f"estimated dvc repro at these params ({', '.join(f'{n:,} {s}' for s, n in _images(params).items())} "
        f"images): {sum(estimate.values()) / 3600:.1f} h"
    )
    for stage, seconds in estimate.items():
        each = f"  ({epochs[stage] / 60:.1f} min an epoch)" if stage in epochs else ""
        lines.append(f"  {stage:<18}{seconds / 60:>8.1f} min{each}")
    return "\n".join(lines)


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
    timings = measure(params, args.images, pairs)
    end_load = os.getloadavg()[0]
    epochs, estimate = epoch_seconds(params, timings), estimate_repro(params, timings)
    print(report(timings, epochs, estimate, params))
    print(load_line("end", end_load, cores))
    result = {
        "image_size": params.image.size,
        "batch_size": params.image.batch_size,
        "pairs": pairs,
        "load_average": {"start": round(start_load, 2), "end": round(end_load, 2), "cores": cores},
        "steps": {t.step: {**asdict(t), "verdict": t.verdict} for t in timings},
        "sample_per_class": params.sample.counts(),
        "epoch_seconds": {stage: round(seconds, 1) for stage, seconds in epochs.items()},
        "estimated_repro_seconds": {stage: round(seconds, 1) for stage, seconds in estimate.items()},
    }
    with atomic_path(out, replace=args.force) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    run(main)
