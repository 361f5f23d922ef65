"""The estimate of ``python -m tools.bench``: how long ``dvc repro``'s image stages would take at the measured
rates and the params' image counts and epochs, and the precision that makes it shortest here."""

from __future__ import annotations

from dogs_vs_cats.config import Params
from tools.hardware import BF16_CPU_FLAGS, FLOAT32, Hardware
from tools.timing import PrecisionTiming, Timing

FORWARD_SPEEDUP = 3.0  # a forward pass costs about a third of a training step (the backward pass is ~2x)
# The image-training stages and the model each trains, as evaluate names it.
TRAINED = {"train_baseline": "baseline", "train_frozen": "frozen", "finetune": "finetuned"}


def split_images(params: Params) -> dict[str, int]:
    """Images in each split (both classes) at these params."""
    return {split: 2 * n for split, n in params.sample.counts().items()}


def model_rates(rates: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Images per second of each trained model, (training, forward only), from the heavy steps' ``rates``.

    Forward-only passes are counted at ``FORWARD_SPEEDUP`` times the model's training rate; the frozen model
    runs its frozen base forward only either way (its head costs next to nothing), so at the extraction rate.
    Estimates from measured rates, not timings.
    """
    return {
        "baseline": (rates["baseline_step"], FORWARD_SPEEDUP * rates["baseline_step"]),
        "frozen": (rates["extract_features"], rates["extract_features"]),
        "finetuned": (rates["finetune_step"], FORWARD_SPEEDUP * rates["finetune_step"]),
    }


def ours_rates(timings: list[Timing]) -> dict[str, float]:
    """Images per second of each step the pipeline's way, at ``train.precision``."""
    return {t.step: t.ours for t in timings}


def rates_under(by_precision: list[PrecisionTiming], precision: str) -> dict[str, float]:
    """Images per second of each heavy step under ``precision``."""
    return {t.step: t.rate for t in by_precision if t.precision == precision}


def epoch_seconds(params: Params, rates: dict[str, float]) -> dict[str, float]:
    """Seconds one epoch of each image-training stage would take at these rates (images/s by step) and
    ``params.sample`` counts: the training images at the model's training rate, then the validation images
    forward only (``model_rates``)."""
    images, models = split_images(params), model_rates(rates)
    return {
        stage: images["train"] / models[model][0] + images["validation"] / models[model][1]
        for stage, model in TRAINED.items()
    }


def estimate_repro(params: Params, rates: dict[str, float]) -> dict[str, float]:
    """Seconds each Dogs vs. Cats stage of ``dvc repro`` that runs images through a network would take at these
    rates and params (``epoch_seconds`` times the epochs; the digits study is not measured here)."""
    images, epoch = split_images(params), epoch_seconds(params, rates)
    return {
        "train_baseline": params.baseline.epochs * epoch["train_baseline"],
        "extract_features": sum(images.values()) / rates["extract_features"],
        "train_frozen": params.frozen.epochs * epoch["train_frozen"],
        "finetune": params.finetune.epochs * epoch["finetune"],
        "evaluate": sum(images["test"] / forward for _, forward in model_rates(rates).values()),
    }


def recommend(by_precision: list[PrecisionTiming], hardware: Hardware, params: Params) -> tuple[str, str]:
    """The precision to train in here and why: of those done in silicon, the one whose measured rates make the
    estimated ``dvc repro`` at ``params`` shortest, if shorter than float32's; else float32. Printed, never applied."""
    seconds = {
        precision: sum(estimate_repro(params, rates_under(by_precision, precision)).values())
        for precision in dict.fromkeys(t.precision for t in by_precision)
    }
    native = [precision for precision in seconds if precision != FLOAT32 and hardware.native(precision)]
    best = min(native, key=seconds.__getitem__, default=None)
    if best is not None and seconds[best] < seconds[FLOAT32]:
        gain = seconds[FLOAT32] / seconds[best]
        return (
            best,
            f"{gain:.1f}x float32 over dvc repro's image stages at these params; in silicon: {hardware.native(best)}",
        )
    if best is not None:
        return FLOAT32, f"{best} is in silicon here ({hardware.native(best)}) but would not shorten dvc repro"
    return FLOAT32, "no bfloat16 in silicon here: no CPU flag " + " or ".join(BF16_CPU_FLAGS) + ", no GPU"
