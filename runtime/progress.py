"""Progress as a terminal shows it, and as one line at a time when the output is a log (``dvc repro``, CI)."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def keras_verbosity() -> int:
    """Keras' ``verbose`` for this process: the live progress bar (1) on a terminal, one line per epoch (2)
    when stdout is a pipe or a file, as under ``dvc repro``, a queue or CI. Keras itself decides by platform,
    not by terminal, and its bar in a log is one endless line of carriage returns and backspaces."""
    return 1 if sys.stdout.isatty() else 2


PIPED_INTERVAL = 30.0  # seconds between two progress lines when stderr is not a terminal


def progress(iterable: Any = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on a terminal; when stderr is not one (``dvc repro``, a queue, CI), a line of its own at most
    every ``PIPED_INTERVAL`` seconds and at the end, instead of redraws joined by carriage returns into one
    line of a log, as ``keras_verbosity`` does for Keras."""
    if sys.stderr.isatty():
        return tqdm(iterable, **kwargs)
    return tqdm(
        iterable,
        file=_Lines(sys.stderr),
        mininterval=PIPED_INTERVAL,
        bar_format="{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}]",
        **kwargs,
    )


class _Lines:
    """A stream for tqdm that writes each redraw as one line and drops the blank ones."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
