"""dogs_vs_cats.exported: what export keeps of its check, and the scores model_cards quotes from it."""

from __future__ import annotations

import json
import shutil
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
    loaded = Outputs.load(tmp_path / "cats_dogs.npz", 1, 4)
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


def _kept(**changes) -> dict:
    """The arrays of ``_outputs()``'s file, some changed."""
    kept = _outputs()
    return {name: np.asarray(getattr(kept, name)) for name in kept.__dataclass_fields__} | changes


# Each a file export never writes, as a hand edit, a copy of another model's file or a bug could leave it.
DAMAGED = {
    "another model's (ten outputs)": _kept(trained=np.full((4, 10), 0.1, "float32"), float16=np.full((4, 10), 0.1)),
    "another test split's": _kept(labels=np.array([0, 1]), trained=np.zeros((2, 1)), float16=np.zeros((2, 1))),
    "no test images": _kept(labels=np.zeros(0, int), trained=np.zeros((0, 1)), float16=np.zeros((0, 1))),
    "outputs of no width": _kept(trained=np.zeros((4, 0)), float16=np.zeros((4, 0))),
    "a NaN output": _kept(float16=np.array([[0.2], [np.nan], [0.5], [0.4]])),
    "a label out of range": _kept(labels=np.array([0, 1, 7, 1])),
    "float labels": _kept(labels=np.array([0.0, 1.0, 1.0, 1.0])),
    "text outputs": _kept(trained=np.array([["a"], ["b"], ["c"], ["d"]])),
    "boolean outputs": _kept(float16=np.array([[True], [False], [True], [False]])),
    "a size of two numbers": _kept(float32_max_abs_difference=np.array([1.0, 2.0])),
    "a size in text": _kept(float32_bytes=np.array("abc")),
    "a negative size": _kept(float16_bytes=np.array(-1)),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_a_file_of_another_model_or_split_or_damaged_is_one_line_naming_export(tmp_path: Path, case: str) -> None:
    path = tmp_path / "cats_dogs.npz"
    with open(path, "wb") as stream:
        np.savez(stream, **DAMAGED[case])
    with pytest.raises(PipelineError) as raised:
        Outputs.load(path, 1, 4)
    assert str(raised.value) == (
        f"{path}: not the outputs of a model of 1 output(s) on the 4 test images scored; "
        "run dvc repro -f -s export@cats_dogs"
    )


def test_a_file_that_is_no_npz_is_one_line_naming_export(tmp_path: Path) -> None:
    (tmp_path / "mnist.npz").write_bytes(b"not an npz")
    with pytest.raises(
        PipelineError, match=r"mnist.npz: not a .npz file holding labels, .*; run dvc repro -f -s export@mnist$"
    ):
        Outputs.load(tmp_path / "mnist.npz", 10, 4)


def test_model_cards_runs_without_tensorflow() -> None:
    # What makes a threshold sweep cost seconds: the stage never imports TensorFlow (seconds of start-up alone).
    import subprocess
    import sys

    from tests.conftest import REPO

    code = "import sys, stages.model_cards; print(sorted({'tensorflow', 'keras'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True).stdout == "[]\n"


def _inputs_of_model_cards(root: Path) -> None:
    """The metrics and kept outputs model_cards reads, made by hand in ``root`` (which holds a params.yaml)."""
    from dogs_vs_cats import paths

    def write(path: Path, data: dict) -> None:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(json.dumps(data))

    scores = {
        "accuracy": 0.75,
        "accuracy_ci95": {"low": 0.3, "high": 0.95},
        "log_loss": 0.5,
        "params": 10,
        "gmacs": 0.1,
    }
    write(paths.EVALUATE_METRICS, {"test_images": 4, "finetuned": {**scores, "roc_auc": 0.8}})
    write(paths.live_dir("finetune") / "metrics.json", {"best": {"epoch": 2}})
    (root / paths.EXPORT_OUTPUTS_DIR).mkdir(parents=True)
    _outputs().save(root / paths.export_outputs("cats_dogs"))
    for dataset in ("mnist", "fashion_mnist"):
        write(paths.digits_metrics(dataset), {"test_images": 2, "accuracy": 0.5, "f1_macro": 0.5, "log_loss": 1.0})
        write(
            paths.digits_live_dir(dataset) / "metrics.json",
            {"best": {"epoch": 1}, "train_images": 8, "validation_images": 2},
        )
        softmax = np.eye(10, dtype="float32")[[3, 4]]
        Outputs(np.array([3, 5]), softmax, softmax, 0.0, 100, 60).save(root / paths.export_outputs(dataset))


def test_model_cards_write_every_card_together_and_follow_the_threshold(workdir: Path) -> None:
    from tests.conftest import call_stage, write_params

    _inputs_of_model_cards(workdir)
    (workdir / "models/export/mnist").mkdir(parents=True)
    (workdir / "models/export/mnist/NOTES.md").write_text("mine")
    result = call_stage("model_cards", workdir)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    cards = {name: (workdir / f"models/export/{name}/MODEL_CARD.md").read_text() for name in ("cats_dogs", "mnist")}
    assert "dog when P(dog) >= 0.5 (`evaluate.threshold`)" in cards["cats_dogs"]
    assert "test accuracy 75.00 %, +0.00 points" in cards["cats_dogs"]  # the float16 file moved no decision at 0.5
    assert "test accuracy 50.00 %, +0.00 points" in cards["mnist"]
    assert (workdir / "models/export/mnist/NOTES.md").read_text() == "mine"
    # At 0.7 the float16 file calls the third image a dog, the trained model a cat: a card and a metric move.
    write_params(workdir / "params.yaml", {"evaluate.threshold": 0.7}, base=workdir / "params.yaml")
    assert call_stage("model_cards", workdir).returncode == 0
    card = (workdir / "models/export/cats_dogs/MODEL_CARD.md").read_text()
    assert "dog when P(dog) >= 0.7" in card and "test accuracy 75.00 %, +25.00 points" in card
    exported = json.loads((workdir / "metrics/export.json").read_text())
    assert exported["cats_dogs"]["float16_accuracy_change"] == 0.25

    # A failure at the last card leaves every card and the metrics as they were, and no temp folder.
    def written() -> dict:
        kept = [*(workdir / "models/export/cats_dogs").rglob("*"), *(workdir / "models/export/mnist").rglob("*")]
        return {path: path.read_bytes() for path in [*kept, workdir / "metrics/export.json"] if path.is_file()}

    before = written()
    shutil.rmtree(workdir / "models/export/fashion_mnist")
    (workdir / "models/export/fashion_mnist").write_text("a file where the folder was")
    write_params(workdir / "params.yaml", {"evaluate.threshold": 0.5}, base=workdir / "params.yaml")
    result = call_stage("model_cards", workdir)
    assert result.returncode == 1 and result.stderr == (
        "error: models/export/fashion_mnist: a file is where this folder should be, for MODEL_CARD.md; move it\n"
    )
    assert written() == before and not list(workdir.rglob("*.tmp"))
