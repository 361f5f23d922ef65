"""The one exception type for problems a user can fix, and how an error's message goes into one line."""

from __future__ import annotations


class PipelineError(Exception):
    """A problem the user can fix (bad params, missing input, no credentials); printed as one line."""


def one_line(error: object, limit: int = 160) -> str:
    """An exception's message (or any text) as it goes into an error line: whitespace collapsed, cut at ``limit``."""
    return " ".join(str(error).split())[:limit]
