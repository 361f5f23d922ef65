"""What a stage or tool needs before its own imports run, asked for by ``stages/__init__.py`` and ``tools/__init__.py``.

``python -m stages.<name>`` imports the package first, so that is the one place that runs before a program's
imports, and TensorFlow's take seconds: a Ctrl-C then must not print a traceback of them. Only the standard
library is imported here, so the handlers are in place a few milliseconds after Python starts.
"""

from __future__ import annotations

import os
import signal
import sys

ENDINGS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}  # the one line each signal ends a program with


def start_program() -> bool:
    """Ready this process for the stage or tool ``python -m`` is starting (SIGINT and SIGTERM end it with one
    line, a closed stderr is /dev/null) and say so; False, changing nothing, when a package was imported any
    other way (a test, a notebook)."""
    if sys.argv[0] != "-m":  # "-m" exactly while python -m looks for the module it runs (Python's documentation)
        return False
    _open_stderr()
    for signum in ENDINGS:
        if signal.getsignal(signum) is not signal.SIG_IGN:  # one a parent ignored (nohup) stays ignored
            signal.signal(signum, _end_at_once)
    return True


def _end_at_once(signum: int, frame: object) -> None:
    # Until run() puts its own handlers in, only imports have run: nothing to undo, so end here, in one line.
    os.write(2, f"error: {ENDINGS[signum]}\n".encode())
    os._exit(128 + signum)


def _open_stderr() -> None:
    """A closed stderr (``2>&-``) made /dev/null: output and exit status stay as with stderr open (not a
    program dying on ``sys.stderr`` being None), and no file the program opens becomes fd 2, where C++ logs go."""
    try:
        os.fstat(2)
    except OSError:
        null = os.open(os.devnull, os.O_WRONLY)
        if null != 2:
            os.dup2(null, 2)
            os.close(null)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - the process's stderr, open for its whole life
