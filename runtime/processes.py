"""Whether a process that wrote something is still alive, told apart from a later one that reused its pid."""

from __future__ import annotations

import os
from pathlib import Path


def start_time(pid: int) -> int:
    """When process ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat``); 0 if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    # The name in parentheses may hold spaces; the 22nd field, start time, is the 20th after it.
    return int(stat.rpartition(")")[2].split()[19])


def gone(pid: int, started: int) -> bool:
    """True when the process ``pid`` that started at ``started`` (0: unknown) has ended: no process has that
    pid, or the one that has it started at another time."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process: it exists
        pass
    return bool(started) and start_time(pid) not in (0, started)
