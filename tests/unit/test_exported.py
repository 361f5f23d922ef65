"""dogs_vs_cats.exported: what export keeps of its check, and the scores model_cards quotes from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dogs_vs_cats.exported import Outputs, score
from runtime.errors import PipelineError


def _outputs() -> Outputs:
    # Four test images, a cat and three dogs; the float16 file moves the third across 0.5 and 0.7 alike.
    return Outputs(
        labels=np.array([0, 1, 1, 1]),
        trained=np.array([[0.2], [0.9], [0.55], [0.4]], "float32"),
        float16=np.array([[0.21], [0.9], [0.75], [0.4]], "float32"),
        float32_max_abs_difference=3e-7,
        float32_bytes=4000,
        float16_bytes=2100,
    )


def test_kept_outputs_come_back_as_they_were_written(tmp_path: Path) -> None:
    _outputs().save(tmp_path / "cats_dogs.npz")
    loaded = Outputs.load(tmp_path / "cats_dogs.npz")
    for field in ("labels", "trained", "float16"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(_outputs(), field))
    assert (loaded.float32_max_abs_difference, loaded.float32_bytes, loaded.float16_bytes) == (3e-7, 4000, 2100)


def test_the_scores_follow_the_threshold_they_are_asked_at() -> None:
    at_half, at_seven_tenths = score(_outputs(), 0.5), score(_outputs(), 0.7)
    assert (at_half.accuracy, at_half.float16_accuracy) == (0.75, 0.75)
    assert (at_seven_tenths.accuracy, at_seven_tenths.float16_accuracy) == (0.5, 0.75)
    assert at_half.test_images == 4 and at_half.float16_max_abs_difference == pytest.approx(0.2)
    assert at_half.float32_max_abs_difference == 3e-7 and at_half.float16_bytes == 2100


def test_softmax_outputs_are_scored_by_their_largest_output_whatever_the_threshold() -> None:
    labels = np.array([2, 0])
    trained = np.array([[0.1, 0.2, 0.7], [0.3, 0.6, 0.1]], "float32")
    outputs = Outputs(labels, trained, trained, 0.0, 1, 1)
    assert score(outputs, 0.5).accuracy == score(outputs, 0.9).accuracy == 0.5


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"not an npz", "not a .npz file holding labels, trained, float16"),
        (None, "its arrays do not belong together"),
    ],
)
def test_a_damaged_or_inconsistent_file_is_one_line_naming_export(tmp_path: Path, content, says: str) -> None:
    path = tmp_path / "mnist.npz"
    if content is None:  # a float16 array of another test split's length
        kept = _outputs()
        Outputs(kept.labels, kept.trained, kept.float16[:3], 0.0, 1, 1).save(path)
    else:
        path.write_bytes(content)
    with pytest.raises(PipelineError, match=rf"^{path}: .*{says}.*; run dvc repro --force export$"):
        Outputs.load(path)


def test_model_cards_runs_without_tensorflow() -> None:
    # What makes a threshold sweep cost seconds: the stage never imports TensorFlow (seconds of start-up alone).
    import subprocess
    import sys

    from tests.conftest import REPO

    code = "import sys, stages.model_cards; print(sorted({'tensorflow', 'keras'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True).stdout == "[]\n"
