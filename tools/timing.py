"""The timing harness of ``python -m tools.bench``: ways of doing a step run in alternating rounds, so a slow
spell of the machine hits each alike, summed up as median rates and the range of their ratios; and the
matmul rate each precision's GFLOP/s is measured against."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from tools.hardware import COMPUTE_DTYPE, FLOAT32

PAIRS = 5  # timed (ours, book) pairs per step after the warm-up: enough for a median and a range that mean something


def rounds(
    ways: dict[str, Callable[[], object]], pairs: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, list[float]]:
    """The seconds of each way: each run once to warm up (tracing, caches), then ``pairs`` rounds of all of
    them in turn (ABAB...), so a slow spell of the machine hits every way alike and each round compares like
    with like."""
    for work in ways.values():
        work()
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(pairs):
        for name, work in ways.items():
            start = clock()
            work()
            seconds[name].append(clock() - start)
    return seconds


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


def compare(
    step: str,
    images: int,
    ours: Callable[[], object],
    book: Callable[[], object],
    pairs: int = PAIRS,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Both ways of a step in alternating pairs, ours then the book's (``rounds``); see ``summarize``."""
    seconds = rounds({"ours": ours, "book": book}, pairs, clock)
    return summarize(step, images, seconds["ours"], seconds["book"])


@dataclass(frozen=True)
class Step:
    """One heavy step the pipeline's way: its model, the work of one pass over the images, FLOPs per image."""

    model: keras.Model
    work: Callable[[], object]
    flops: float


@dataclass(frozen=True)
class PrecisionTiming:
    """One heavy step ours under one precision, timed in rounds with the others: median images per second,
    the median ratio to float32's time in the same round and its range, the GFLOP/s that rate achieves and
    its fraction of this machine's matmul rate at the precision's compute dtype."""

    step: str
    precision: str
    rate: float
    ratio: float
    low: float
    high: float
    gflops: float
    fraction: float


def precision_timings(
    step: str,
    images: int,
    steps: dict[str, Step],
    pairs: int,
    matmul: dict[str, float],
    clock: Callable[[], float] = time.perf_counter,
) -> list[PrecisionTiming]:
    """One step under each precision of ``steps`` (float32 first), in ``rounds``: each one's rate, its ratio to
    float32 round by round, and its GFLOP/s as a fraction of ``matmul`` (GFLOP/s by policy)."""
    seconds = rounds({precision: s.work for precision, s in steps.items()}, pairs, clock)
    timings = []
    for precision, taken in seconds.items():
        ratios = [float32 / t for float32, t in zip(seconds[FLOAT32], taken, strict=True)]
        rate = images / statistics.median(taken)
        gflops = rate * steps[precision].flops / 1e9
        timings.append(
            PrecisionTiming(
                step,
                precision,
                rate=rate,
                ratio=statistics.median(ratios),
                low=min(ratios),
                high=max(ratios),
                gflops=gflops,
                fraction=gflops / matmul[precision],
            )
        )
    return timings


def matmul_rates(precisions: list[str], side: int, pairs: int) -> dict[str, float]:
    """GFLOP/s of a ``side`` x ``side`` matmul in each precision's compute dtype, at its fastest of ``rounds``:
    the most this machine's TensorFlow gets from its cores at that precision, the limit each step is measured
    against (a convolution can come near it, rarely above)."""
    rng = np.random.default_rng(0)
    pair = [tf.constant(rng.standard_normal((side, side), dtype="float32")) for _ in range(2)]

    def product(dtype: str) -> Callable[[], object]:
        a, b = (tf.cast(m, dtype) for m in pair)
        return lambda: tf.matmul(a, b)[0, 0].numpy()  # reading one value waits for the product, on a GPU too

    seconds = rounds({p: product(COMPUTE_DTYPE[p]) for p in precisions}, max(pairs, 3))
    return {p: 2 * side**3 / min(taken) / 1e9 for p, taken in seconds.items()}
