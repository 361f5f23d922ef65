"""TensorFlow's log, set up before TensorFlow is imported: each program asks for it first (``program.start_program``).

Without an NVIDIA driver TensorFlow still tries CUDA and logs ``failed call to cuInit`` at error level,
which reads like a failure in a healthy CPU run's log. There, C++ logging is limited to fatal lines
(``TF_CPP_MIN_LOG_LEVEL=3``; every error a stage can act on reaches Python as an exception). With a
driver the level stays TensorFlow's, so a GPU's real problems show. A value the user set always wins.

TensorFlow 2.21 logs its start-up lines (oneDNN, "Could not find cuda drivers") through absl before absl's
logging is set up, so ``TF_CPP_MIN_LOG_LEVEL`` does not reach them, and its two native libraries print
them once each. While ``import tensorflow`` runs, the process's stderr therefore goes through a filter process
that drops the C++ lines below the level and writes everything else on, in order, even when the import dies.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import BinaryIO

NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")  # present exactly when the kernel driver is loaded

# An absl / TensorFlow C++ log line: severity letter, MMDD, time (before absl is set up: 00:00:<epoch seconds>),
# thread, file:line]
NATIVE_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] ")
SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def quiet_cpu_start() -> None:
    """On a machine without an NVIDIA driver, keep TensorFlow's C++ start-up errors out of the log, and
    drop the start-up lines below ``TF_CPP_MIN_LOG_LEVEL`` that TensorFlow prints regardless of it."""
    if not NVIDIA_DRIVER.exists():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    level = min_log_level()
    if level > 0 and "tensorflow" not in sys.modules and not any(isinstance(f, _Import) for f in sys.meta_path):
        sys.meta_path.insert(0, _Import(level))


def min_log_level() -> int:
    """``TF_CPP_MIN_LOG_LEVEL`` as TensorFlow reads it: 0 (everything) unless set to a digit."""
    value = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0").strip()
    return int(value) if value.isdigit() else 0


def kept(text: str, level: int) -> str:
    """``text`` (stderr as written) without the C++ log lines below ``level``, absl's warning among them."""

    def below(line: str) -> bool:
        native = NATIVE_LINE.match(line)
        if native:
            return SEVERITY[native.group(1)] < level
        return line.rstrip("\n") == ABSL_NOTICE and SEVERITY["W"] < level

    return "".join(line for line in text.splitlines(keepends=True) if not below(line))


DRAIN_SECONDS = 10  # at most this long for the filter to pass on the rest, so nothing it writes comes later


@contextlib.contextmanager
def filtered_stderr(level: int) -> Iterator[None]:
    """File descriptor 2 (C++ and Python alike) through a filter process onto the real stderr: each line as it
    comes, less those ``kept`` drops. A process of its own, so what a dying import wrote still arrives: on a CPU
    without the instructions it was built for, TensorFlow writes one fatal line saying so and aborts."""
    sys.stderr.flush()
    real = os.dup(2)
    read, write = os.pipe()
    try:
        # Its own session: Ctrl-C at the terminal reaches the program, never the filter, which ends when the
        # last writer of the pipe is gone (the program restores fd 2 below, or dies).
        lines = subprocess.Popen(
            [sys.executable, "-I", __file__, str(level)], stdin=read, stdout=real, stderr=real, start_new_session=True
        )
    except BaseException:
        os.close(write)
        os.close(real)
        raise
    finally:
        os.close(read)
    os.dup2(write, 2)
    os.close(write)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)
        os.close(real)
        with contextlib.suppress(subprocess.TimeoutExpired):  # a process the import started may hold the pipe
            lines.wait(DRAIN_SECONDS)


def pass_on(level: int, source: BinaryIO, sink: BinaryIO) -> None:
    """The filter process: ``source``'s lines, less those ``kept`` drops, to ``sink`` one by one."""
    for line in source:
        text = kept(line.decode(errors="surrogateescape"), level)
        if text:
            sink.write(text.encode(errors="surrogateescape"))
            sink.flush()


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """File descriptor 2 into a scratch file while the enclosed code runs, for native code that writes straight
    onto it whatever ``TF_CPP_MIN_LOG_LEVEL`` says: TensorFlow's libjpeg prints ``Corrupt JPEG data: ...``,
    naming no file. The yielded list holds those lines once the block ends, for the caller to judge and name the
    file; none reach the terminal. Python's own errors still rise as exceptions."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as scratch:
        try:
            os.dup2(scratch.fileno(), 2)
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            scratch.seek(0)
            lines.extend(scratch.read().decode(errors="replace").splitlines())


class _Import(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` once, as the other finders would, and runs its import under ``filtered_stderr``."""

    def __init__(self, level: int) -> None:
        self.level = level

    def find_spec(self, name: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader, self.level)
        return spec


class _FilteredLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, level: int) -> None:
        self.loader, self.level = loader, level

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with filtered_stderr(self.level):
            self.loader.exec_module(module)

    def __getattr__(self, name: str):  # the rest of the loader's API (get_resource_reader, is_package, ...)
        return getattr(self.loader, name)


if __name__ == "__main__":  # filtered_stderr's filter
    pass_on(int(sys.argv[1]), sys.stdin.buffer, sys.stdout.buffer)
