"""``evaluate.json``'s numbers as ``tools.report`` and ``tools.compare`` print them: a metric, and a test accuracy
with its 95 % interval, each formatted in one place."""

from __future__ import annotations

from runtime.errors import PipelineError

DETAIL = "{:.4f}"  # a metric in a table of metrics
ENDS = "{:.3f}"  # an interval's ends: the interval itself is a few points wide, the fourth place is noise


def number(value: object, where: str = "", form: str = DETAIL) -> str:
    """A metric as the tables show it; ``-`` for none, and one line naming ``where`` for a value that is no number."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PipelineError(f"{where}: is {value!r:.60}, not a number; run dvc repro evaluate")
    return form.format(value)


def accuracy_cell(accuracy: str, low: object, high: object, where: str) -> str:
    """``accuracy`` (already a cell, to the places its table uses) with its interval: ``0.7500 [0.500, 0.900]``."""
    return f"{accuracy} [{number(low, where, ENDS)}, {number(high, where, ENDS)}]"
