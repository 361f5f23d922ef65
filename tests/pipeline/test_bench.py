"""make bench: every step timed the pipeline's way and the book's way, written to bench.json, never a DVC metric."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from dogs_vs_cats.config import ConfigError, FeaturesConfig, load_params
from dogs_vs_cats.models import BASES, base_of, build_extractor
from tests.conftest import REPO, call_stage
from tools import bench, scenarios
from tools.estimate import epoch_seconds, estimate_repro, ours_rates, recommend
from tools.hardware import Hardware, detect_hardware
from tools.timing import PrecisionTiming, Step, compare, matmul_rates, precision_timings, summarize

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
    assert timings["precision"] == "float32"
    precisions = detect_hardware().precisions()
    assert [(t["step"], t["precision"]) for t in timings["precisions"]] == [
        (step, precision) for step in STEPS[1:] for precision in precisions
    ]
    for t in timings["precisions"]:
        assert t["rate"] > 0 and t["low"] <= t["ratio"] <= t["high"] and t["gflops"] > 0
        assert t["fraction"] == pytest.approx(t["gflops"] / timings["matmul_gflops"][t["precision"]], rel=1e-3)
        if t["precision"] == "float32":
            assert t["ratio"] == t["low"] == t["high"] == 1.0
    assert timings["matmul_gflops"]["side"] == bench.QUICK_MATMUL_SIDE
    assert timings["recommended"] in precisions
    estimated = {"float32", timings["recommended"]}
    assert set(timings["estimated_repro_seconds"]) == set(timings["epoch_seconds"]) == estimated
    assert list(timings["epoch_seconds"]["float32"]) == ["train_baseline", "train_frozen", "finetune"]
    assert list(timings["estimated_repro_seconds"]["float32"]) == [
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
    assert table[5] == (
        "(at train.precision float32; median of 2 alternating pairs after a warm-up; "
        "range: the lowest and highest pair)"
    )
    assert table[6].split() == ["step", "precision", "img/s", "x", "float32", "range", "GFLOP/s", "of", "matmul"]
    rows = len(timings["precisions"])
    assert [line.split()[:2] for line in table[7 : 7 + rows]] == [
        [t["step"], t["precision"]] for t in timings["precisions"]
    ]
    assert table[7 + rows].startswith(f"matmul {bench.QUICK_MATMUL_SIDE}x{bench.QUICK_MATMUL_SIDE}, GFLOP/s: float32")
    assert table[8 + rows].startswith(f"recommended: train.precision {timings['recommended']} (")
    assert table[8 + rows].endswith("; params.yaml is left as it is")
    assert table[9 + rows].startswith("estimated dvc repro at float32 (32 train, 16 validation, 16 test images): ")
    assert table[10 + rows].split()[0] == "train_baseline" and table[10 + rows].endswith("min an epoch)")
    assert sum(line.startswith("estimated dvc repro at ") for line in table) == len(estimated)


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
    timing = compare("step", 10, ours, book, pairs=5, clock=clock)
    assert clock.calls == ["ours", "book"] * 6  # warm-up, then ABAB...
    assert timing.ratio == pytest.approx(2.0, rel=0.2) and timing.low <= 2.0 <= timing.high
    assert timing.low > 1 and timing.distinguishable and timing.verdict == "faster"
    assert timing.ours == pytest.approx(10 / 1.0) and timing.book == pytest.approx(10 / 2.0)


def test_identical_ways_give_a_range_around_1_that_is_not_distinguishable() -> None:
    seconds = [1.0, 1.2, 0.8, 1.1, 0.9]
    timing = summarize("step", 10, seconds, [1.1, 0.9, 1.0, 1.0, 1.05])
    assert timing.low < 1 < timing.high
    assert not timing.distinguishable and timing.verdict == "not distinguishable"
    slower = summarize("step", 10, [2.0, 2.2, 1.9], [1.0, 1.0, 1.0])
    assert slower.high < 1 and slower.verdict == "slower"


def test_a_busy_machine_is_warned_of() -> None:
    assert bench.load_line("start", 1.5, 2) == "load average at the start: 1.50 (2 cores)"
    assert bench.load_line("end", 3.2, 2).endswith(
        "warning: the machine is busy, so these figures are not a quiet machine's"
    )


def test_the_estimate_is_the_params_work_at_the_measured_rates(workdir: Path) -> None:
    params = load_params()  # tiny: 16 / 8 / 8 per class; baseline 2 epochs, frozen 1, finetune 1
    timings = [
        summarize(step, 8, [8 / ours] * 5, [8.0] * 5) for step, ours in zip(STEPS, [100.0, 4.0, 16.0, 2.0], strict=True)
    ]
    rates = ours_rates(timings)
    # 32 training and 16 validation images; a forward pass at 3x the training rate, the frozen base's at
    # the extraction rate.
    assert epoch_seconds(params, rates) == pytest.approx(
        {"train_baseline": 32 / 16 + 16 / 48, "train_frozen": 32 / 4 + 16 / 4, "finetune": 32 / 2 + 16 / 6}
    )
    estimate = estimate_repro(params, rates)
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
    rates = {step: 10.0 for step in STEPS}
    assert epoch_seconds(params, rates)["train_baseline"] == pytest.approx(20_000 / 10 + 2_400 / 30)


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


CPUINFO = "processor\t: {n}\nmodel name\t: a CPU\nflags\t\t: fpu sse2 avx2 {extra}\n\n"


@pytest.mark.parametrize(
    ("extra", "native"),
    [("avx512f amx_bf16 amx_tile", ("amx_bf16",)), ("avx512f avx512_bf16", ("avx512_bf16",)), ("fma", ())],
)
def test_bfloat16_is_native_only_where_the_cpu_says_so(tmp_path: Path, extra: str, native: tuple[str, ...]) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("".join(CPUINFO.format(n=n, extra=extra) for n in range(2)))
    hardware = detect_hardware(cpuinfo)
    assert hardware == Hardware(native, None)  # no GPU on this machine
    assert hardware.precisions() == ["float32", "mixed_bfloat16"]  # float16 is emulated on a CPU: not timed
    assert bool(hardware.native("mixed_bfloat16")) == bool(native) and hardware.native("float32")
    assert detect_hardware(tmp_path / "absent").cpu_bf16 == ()


def test_a_gpu_is_native_by_its_compute_capability() -> None:
    ampere, turing = Hardware((), (8, 6)), Hardware(("avx512_bf16",), (7, 5))
    assert ampere.precisions() == turing.precisions() == ["float32", "mixed_bfloat16", "mixed_float16"]
    assert ampere.native("mixed_bfloat16") == ampere.native("mixed_float16") == "GPU compute capability 8.6"
    assert turing.native("mixed_float16") and not turing.native("mixed_bfloat16")  # the GPU computes, not the CPU


def _under(precision: str, rates: dict[str, float]) -> list[PrecisionTiming]:
    return [PrecisionTiming(step, precision, rate, 1.0, 1.0, 1.0, 1.0, 0.1) for step, rate in rates.items()]


def test_the_recommendation_is_the_fastest_repro_in_silicon_and_never_a_guess(workdir: Path) -> None:
    params = load_params()
    fp32 = {"extract_features": 4.0, "baseline_step": 16.0, "finetune_step": 2.0}
    faster = _under("float32", fp32) + _under("mixed_bfloat16", {step: 2 * rate for step, rate in fp32.items()})
    amx, avx2 = Hardware(("amx_bf16",), None), Hardware((), None)
    precision, why = recommend(faster, amx, params)
    assert precision == "mixed_bfloat16" and why.startswith("2.0x float32 over dvc repro") and "amx_bf16" in why
    precision, why = recommend(faster, avx2, params)  # emulated bf16 measured fast is still not recommended
    assert precision == "float32" and why.startswith("no bfloat16 in silicon here")
    slower = _under("float32", fp32) + _under("mixed_bfloat16", {**fp32, "finetune_step": 1.0})
    assert recommend(slower, amx, params)[0] == "float32"
    # Weighed by the params' work: a slower baseline but faster fine-tuning (its 10x epochs) is a win.
    mixed = _under("float32", fp32) + _under("mixed_bfloat16", {**fp32, "baseline_step": 12.0, "finetune_step": 8.0})
    assert recommend(mixed, amx, load_params(overrides={"finetune.epochs": 10}))[0] == "mixed_bfloat16"


def test_each_step_is_timed_against_float32_in_the_same_rounds_and_its_share_of_matmul() -> None:
    clock = FakeClock()
    steps = {
        "float32": Step(None, clock.way("float32", [9.0, 2.0, 2.2, 1.8]), flops=1e9),
        "mixed_bfloat16": Step(None, clock.way("mixed_bfloat16", [9.0, 1.0, 1.0, 1.0]), flops=1e9),
    }
    timings = precision_timings("finetune_step", 10, steps, 3, {"float32": 100.0, "mixed_bfloat16": 20.0}, clock=clock)
    assert clock.calls == ["float32", "mixed_bfloat16"] * 4  # a warm-up, then rounds in turn
    fp32, bf16 = timings
    assert (fp32.ratio, fp32.low, fp32.high) == (1.0, 1.0, 1.0) and fp32.rate == pytest.approx(10 / 2.0)
    assert (bf16.ratio, bf16.low, bf16.high) == pytest.approx((2.0, 1.8, 2.2)) and bf16.rate == pytest.approx(10.0)
    assert fp32.gflops == pytest.approx(5.0) and fp32.fraction == pytest.approx(0.05)
    assert bf16.gflops == pytest.approx(10.0) and bf16.fraction == pytest.approx(0.5)


def test_a_training_step_counts_backward_only_from_the_first_trainable_layer() -> None:
    inputs = keras.Input((8,))
    frozen = keras.layers.Dense(16, trainable=False)
    outputs = keras.layers.Dense(1)(frozen(inputs))
    model = keras.Model(inputs, outputs)
    forward = 2.0 * (8 * 16 + 16 * 1)
    assert bench.forward_flops(model) == forward
    assert bench.train_flops(model) == forward + 2 * 2.0 * 16  # the frozen layer has no backward pass
    frozen.trainable = True
    assert bench.train_flops(model) == 3 * forward


def test_matmul_rates_are_a_products_flops_over_its_time() -> None:
    rates = matmul_rates(["float32", "mixed_bfloat16"], side=256, pairs=1)
    assert list(rates) == ["float32", "mixed_bfloat16"] and all(rate > 0.1 for rate in rates.values())
