"""Is a difference real? Intervals and paired tests for metrics measured on one finite test set.

With 1,000 test images an accuracy near 0.975 is only known to about +-1 point, so two models (or two
revisions) 0.005 apart may not differ at all. ``wilson`` bounds an accuracy, ``bootstrap_auc`` a ROC AUC,
and ``mcnemar`` asks whether two classifiers that saw the same images differ, from the images on which
exactly one of them was right.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score

LEVEL = 0.95  # every interval here is a 95 % one
SIGNIFICANT = 0.05  # a McNemar p-value below this calls a difference real


def wilson(correct: int, total: int) -> tuple[float, float]:
    """The Wilson score interval of ``correct / total`` (better than p +- 1.96 se near 0 or 1, and never outside)."""
    interval = binomtest(int(correct), int(total)).proportion_ci(confidence_level=LEVEL, method="wilson")
    return float(interval.low), float(interval.high)


def bootstrap_auc(labels: np.ndarray, scores: np.ndarray, resamples: int, seed: int) -> tuple[float, float] | None:
    """A percentile bootstrap interval of the ROC AUC over test images, seeded so it is reproducible.

    None when it cannot be computed: no resamples asked, or a single class in the test set. Resamples that
    happen to hold one class only are drawn again.
    """
    labels, scores = np.asarray(labels), np.asarray(scores)
    if resamples == 0 or len(np.unique(labels)) < 2:
        return None
    rng = np.random.default_rng(seed)
    aucs: list[float] = []
    while len(aucs) < resamples:
        pick = rng.integers(0, len(labels), len(labels))
        if labels[pick].min() != labels[pick].max():
            aucs.append(roc_auc_score(labels[pick], scores[pick]))
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(aucs, [tail, 100 - tail])
    return float(low), float(high)


def mcnemar(right_a: np.ndarray, right_b: np.ndarray) -> dict[str, float | int | bool]:
    """The exact McNemar test of two classifiers on the same images, given whether each got each image right.

    Only discordant images count: ``only_a`` right by A alone, ``only_b`` by B alone. Under "no difference"
    each discordant image is a fair coin, so the two-sided p-value is a binomial test of ``only_a`` of them.
    """
    right_a, right_b = np.asarray(right_a, dtype=bool), np.asarray(right_b, dtype=bool)
    if right_a.shape != right_b.shape:
        raise ValueError(f"McNemar needs the same images: {right_a.shape} against {right_b.shape}")
    only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    p_value = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"only_a": only_a, "only_b": only_b, "p_value": float(p_value), "significant": bool(p_value < SIGNIFICANT)}
