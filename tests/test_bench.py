"""make bench: every step timed the pipeline's way and the book's way, written to bench.json, never a DVC metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages import bench, scenarios
from stages.config import ConfigError, load_params
from tests.conftest import REPO, call_stage

STEPS = ["decode_resize", "extract_features", "baseline_step", "finetune_step"]


def test_bench_times_each_step_both_ways_and_writes_bench_json(workdir: Path) -> None:
    result = call_stage("bench", workdir, args=("--images", "8", "--out", "out/bench.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    timings = json.loads((workdir / "out/bench.json").read_text())
    assert (timings["image_size"], timings["batch_size"]) == (32, 16)
    assert list(timings["steps"]) == STEPS
    for step in timings["steps"].values():
        assert step["images"] == 8
        assert step["ours"] > 0 and step["book"] > 0
        assert step["ratio"] == pytest.approx(step["ours"] / step["book"], abs=1e-3)
    assert timings["sample_per_class"] == {"train": 16, "validation": 8, "test": 8}
    assert list(timings["epoch_seconds"]) == ["train_baseline", "train_frozen", "finetune"]
    assert list(timings["estimated_repro_seconds"]) == [
        "train_baseline",
        "extract_features",
        "train_frozen",
        "finetune",
        "evaluate",
    ]
    table = result.stdout.splitlines()
    assert table[0].split() == ["step", "images", "ours", "img/s", "book", "img/s", "ratio"]
    assert [line.split()[0] for line in table[1:5]] == STEPS
    assert table[5].startswith("estimated dvc repro at these params (32 train, 16 validation, 16 test images): ")
    assert table[6].split()[0] == "train_baseline" and table[6].endswith("min an epoch)")


def test_the_estimate_is_the_params_work_at_the_measured_rates(workdir: Path) -> None:
    params = load_params()  # tiny: 16 / 8 / 8 per class; baseline 2 epochs, frozen 1, finetune 1
    timings = [bench.Timing(step, 8, ours, 1.0) for step, ours in zip(STEPS, [100.0, 4.0, 16.0, 2.0], strict=True)]
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
    timings = [bench.Timing(step, 8, 10.0, 1.0) for step in STEPS]
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
