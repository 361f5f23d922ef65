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
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dogs_vs_cats.startup import ENDINGS


class PipelineError(Exception):
    """A problem the user can fix (bad params, missing input, no credentials); printed as one line."""


class Terminated(BaseException):
    """SIGTERM arrived (``kill``, a CI runner, a job scheduler): unwind like Ctrl-C, so temp outputs go."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def run(main: Callable[[], None]) -> None:
    """Run a stage's ``main`` and turn a PipelineError into one line on stderr and exit status 1.

    SIGINT and SIGTERM unwind the stack, so every ``atomic_path`` removes its temporary output, then end the
    program with one line and exit status 128 + the signal's number.
    """
    for signum, handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, _terminate)):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, handler)
    try:
        main()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        _end(signal.SIGINT)
    except Terminated:
        _end(signal.SIGTERM)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the enclosed code ends, then raise what ``run`` would have raised.

    For third-party code that catches everything: Keras' ``load_model`` reads the weights inside a bare
    ``except:`` that falls back to another reader, so a Ctrl-C there was swallowed and the stage went on to
    exit 0. Only for code that ends within seconds; outside ``run``'s handlers it changes nothing."""
    raising = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: _terminate}
    held = [signum for signum, handler in raising.items() if signal.getsignal(signum) is handler]
    if threading.current_thread() is not threading.main_thread():
        held = []  # only the main thread receives signals, and only it may set handlers
    arrived: list[int] = []
    for signum in held:
        signal.signal(signum, lambda signum, frame: arrived.append(signum))
    try:
        yield
    finally:
        for signum in held:
            signal.signal(signum, raising[signum])
        if arrived:  # in place of whatever the enclosed code raised after it
            raise KeyboardInterrupt if arrived[0] == signal.SIGINT else Terminated


def _end(signum: int) -> None:
    print(f"error: {ENDINGS[signum]}", file=sys.stderr)
    sys.exit(128 + signum)


@contextlib.contextmanager
def atomic_path(target: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; on success it becomes ``target``, on failure it vanishes.

    Works for files and folders alike, so an interrupted stage never leaves an output that looks finished.
    Whatever is at ``target`` already is replaced only with ``replace``: a stage's own declared output, or a
    file the user said to replace (``--force``); without it an existing ``target`` is a PipelineError and
    nothing is touched. A replaced output is first moved into this run's temp folder, so the one folder ever
    deleted is the one this run made.
    """
    target = Path(target)
    if not replace:
        refuse_existing(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = temp_dir(target.parent, target.name)
    staged = tmp / target.name
    try:
        yield staged
        if not staged.exists():
            raise RuntimeError(f"nothing was written to {staged}")
        if not replace:
            refuse_existing(target)  # it may have appeared while this run worked
        if os.path.lexists(target) and (staged.is_dir() or (target.is_dir() and not target.is_symlink())):
            os.rename(target, tmp / ".replaced")  # nothing renames over a folder: set the old one aside first
        os.replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def refuse_existing(target: Path) -> None:
    if os.path.lexists(target):
        kind = "a folder" if target.is_dir() else "a file"
        raise PipelineError(f"{target}: {kind} is there already; this run replaces nothing it did not write")


# A temp folder is named .<target>.<pid>-<start>.<8 random characters>.tmp: the pid and the start time of the
# process that made it (clock ticks since boot, 0 where the system does not say), so a later run can tell a
# temp folder of this project's from a user's file, and a dead process's from one that reused its pid.
_TEMP_NAME = r"\.{name}\.(\d+)-(\d+)\.[a-z0-9_]{{8}}\.tmp"


def temp_dir(parent: Path, name: str) -> Path:
    """A new private folder in ``parent`` for work on ``name``, that ``remove_stale_temps`` removes once this
    process is gone."""
    pid = os.getpid()
    return Path(tempfile.mkdtemp(prefix=f".{name}.{pid}-{_start_time(pid)}.", suffix=".tmp", dir=parent))


def remove_stale_temps(target: Path) -> None:
    """Delete the temp folders of ``target`` left by a run that was killed outright (SIGKILL, power loss).

    Only folders named by ``temp_dir``'s scheme go, and only when their process is gone: no process has that
    pid, or the one that has it started at another time (a reused pid).
    """
    pattern = re.compile(_TEMP_NAME.format(name=re.escape(target.name)))
    if not target.parent.is_dir():
        return
    for tmp in target.parent.iterdir():
        match = pattern.fullmatch(tmp.name)
        if match and tmp.is_dir() and not tmp.is_symlink() and _stale(int(match[1]), int(match[2])):
            shutil.rmtree(tmp, ignore_errors=True)


def _stale(pid: int, started: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process: it exists
        pass
    return bool(started) and _start_time(pid) not in (0, started)


def _start_time(pid: int) -> int:
    """When process ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat``); 0 if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    # The name in parentheses may hold spaces; the 22nd field, start time, is the 20th after it.
    return int(stat.rpartition(")")[2].split()[19])


SYSTEM_FOLDERS = tuple(Path(p) for p in ("/proc", "/sys", "/dev"))


def output_file(path: Path, default_name: str, *, force: bool, option: str) -> Path:
    """Where a tool writes the file the user named with ``option``: ``path``, or ``path/default_name`` when
    ``path`` is a folder. Checked before any work: a file there is replaced only with ``force``, and never a
    folder, a FIFO or a device; the folder must be one a file can be written in."""
    path = Path(path)
    if path.is_dir():
        path = path / default_name
    replaceable(path, force=force, option=option)
    writable_folder(path.parent, option)
    return path


def replaceable(path: Path, *, force: bool, option: str) -> None:
    """Raise a PipelineError unless a tool may write the file ``path``: nothing is there, or a regular file
    that ``force`` says to replace; a folder, a FIFO or a device never is."""
    if not os.path.lexists(path):
        return
    if path.is_dir():
        raise PipelineError(f"{option} {path}: a folder of that name is in the way; name another place")
    if not path.is_file():
        raise PipelineError(f"{option} {path}: not a regular file; name another place")
    if not force:
        raise PipelineError(f"{option} {path}: the file exists; pass --force to replace it, or name another place")


def output_dir(path: Path, *, option: str) -> Path:
    """A folder the user named with ``option`` to write files into (made if missing), checked before any work."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise PipelineError(f"{option} {path}: a file, not a folder; name a folder to write into")
    writable_folder(path, option)
    return path


def writable_folder(folder: Path, option: str) -> None:
    """Raise a PipelineError unless files can be made in ``folder`` (or, if it is missing, in its nearest
    existing parent), outside the system's pseudo-file systems."""
    resolved = Path(os.path.abspath(folder)).resolve()
    for system in SYSTEM_FOLDERS:
        if resolved == system or system in resolved.parents:
            raise PipelineError(f"{option} {folder}: inside {system}, which is the system's; name a folder of yours")
    existing = next(p for p in (resolved, *resolved.parents) if os.path.lexists(p))
    if not existing.is_dir():
        raise PipelineError(f"{option} {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PipelineError(f"{option} {folder}: {existing} is not writable; name a folder of yours")


def one_line(error: object, limit: int = 160) -> str:
    """An exception's message (or any text) as it goes into an error line: whitespace collapsed, cut at ``limit``."""
    return " ".join(str(error).split())[:limit]


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


def write_json(path: Path, data: Any) -> None:
    """Write a stage's declared output ``data`` as indented JSON, atomically, with a trailing newline."""
    with atomic_path(path, replace=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
