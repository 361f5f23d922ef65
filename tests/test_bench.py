"""make bench: every step timed the pipeline's way and the book's way, written to bench.json, never a DVC metric."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dogs_vs_cats.config import ConfigError, FeaturesConfig, load_params
from dogs_vs_cats.models import BASES, base_of, build_extractor
from tests.conftest import REPO, call_stage
from tools import bench, scenarios

STEPS = ["decode_resize", "extract_features", "baseline_step", "finetune_step"]


def test_bench_times_each_step_both_ways_and_writes_bench_json(workdir: Path) -> None:
    result = call_stage("bench", workdir, args=("--images", "8", "--quick", "--out", "out/bench.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    timings = json.loads((workdir / "out/bench.json").read_text())
    assert (timings["image_size"], timings["batch_size"], timings["pairs"]) == (32, 16, 2)
    assert list(timings["steps"]) == STEPS
    for step in timings["steps"].values():
        assert step["images"] == 8 and step["pairs"] == 2
        assert step["ours"] > 0 and step["book"] > 0
        assert step["low"] <= step["ratio"] <= step["high"]
        assert step["verdict"] == ("not distinguishable" if step["low"] <= 1 <= step["high"] else
                                   "faster" if step["ratio"] > 1 else "slower")  # fmt: skip
    assert set(timings["load_average"]) == {"start", "end", "cores"}
    assert timings["sample_per_class"] == {"train": 16, "validation": 8, "test": 8}
    assert list(timings["epoch_seconds"]) == ["train_baseline", "train_frozen", "finetune"]
    assert list(timings["estimated_repro_seconds"]) == [
        "train_baseline",
        "extract_features",
        "train_frozen",
        "finetune",
        "evaluate",
    ]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("load average at the start: ") and lines[-1].startswith("load average at the end: ")
    assert lines[1] == "train.precision float32: layers compute in float32, variables float32"  # said once
    table = lines[2:-1]
    assert table[0].split() == ["step", "images", "ours", "img/s", "book", "img/s", "ratio", "range", "verdict"]
    assert [line.split()[0] for line in table[1:5]] == STEPS
    assert table[5] == "(median of 2 alternating pairs after a warm-up; range: the lowest and highest pair)"
    assert table[6].startswith("estimated dvc repro at these params (32 train, 16 validation, 16 test images): ")
    assert table[7].split()[0] == "train_baseline" and table[7].endswith("min an epoch)")


class FakeClock:
    """A clock that only the timed work moves: each call of a way advances it by that way's next duration."""

    def __init__(self) -> None:
        self.now, self.calls = 0.0, []

    def __call__(self) -> float:
        return self.now

    def way(self, name: str, seconds: list[float]):
        durations = iter(seconds)

        def work() -> None:
            self.calls.append(name)
            self.now += next(durations)

        return work


def test_a_known_2x_gives_2_within_its_range_and_is_told_apart() -> None:
    clock = FakeClock()
    noise = [1.0, 1.1, 0.9, 1.05, 0.95]
    ours = clock.way("ours", [99.0, *noise])  # the warm-up's time does not count
    book = clock.way("book", [99.0, *[2 * n for n in noise[::-1]]])
    timing = bench.compare("step", 10, ours, book, pairs=5, clock=clock)
    assert clock.calls == ["ours", "book"] * 6  # warm-up, then ABAB...
    assert timing.ratio == pytest.approx(2.0, rel=0.2) and timing.low <= 2.0 <= timing.high
    assert timing.low > 1 and timing.distinguishable and timing.verdict == "faster"
    assert timing.ours == pytest.approx(10 / 1.0) and timing.book == pytest.approx(10 / 2.0)


def test_identical_ways_give_a_range_around_1_that_is_not_distinguishable() -> None:
    seconds = [1.0, 1.2, 0.8, 1.1, 0.9]
    timing = bench.summarize("step", 10, seconds, [1.1, 0.9, 1.0, 1.0, 1.05])
    assert timing.low < 1 < timing.high
    assert not timing.distinguishable and timing.verdict == "not distinguishable"
    slower = bench.summarize("step", 10, [2.0, 2.2, 1.9], [1.0, 1.0, 1.0])
    assert slower.high < 1 and slower.verdict == "slower"


