"""``python -m tools.watch``: the curves of the training stages running now, epoch by epoch.

Every training stage rewrites its curves so far after each epoch in ``data/cache/watch/<name>.<pid>.csv``
(scratch space: the declared outputs under ``metrics/`` appear only when a stage ends well), the same
table as its ``curves.csv``. This prints, for each such file in the workspace and in the experiments DVC
runs in ``.dvc/tmp/exps`` (``--temp``, ``--queue``), its epochs, the best validation loss so far and the
losses as a line of bars. ``watch -n 60 python -m tools.watch`` keeps it on screen; a file whose process
is gone (killed) is marked stopped.
"""

from __future__ import annotations

from runtime.program import run, start_program

start_program(__name__)  # first: the imports below take seconds (TensorFlow's), and Ctrl-C during them ends in one line

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from dogs_vs_cats import paths

BARS = "▁▂▃▄▅▆▇█"


def watched_files(root: Path = Path()) -> list[Path]:
    """The curves files of the workspace at ``root`` and of the experiments running under it."""
    here = sorted((root / paths.WATCH_DIR).glob("*.csv"))
    return here + sorted((root / ".dvc/tmp/exps").glob(f"**/{paths.WATCH_DIR}/*.csv"))


def bars(values: pd.Series) -> str:
    """``values`` as a line of block characters, lowest to highest of the finite ones; ``!`` for NaN or inf."""
    finite = values[np.isfinite(values)]
    low, high = (finite.min(), finite.max()) if len(finite) else (0.0, 1.0)
    span = (high - low) or 1.0
    return "".join(BARS[round((v - low) / span * (len(BARS) - 1))] if np.isfinite(v) else "!" for v in values)


def summary(path: Path) -> str:
    """One running (or stopped) training's lines: what, how far, the best epoch, the curves as bars; a NaN or
    infinite loss says the training diverged (fit stops there)."""
    name, pid = path.stem.rsplit(".", 1)
    state = "running" if Path(f"/proc/{pid}").exists() else "stopped"
    table = pd.read_csv(path)
    table[["loss", "accuracy"]] = table[["loss", "accuracy"]].astype(float)  # "nan" and "inf" too
    train = table[table.split == "train"].set_index("epoch")
    validation = table[table.split == "validation"].set_index("epoch")
    if train.empty or validation.empty:
        raise ValueError("no finished epoch")
    where = "" if path.parent == paths.WATCH_DIR else f" in {path.parents[len(paths.WATCH_DIR.parts)]}"
    finite = validation.loss[np.isfinite(validation.loss)]
    if finite.empty:
        best = "no finite val_loss"
    else:
        epoch = int(finite.idxmin())
        best = f"best val_loss {finite[epoch]:.4f} (val_accuracy {validation.accuracy[epoch]:.4f}) at epoch {epoch}"
    losses = pd.concat([train.loss, validation.loss])
    broken = losses[~np.isfinite(losses)]
    diverged = f"; diverged at epoch {int(broken.index.min())}" if len(broken) else ""
    lines = [
        f"{name}{where} (pid {pid}, {state}): {len(train)} epochs; {best}{diverged}",
        f"  loss      {bars(train.loss)}  {train.loss.iloc[-1]:.4f}",
        f"  val_loss  {bars(validation.loss)}  {validation.loss.iloc[-1]:.4f}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="python -m tools.watch", description=__doc__.splitlines()[0]).parse_args(argv)
    files = watched_files()
    if not files:
        print(f"no training stage has finished an epoch in {paths.WATCH_DIR} or .dvc/tmp/exps; nothing to show")
    for path in files:
        try:
            print(summary(path))
        except (OSError, ValueError, KeyError, AttributeError, TypeError, pd.errors.ParserError) as error:
            print(f"{path}: unreadable ({type(error).__name__}); a training stage writes these, leave them to it")


if __name__ == "__main__":
    run(main)
