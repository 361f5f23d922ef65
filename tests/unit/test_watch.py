"""tools.watch: the curves of running training stages, from the files fit rewrites after each epoch."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from dogs_vs_cats import paths
from dogs_vs_cats.training import write_curves
from tests.conftest import inside
from tools import watch

HISTORY = {"loss": [0.7, 0.5, 0.4], "accuracy": [0.5, 0.7, 0.8], "val_loss": [0.69, 0.45, 0.52],
           "val_accuracy": [0.52, 0.75, 0.72]}  # fmt: skip


def _curves(path: Path, history: dict = HISTORY) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_curves(history, path)


def test_each_running_or_killed_training_is_shown_with_its_best_epoch(tmp_path: Path, capsys) -> None:
    _curves(tmp_path / paths.watched_curves("train_frozen", os.getpid()))
    _curves(tmp_path / ".dvc/tmp/exps/tmpabc" / paths.watched_curves("finetune", 999_999_999))
    with inside(tmp_path):
        watch.main([])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"train_frozen (pid {os.getpid()}, running): 3 epochs; best val_loss 0.4500 " + (
        "(val_accuracy 0.7500) at epoch 2"
    )
    assert lines[1] == "  loss      █▃▁  0.4000"
    assert lines[2] == "  val_loss  █▁▃  0.5200"
    assert lines[3].startswith(f"finetune in {Path('.dvc/tmp/exps/tmpabc')} (pid 999999999, stopped): 3 epochs")
    assert len(lines) == 6


@pytest.mark.parametrize(
    "content",
    [
        "",
        "not,a\ncurves,file\n",
        "epoch,split,loss,accuracy\n",
        "epoch,split,loss,accuracy\n1,train,0.5,0.5\n1,validation,0.4,0.6\n1,validation,0.3,0.7\n",  # twice
    ],
)
def test_nothing_running_or_a_strange_file_is_one_line(tmp_path: Path, capsys, content: str) -> None:
    with inside(tmp_path):
        watch.main([])
        assert capsys.readouterr().out.startswith("no training stage has finished an epoch in data/cache/watch")
        (tmp_path / paths.WATCH_DIR).mkdir(parents=True)
        (tmp_path / paths.watched_curves("head", 1)).write_text(content)
        watch.main([])
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "unreadable" in out and "Traceback" not in out


def test_a_nan_or_infinite_loss_shows_as_divergence_without_a_warning(tmp_path: Path, capsys) -> None:
    history = {**HISTORY, "loss": [0.7, float("inf"), float("nan")], "val_loss": [0.69, 0.45, float("nan")]}
    _curves(tmp_path / paths.watched_curves("head", os.getpid()), history)
    with inside(tmp_path), warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "invalid value" RuntimeWarning on inf - inf
        watch.main([])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"head (pid {os.getpid()}, running): 3 epochs; best val_loss 0.4500 (val_accuracy 0.7500) at epoch 2; "
        "diverged at epoch 2",
        "  loss      ▁!!  nan",
        "  val_loss  █▁!  nan",
    ]
    _curves(tmp_path / paths.watched_curves("head", os.getpid()), {**history, "val_loss": [float("nan")] * 3})
    with inside(tmp_path):
        watch.main([])
    assert "3 epochs; no finite val_loss; diverged at epoch 1" in capsys.readouterr().out