def test_a_busy_machine_is_warned_of() -> None:
    assert bench.load_line("start", 1.5, 2) == "load average at the start: 1.50 (2 cores)"
    assert bench.load_line("end", 3.2, 2).endswith(
        "warning: the machine is busy, so these figures are not a quiet machine's"
    )


def test_the_estimate_is_the_params_work_at_the_measured_rates(workdir: Path) -> None:
    params = load_params()  # tiny: 16 / 8 / 8 per class; baseline 2 epochs, frozen 1, finetune 1
    timings = [
        bench.summarize(step, 8, [8 / ours] * 5, [8.0] * 5)
        for step, ours in zip(STEPS, [100.0, 4.0, 16.0, 2.0], strict=True)
    ]
    # 32 training and 16 validation images; a forward pass at 3x the training rate, the frozen base's at
    # the extraction rate.
    assert bench.epoch_seconds(params, timings) == pytest.approx(
        {"train_baseline": 32 / 16 + 16 / 48, "train_frozen": 32 / 4 + 16 / 4, "finetune": 32 / 2 + 16 / 6}
    )
    estimate = bench.estimate_repro(params, timings)
    assert estimate["train_baseline"] == pytest.approx(2 * (32 / 16 + 16 / 48))
    assert estimate["extract_features"] == pytest.approx(64 / 4)
    assert estimate["train_frozen"] == pytest.approx(1 * (32 / 4 + 16 / 4))
    assert estimate["finetune"] == pytest.approx(1 * (32 / 2 + 16 / 6))
    assert estimate["evaluate"] == pytest.approx(16 / 48 + 16 / 4 + 16 / 6)


def test_the_full_scenario_estimates_every_image_of_the_archive() -> None:
    params = load_params(REPO / "params.yaml", overrides=scenarios.load("full"))
    assert params.sample.counts() == {"train": 10_000, "validation": 1_200, "test": 1_200}
    assert sum(params.sample.counts().values()) <= 12_500  # Kaggle's images per class
    assert params.image == load_params(REPO / "params.yaml").image  # the book's size and batch
    timings = [bench.summarize(step, 8, [0.8] * 5, [8.0] * 5) for step in STEPS]
    assert bench.epoch_seconds(params, timings)["train_baseline"] == pytest.approx(20_000 / 10 + 2_400 / 30)


def test_an_unknown_scenario_key_is_one_line(workdir: Path) -> None:
    with pytest.raises(ConfigError, match=r"^params\.yaml: unknown key sample\.train; remove it"):
        load_params(overrides={"sample.train": 5})
    with pytest.raises(ConfigError, match=r"^params\.yaml: unknown key seed\.x; remove it"):
        load_params(overrides={"seed.x": 5})


def test_bench_is_not_a_dvc_metric() -> None:
    assert "bench" not in (REPO / "dvc.yaml").read_text()
    assert "/bench.json" in (REPO / ".gitignore").read_text().splitlines()


def test_too_few_images_is_one_line(workdir: Path) -> None:
    result = call_stage("bench", workdir, args=("--images", "1"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: --images is 1; use at least 2 (one cat, one dog)"


def test_an_unknown_scenario_is_one_line_naming_the_known_ones(workdir: Path) -> None:
    result = call_stage("bench", workdir, args=("--scenario", "huge"))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: no scenario 'huge' in ") and line.endswith("use one of demo, full, learnable, tiny")
    assert not (workdir / "bench.json").exists()


@pytest.mark.parametrize("base", sorted(BASES))
def test_the_book_twin_of_each_base_computes_what_the_extractor_computes(base: str) -> None:
    # The ratio compares like with like: the bare network and its module's preprocess_input, given the
    # extractor's weights, give the extractor's features (which preprocess inside the model).
    size = max(32, BASES[base].min_size)
    extractor = build_extractor(size, FeaturesConfig(base, "none"))
    twin = BASES[base].build(include_top=False, weights=None, input_shape=(size, size, 3))
    twin.set_weights(base_of(extractor).get_weights())
    pixels = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    np.testing.assert_allclose(
        twin.predict(bench.BOOK_PREPROCESS[base](pixels.copy()), verbose=0),
        extractor.predict(pixels, verbose=0),
        rtol=1e-4,
        atol=1e-5,
    )
