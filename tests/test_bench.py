"""make bench: every step timed the pipeline's way and the book's way, written to bench.json, never a DVC metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages import bench
from stages.config import load_params
from tests.conftest import REPO, run_stage

STEPS = ["decode_resize", "extract_features", "baseline_step", "finetune_step"]


def test_bench_times_each_step_both_ways_and_writes_bench_json(workdir: Path) -> None:
    result = run_stage("bench", workdir, args=("--images", "8", "--out", "out/bench.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    timings = json.loads((workdir / "out/bench.json").read_text())
    assert (timings["image_size"], timings["batch_size"]) == (32, 16)
    assert list(timings["steps"]) == STEPS
    for step in timings["steps"].values():
        assert step["images"] == 8
        assert step["ours"] > 0 and step["book"] > 0
        assert step["ratio"] == pytest.approx(step["ours"] / step["book"], abs=1e-3)
    assert list(timings["estimated_repro_seconds"]) == ["train_baseline", "extract_features", "finetune", "evaluate"]
    table = result.stdout.splitlines()
    assert table[0].split() == ["step", "images", "ours", "img/s", "book", "img/s", "ratio"]
    assert [line.split()[0] for line in table[1:5]] == STEPS
    assert table[5].startswith("estimated dvc repro at these params: ")


def test_the_estimate_is_the_params_work_at_the_measured_rates(workdir: Path) -> None:
    params = load_params()  # tiny: 16 / 8 / 8 per class, baseline 2 epochs, finetune 1
    timings = [bench.Timing(step, 8, ours, 1.0) for step, ours in zip(STEPS, [100.0, 4.0, 16.0, 2.0], strict=True)]
    estimate = bench.estimate_repro(params, timings)
    # 32 training and 16 validation images; a forward pass at 3x the training rate.
    assert estimate["train_baseline"] == pytest.approx(2 * (32 / 16 + 16 / 48))
    assert estimate["extract_features"] == pytest.approx(64 / 4)
    assert estimate["finetune"] == pytest.approx(1 * (32 / 2 + 16 / 6))
    assert estimate["evaluate"] == pytest.approx(16 / 48 + 16 / 6)


def test_bench_is_not_a_dvc_metric() -> None:
    assert "bench" not in (REPO / "dvc.yaml").read_text()
    assert "/bench.json" in (REPO / ".gitignore").read_text().splitlines()


def test_too_few_images_is_one_line(workdir: Path) -> None:
    result = run_stage("bench", workdir, args=("--images", "1"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: --images is 1; use at least 2 (one cat, one dog)"
