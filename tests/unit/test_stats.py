"""Is a difference real: Wilson intervals, the seeded bootstrap, exact McNemar, and the report's verdicts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dogs_vs_cats import paths, stats
from tools import report


@pytest.mark.parametrize(
    ("correct", "total", "low", "high"),
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 10, 0.0, 0.2775)],  # Newcombe (1998), table I
)
def test_wilson_gives_the_textbook_intervals(correct: int, total: int, low: float, high: float) -> None:
    assert stats.wilson(correct, total) == pytest.approx((low, high), abs=5e-5)


def test_a_thousand_test_images_know_an_accuracy_near_0975_to_about_one_point() -> None:
    low, high = stats.wilson(975, 1000)
    assert 0.96 < low < 0.966 and 0.983 < high < 0.99  # so 0.975 against 0.980 is noise


def test_exact_mcnemar_counts_only_the_discordant_images() -> None:
    right_a = np.array([True] * 50 + [True] * 1 + [False] * 9 + [False] * 40)
    right_b = np.array([True] * 50 + [False] * 1 + [True] * 9 + [False] * 40)
    result = stats.mcnemar(right_a, right_b)
    assert (result["only_a"], result["only_b"]) == (1, 9)
    assert result["p_value"] == pytest.approx(2 * (1 + 10) / 2**10)  # two-sided binomial, 10 fair coins
    assert result["significant"]
    same = stats.mcnemar(right_a, right_a)
    assert same["p_value"] == 1.0 and not same["significant"]
    with pytest.raises(ValueError, match="the same images"):
        stats.mcnemar(right_a, right_b[:-1])


def test_the_bootstrap_is_seeded_and_brackets_the_auc() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = labels * 0.3 + rng.random(200)
    first = stats.bootstrap_auc(labels, scores, 300, seed=1)
    assert first == stats.bootstrap_auc(labels, scores, 300, seed=1)
    assert first != stats.bootstrap_auc(labels, scores, 300, seed=2)
    from sklearn.metrics import roc_auc_score

    assert first[0] < roc_auc_score(labels, scores) < first[1]
    assert stats.bootstrap_auc(np.ones(10), scores[:10], 300, seed=1) is None  # one class: no AUC
    assert stats.bootstrap_auc(labels, scores, 0, seed=1) is None


def git(*args: str) -> None:
    subprocess.run(["git", *args], check=True, capture_output=True)


def predictions(right: list[bool]) -> pd.DataFrame:
    labels = ["cat", "dog"] * (len(right) // 2)
    flipped = {"cat": "dog", "dog": "cat"}
    return pd.DataFrame(
        {
            "file": [f"test/x/{i:03d}.jpg" for i in range(len(right))],
            "label": labels,
            "probability": 0.5,
            "predicted": [label if ok else flipped[label] for label, ok in zip(labels, right, strict=True)],
        }
    )


def test_the_report_calls_a_change_real_only_when_mcnemar_does(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    git("init", "-q", "-b", "main")
    for model, right in (("baseline", [True] * 80 + [False] * 20), ("head", [True] * 80 + [False] * 20)):
        paths.predictions_file(model).parent.mkdir(parents=True, exist_ok=True)
        predictions(right).to_csv(paths.predictions_file(model), index=False)
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "-m", "base")
    # baseline: 18 more right, none lost (real); head: one more right (noise); finetuned: new, no base.
    predictions([True] * 98 + [False] * 2).to_csv(paths.predictions_file("baseline"), index=False)
    predictions([True] * 81 + [False] * 19).to_csv(paths.predictions_file("head"), index=False)
    predictions([True] * 100).to_csv(paths.predictions_file("finetuned"), index=False)
    # 18 discordant images, all one way: p = 2 * 0.5**18.
    assert report.change_against("baseline", "main") == ("0.8000", "+0.1800", f"{2 * 0.5**18:.3g}", "**significant**")
    assert report.change_against("head", "main") == ("0.8000", "+0.0100", "1", "within noise")
    assert report.change_against("finetuned", "main") == ("-", "-", "-", "no predictions at `main`")
    predictions([True] * 10).to_csv(paths.predictions_file("head"), index=False)
    assert report.change_against("head", "main")[3] == "different test images: not comparable"
