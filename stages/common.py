"""What every stage shares: the user-facing error type, the entry point, atomic writes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class PipelineError(Exception):
    """A problem the user can fix (bad params, missing input, no credentials); printed as one line."""


class Terminated(BaseException):
    """SIGTERM arrived (``kill``, a CI runner, a job scheduler): unwind like Ctrl-C, so temp outputs go."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def run(main: Callable[[], None]) -> None:
    """Run a stage's ``main`` and turn a PipelineError into one line on stderr and exit status 1.

    SIGINT and SIGTERM unwind the stack, so every ``atomic_path`` removes its temporary output.
    """
    signal.signal(signal.SIGTERM, _terminate)
    try:
        main()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except Terminated:
        print("error: terminated", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; on success it replaces ``target``, on failure it vanishes.

    Works for files and folders alike, so an interrupted stage never leaves an output that looks finished.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent))
    staged = tmp / target.name
    try:
        yield staged
        if not staged.exists():
            raise RuntimeError(f"nothing was written to {staged}")
        remove(target)
        os.replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temps(target: Path) -> None:
    """Delete the temp siblings of ``target`` left by a run that was killed outright (SIGKILL, power loss).

    A temp folder is named ``.<target>.<pid>.<random>.tmp``; one whose process is gone is stale.
    """
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:(\d+)\.)?\w+\.tmp")
    for tmp in target.parent.iterdir():
        match = pattern.fullmatch(tmp.name)
        if match and not (match.group(1) and _alive(int(match.group(1)))):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove(path: Path) -> None:
    """Delete a file or a folder if it exists."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically, with a trailing newline."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
